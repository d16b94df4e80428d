"""A bag as another robot records it, for the bag-evaluation tests: its own topic names, a topic
no sensor listens to, one damaged message, no ground-truth topic (labels come as a CSV).

Written with rosbags (mcap) from rclpy-serialized messages, like test_bag_live's bags.
"""
from __future__ import annotations

from pathlib import Path

S = 1_000_000_000
T0 = 1_700_000_000 * S
CAMERA = "/cam/front/image_raw"
LIDAR = "/velodyne_points"
CHATTER = "/robot/chatter"
#: Undecodable bytes on the camera topic (a recorder that wrote a torn buffer): a CDR header and
#: an Image cut inside its header's frame_id.
TORN = b"\x00\x01\x00\x00" + b"\x12\x00\x00\x00" * 3


def write_foreign_bag(path: Path, duration_s: float = 4.0, damaged_at_s: float | None = 3.0,
                      image_px: int = 32) -> None:
    """Camera and LiDAR at 10 Hz (the LiDAR 1 ms after the camera), a String topic at 2 Hz;
    the camera message at ``damaged_at_s`` is :data:`TORN`."""
    import numpy as np
    from builtin_interfaces.msg import Time
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from std_msgs.msg import String

    from omnibind_ros.bag.types import typestore
    from omnibind_ros.ros import conversions as conv

    rng = np.random.default_rng(0)
    store = typestore()
    damaged = None if damaged_at_s is None else round(damaged_at_s * 10)
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        cam = writer.add_connection(CAMERA, "sensor_msgs/msg/Image", typestore=store)
        lidar = writer.add_connection(LIDAR, "sensor_msgs/msg/PointCloud2", typestore=store)
        chatter = writer.add_connection(CHATTER, "std_msgs/msg/String", typestore=store)
        for k in range(round(duration_s * 10)):
            t = T0 + k * S // 10
            stamp = Time(sec=t // S, nanosec=t % S)
            pixels = rng.integers(0, 255, (image_px, image_px, 3), np.uint8)
            image = serialize_message(conv.numpy_to_image(pixels, "rgb8", stamp))
            writer.write(cam, t, TORN if k == damaged else image)
            points = rng.normal(0, 0.03, (300, 3)).astype(np.float32) + np.float32([1.5, 0, 0.3])
            writer.write(lidar, t + S // 1000,
                         serialize_message(conv.xyz_to_pointcloud2(points, stamp)))
            if k % 5 == 0:
                writer.write(chatter, t + 2 * S // 1000, serialize_message(String(data="hi")))


def foreign_config(path: Path, labels: list[str], extra: str = "",
                   sensors: tuple[str, ...] = ("front", "velo")) -> Path:
    """The other robot's perception config: its names for its camera and LiDAR (plus
    ``extra`` sensor lines, listed in ``sensors``)."""
    names = ", ".join(sensors)
    label_list = ", ".join(f'"{label}"' for label in labels)
    path.write_text(f"""/**/omnibind_perception:
  ros__parameters:
    sensors: [{names}]
    fusion: {{rate_hz: 10.0, max_age_s: 1.0}}
    labels: {{names: [{label_list}]}}
    sensors.front: {{modality: image, topic: {CAMERA}, expected_rate_hz: 10.0}}
    sensors.velo: {{modality: point_cloud, topic: {LIDAR}, expected_rate_hz: 10.0}}
{extra}""")
    return path


def truth_csv(path: Path, duration_s: float, labels: tuple[str, str]) -> Path:
    """Two labelled halves of the bag (seconds since its first message)."""
    half = duration_s / 2
    path.write_text(f"start_s,end_s,label\n0.0,{half},{labels[0]}\n{half},{duration_s},"
                    f"{labels[1]}\n")
    return path
