"""omnibind_train: training for omnibind_ros (seed 000 OmniBind: LiT stage 0, CAD, AF).

Imports point one way: this package uses ``omnibind_ros.core`` and ``omnibind_ros.sim`` and never
the ROS client library (a test scans for it). Sub-packages: :mod:`.models` (encoders, registry,
fusion heads) and :mod:`.losses`.
"""
__version__ = "0.1.0"
