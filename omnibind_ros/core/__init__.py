"""Pure core of omnibind_ros: numpy + the standard library only at import time.

Nothing here imports rclpy, message packages or torch when imported (a test holds that line);
inference runtimes are imported lazily by the backends that need them.
"""
