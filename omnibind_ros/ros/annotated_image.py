"""``~/annotated_image`` of the perception node: for RViz's Image display and Foxglove's Image
panel (config/omnibind.rviz, config/foxglove_layout.json).

The newest frame of a camera sensor with the current answer, its confidence and every
sensor's state drawn on it (:mod:`omnibind_ros.ros.annotation`). It costs nothing while nobody
watches: a timer at ``annotated_image.rate_hz`` asks the publisher for its subscription count
and returns at once when it is 0 (no decode, no drawing, no message); the image sensors'
callbacks only keep a reference to their newest message.

QoS (:data:`ANNOTATED_IMAGE_QOS`): reliable, keep last 1, volatile. Reliable because RViz's
Image display and foxglove_bridge subscribe reliable by default and a best-effort publisher
would match neither; reliable also carries a frame over ~512 KB to another process, where best
effort is silently dropped without the shared-memory profile. Depth 1: a slow viewer gets the
newest frame, never a backlog. Volatile: a frame is only worth seeing now.

Which frame: ``annotated_image.sensor`` names an image sensor; "" takes the first configured
image sensor that is LIVE, else the one with the newest frame. Without any frame the picture
still shows the answer and the sensors (a robot without a camera).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from omnibind_ros.core.availability import SensorState
from omnibind_ros.ros.annotation import frame_to_rgb8, render_annotation
from omnibind_ros.ros.conversions import numpy_to_image
from omnibind_ros.ros.recognition import from_time

__all__ = ["ANNOTATED_IMAGE_QOS", "ANNOTATED_IMAGE_TOPIC", "AnnotatedImage"]

#: Relative to the perception node: /<namespace>/omnibind_perception/annotated_image.
ANNOTATED_IMAGE_TOPIC = "~/annotated_image"
ANNOTATED_IMAGE_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                                 reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.VOLATILE)


class AnnotatedImage:
    """Publisher, timer and newest image messages behind ``~/annotated_image``.

    Parameters
    ----------
    node : the perception node (its ``engine``, parameters, clock and logger are read).
    model : "bundle [family]" shown in the footer.
    """

    def __init__(self, node: Any, model: str) -> None:
        self._node = node
        self._model = model
        self._lock = threading.Lock()
        #: sensor -> (newest message, its converter), image sensors only
        self._latest: dict[str, tuple[Any, Callable[[Any], Any]]] = {}
        self._image_sensors: list[str] = []
        self._timer: Any = None
        self._group = MutuallyExclusiveCallbackGroup()
        self.publisher = node.create_lifecycle_publisher(Image, ANNOTATED_IMAGE_TOPIC,
                                                         ANNOTATED_IMAGE_QOS)
        #: frames rendered and published (none while nobody subscribes)
        self.renders = 0
        #: seconds the last drawing took (decode and publish not included)
        self.last_render_s = 0.0

    # -- wiring --------------------------------------------------------------------------------

    def tap(self, sensor: str, convert: Callable[[Any], Any],
            callback: Callable[[Any], None]) -> Callable[[Any], None]:
        """Wrap an image sensor's subscription callback: keep its newest message (a reference,
        nothing decoded), then run ``callback``."""
        with self._lock:
            if sensor not in self._image_sensors:
                self._image_sensors.append(sensor)
        latest = self._latest

        def on_message(msg: Any) -> None:
            latest[sensor] = (msg, convert)
            callback(msg)
        return on_message

    def forget(self, sensor: str) -> None:
        """A sensor was unsubscribed or removed."""
        with self._lock:
            self._latest.pop(sensor, None)
            if sensor in self._image_sensors:
                self._image_sensors.remove(sensor)

    def start(self) -> None:
        """(Re)create the timer at ``annotated_image.rate_hz`` (0: no timer)."""
        self.stop()
        rate = float(self._node.get_parameter("annotated_image.rate_hz").value)
        if rate > 0:
            self._timer = self._node.create_timer(1.0 / rate, self.tick,
                                                  callback_group=self._group)

    def stop(self) -> None:
        if self._timer is not None:
            self._node.destroy_timer(self._timer)
            self._timer = None

    def destroy(self) -> None:
        self.stop()
        self._node.destroy_publisher(self.publisher)
        with self._lock:
            self._latest.clear()
            self._image_sensors.clear()

    # -- rendering -----------------------------------------------------------------------------

    def tick(self) -> None:
        """Timer callback: render and publish only when someone subscribes."""
        if self.publisher.get_subscription_count() == 0:
            return
        try:
            msg = self.render_message()
        except Exception as exc:  # noqa: BLE001  (a bad frame never stops the node)
            self._node.get_logger().warning(f"annotated image not rendered: {exc}",
                                            throttle_duration_sec=10.0)
            return
        if msg is not None:
            self.publisher.publish(msg)
            self.renders += 1

    def render_message(self) -> Any:
        """The ``sensor_msgs/Image`` (rgb8) of the current state; None while unconfigured."""
        engine = self._node.engine
        if engine is None:
            return None
        healths = engine.monitor.health()
        source, entry = self._choose_frame({h.name: h.state for h in healths})
        frame, stamp, frame_id, age = None, None, "", None
        if entry is not None:
            msg, convert = entry
            decoded = convert(msg)
            frame = frame_to_rgb8(decoded.image, decoded.channel_order)
            header = getattr(msg, "header", None)
            if header is not None:
                stamp, frame_id = header.stamp, header.frame_id
                age = max(0.0, (self._node.now_ns() - from_time(header.stamp)) * 1e-9)
        states = {h.name: h.state for h in healths}
        t0 = time.perf_counter()
        image = render_annotation(
            frame, engine.last_result, healths,
            width=int(self._node.get_parameter("annotated_image.width").value),
            source=source, source_state=states.get(source), source_age_s=age, model=self._model)
        self.last_render_s = time.perf_counter() - t0
        if stamp is None:
            stamp = self._node.get_clock().now().to_msg()
        return numpy_to_image(image, "rgb8", stamp, frame_id)

    def _choose_frame(self, states: dict[str, SensorState]
                      ) -> tuple[str, tuple[Any, Callable[[Any], Any]] | None]:
        wanted = str(self._node.get_parameter("annotated_image.sensor").value)
        with self._lock:
            candidates = [wanted] if wanted else list(self._image_sensors)
        latest = {name: self._latest.get(name) for name in candidates}
        for name in candidates:
            if latest[name] is not None and states.get(name) is SensorState.LIVE:
                return name, latest[name]

        def stamp_of(name: str) -> int:
            header = getattr(latest[name][0], "header", None)  # type: ignore[index]
            return from_time(header.stamp) if header is not None else 0

        with_frame = [name for name in candidates if latest[name] is not None]
        if not with_frame:
            return "", None
        newest = max(with_frame, key=stamp_of)
        return newest, latest[newest]
