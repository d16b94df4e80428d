"""Rosbag2 recording, reading and replay evaluation (``omnibind-bag``).

Why a subpackage of its own: users evaluate perception by replaying bags, so bag handling is a
first-class path next to the live node. It reads and writes bags with the ``rosbags`` library (no
ROS install needed for I/O) and deserializes with rclpy only where the messages must be exactly the
objects the node gets.

Modules: :mod:`.types` (rosbags typestore with our messages), :mod:`.reader` (reading, corrupt-bag
handling), :mod:`.record` (``record-sim`` and ``record``), :mod:`.truth` (ground truth from a topic
or a CSV), :mod:`.config`, :mod:`.offline`, :mod:`.scoring`, :mod:`.report` (offline evaluation),
:mod:`.live` (live replay) and :mod:`.cli` (``omnibind-bag``). Importing this package imports
nothing heavy.
"""
