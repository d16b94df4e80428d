"""The procedural multimodal world: one object seen by every modality at once, from a seed.

ROS-free and torch-free (imports only numpy/scipy/opencv/pybullet/open3d and
``omnibind_ros.core``).
Used by training (data sets), by tests, and by the simulated sensors node (streaming API).
"""
