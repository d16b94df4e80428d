"""The perception LifecycleNode in-process with real rclpy, on the tiny bundle.

One rclpy Context per module; each test builds a PerceptionNode plus a helper node (publishers of
synthetic sensor messages built with ros/conversions, subscribers of the node's outputs), spins
both in a MultiThreadedExecutor on a background thread and shuts it down (shutdown + join) before
the nodes are destroyed. Sensor rates are high (10 Hz) so that deadlines are short.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from omnibind_ros.testing import write_test_bundle

pytestmark = pytest.mark.ros


RATE_HZ = 10.0
SENSORS = {  # name -> (modality, topic, type)
    "camera": ("image", "/t/camera", "sensor_msgs/msg/Image"),
    "thermal": ("thermal", "/t/thermal", "sensor_msgs/msg/Image"),
    "lidar": ("point_cloud", "/t/lidar", "sensor_msgs/msg/PointCloud2"),
}
RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_bundle(tmp_path_factory.mktemp("perception") / "tiny")


@pytest.fixture(scope="module")
def ctx() -> Iterator[Any]:
    import rclpy
    from rclpy.context import Context
    from rclpy.signals import SignalHandlerOptions

    context = Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    yield context
    rclpy.shutdown(context=context)


def sensor_overrides(sensors: dict[str, tuple[str, str, str]], **extra: Any) -> list[Any]:
    from rclpy.parameter import Parameter

    out = [Parameter("sensors", Parameter.Type.STRING_ARRAY, list(sensors))]
    for name, (modality, topic, mtype) in sensors.items():
        out += [Parameter(f"sensors.{name}.modality", value=modality),
                Parameter(f"sensors.{name}.topic", value=topic),
                Parameter(f"sensors.{name}.message_type", value=mtype),
                Parameter(f"sensors.{name}.expected_rate_hz", value=RATE_HZ)]
    out += [Parameter(k, value=v) for k, v in extra.items()]
    return out


def make_msg(modality: str, stamp_s: float) -> Any:
    from omnibind_ros.core.types import AudioBlock, ThermalFrame
    from omnibind_ros.ros import conversions as conv

    if modality == "image":
        return conv.numpy_to_image(RNG.integers(0, 255, (32, 32, 3), np.uint8), "rgb8", stamp_s)
    if modality == "thermal":
        frame = ThermalFrame(RNG.integers(28000, 32000, (24, 32), np.uint16), "mono16")
        return conv.thermal_to_image(frame, stamp_s)
    if modality == "point_cloud":
        # one compact object (the preprocessor looks for a cluster) in front of the sensor
        return conv.xyz_to_pointcloud2(RNG.normal(0, 0.03, (300, 3)).astype(np.float32) +
                                       np.float32([1.5, 0, 0.3]), stamp_s)
    if modality == "audio":
        block = AudioBlock(RNG.normal(0, 0.1, 320).astype(np.float32), 16000)
        return conv.block_to_audio_chunk(block, "S16LE", stamp_s)
    raise ValueError(modality)


class Harness:
    """PerceptionNode + helper node spinning in a background MultiThreadedExecutor."""

    def __init__(self, ctx: Any, bundle_dir: Path, overrides: list[Any]) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from omnibind_ros.msg import Recognition, SensorStatusArray
        from rclpy.parameter import Parameter

        from omnibind_ros.ros import qos
        from omnibind_ros.ros.perception_node import PerceptionNode

        overrides = [Parameter("bundle_path", value=str(bundle_dir)),
                     Parameter("fusion.rate_hz", value=20.0), *overrides]
        self.node = PerceptionNode(context=ctx, parameter_overrides=overrides)
        self.helper = __import__("rclpy.node", fromlist=["Node"]).Node(
            "perception_test_helper", context=ctx)
        self.recognitions: list[Any] = []
        self.statuses: list[Any] = []
        self.diags: list[Any] = []
        self.helper.create_subscription(Recognition, "/omnibind_perception/recognition",
                                        self.recognitions.append, qos.RECOGNITION)
        self.helper.create_subscription(SensorStatusArray, "/omnibind_perception/sensor_status",
                                        self.statuses.append, qos.SENSOR_STATUS)
        self.helper.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append,
                                        qos.DIAGNOSTICS)
        self.pubs: dict[str, Any] = {}
        from omnibind_ros.ros.executor import PoolSafeExecutor

        self.executor = PoolSafeExecutor(num_threads=4, context=ctx)
        self.executor.add_node(self.node)
        self.executor.add_node(self.helper)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def now(self) -> float:
        return self.helper.get_clock().now().nanoseconds * 1e-9

    def publisher(self, name: str, modality: str, topic: str) -> Any:
        from omnibind_ros.ros.interfaces import message_class

        mtype = {"image": "sensor_msgs/msg/Image", "thermal": "sensor_msgs/msg/Image",
                 "point_cloud": "sensor_msgs/msg/PointCloud2",
                 "audio": "omnibind_ros/msg/AudioChunk"}[modality]
        from omnibind_ros.ros import qos
        self.pubs[name] = (self.helper.create_publisher(message_class(mtype), topic,
                                                        qos.SENSOR_DATA), modality)
        return self.pubs[name][0]

    def unplug(self, name: str) -> None:
        pub, _ = self.pubs.pop(name)
        self.helper.destroy_publisher(pub)

    def publish_for(self, seconds: float, names: list[str] | None = None,
                    rate_hz: float = RATE_HZ) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for name, (pub, modality) in list(self.pubs.items()):
                if names is None or name in names:
                    pub.publish(make_msg(modality, self.now()))
            time.sleep(1.0 / rate_hz)

    def wait(self, cond: Callable[[], Any], timeout: float = 5.0, publish: bool = True) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = cond()
            if value:
                return value
            if publish:
                self.publish_for(0.05)
            else:
                time.sleep(0.05)
        return cond()

    def state_of(self, name: str) -> str:
        for arr in reversed(self.statuses):
            for s in arr.sensors:
                if s.name == name:
                    return {0: "UNKNOWN", 1: "LIVE", 2: "STALE", 3: "LOST", 4: "DISABLED",
                            5: "DEGRADED"}[s.state]
        return ""

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(5.0)
        self.node.destroy_node()
        self.helper.destroy_node()


@pytest.fixture
def make_harness(ctx: Any, bundle_dir: Path) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def factory(overrides: list[Any]) -> Harness:
        made.append(Harness(ctx, bundle_dir, overrides))
        return made[-1]

    yield factory
    for h in made:
        h.close()


def active_harness(make_harness: Callable[..., Harness], sensors=SENSORS, **extra) -> Harness:
    from lifecycle_msgs.msg import State

    h = make_harness(sensor_overrides(sensors, **extra))
    assert h.node.autostart()
    assert h.node._state_machine.current_state[0] == State.PRIMARY_STATE_ACTIVE
    for name, (modality, topic, _) in sensors.items():
        h.publisher(name, modality, topic)
    return h


def used_sets(h: Harness) -> list[set[str]]:
    return [set(r.sensors) for r in h.recognitions[-5:]]


# -- parameters -----------------------------------------------------------------------------------

def test_invalid_parameter_updates_are_rejected_with_a_reason(make_harness) -> None:
    from rclpy.parameter import Parameter

    h = make_harness(sensor_overrides(SENSORS))
    cases = [
        Parameter("sensors.camera.modality", value="sonar"),
        Parameter("sensors.camera.expected_rate_hz", value=-5.0),
        Parameter("sensors.camera.qos", value="ultra_reliable"),
        Parameter("fusion.top_k", value=0),
        Parameter("sensors.camera.tpoic", value="/typo"),
        Parameter("sensors.camera.message_type", value="sensor_msgs/msg/PointCloud2"),
    ]
    for param in cases:
        result = h.node.set_parameters([param])[0]
        assert not result.successful, param.name
        assert result.reason, param.name
    assert "sonar" in h.node.set_parameters([cases[0]])[0].reason
    assert "ultra_reliable" in h.node.set_parameters([cases[2]])[0].reason
    # a new sensor without a topic cannot be added
    bad_add = h.node.set_parameters_atomically([
        Parameter("sensors.extra.modality", value="image"),
        Parameter("sensors", Parameter.Type.STRING_ARRAY, [*SENSORS, "extra"])])
    assert not bad_add.successful and "topic" in bad_add.reason
    assert h.node.set_parameters([Parameter("fusion.top_k", value=3)])[0].successful


# -- lifecycle ------------------------------------------------------------------------------------

def test_configure_fails_cleanly_on_missing_and_corrupt_bundles(make_harness, bundle_dir,
                                                                tmp_path) -> None:
    import shutil

    from lifecycle_msgs.msg import State
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    h = make_harness(sensor_overrides(SENSORS))
    h.node.set_parameters([Parameter("bundle_path", value=str(tmp_path / "missing"))])
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert h.node._state_machine.current_state[0] == State.PRIMARY_STATE_UNCONFIGURED

    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundle_dir, corrupt)
    onnx = sorted(corrupt.glob("encoders/*.onnx"))[0]
    onnx.write_bytes(onnx.read_bytes()[:-10] + b"0123456789")
    h.node.set_parameters([Parameter("bundle_path", value=str(corrupt))])
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    assert h.node._state_machine.current_state[0] == State.PRIMARY_STATE_UNCONFIGURED

    h.node.set_parameters([Parameter("bundle_path", value=str(bundle_dir))])
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert h.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert h.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert h.node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert h.node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS


def _gpu_backend_runs_here(backend: str) -> bool:
    import importlib.util

    if backend == "tensorrt":
        return importlib.util.find_spec("tensorrt") is not None
    if backend.startswith("onnxruntime_"):
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.parametrize("backend", ["tensorrt", "onnxruntime_tensorrt", "onnxruntime_cuda",
                                     "torch_cuda"])
def test_unavailable_backend_fails_configure_unless_fallback(make_harness, backend) -> None:
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    if _gpu_backend_runs_here(backend):
        pytest.skip(f"{backend} can run on this machine")
    h = make_harness(sensor_overrides(SENSORS, backend=backend))
    assert h.node.trigger_configure() == TransitionCallbackReturn.FAILURE
    h.node.set_parameters([Parameter("backend_fallback", value=True)])
    assert h.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert h.node._backend.name == "onnxruntime"


# -- recognition and hot-plug ---------------------------------------------------------------------

def test_recognition_uses_the_publishing_sensors_and_survives_an_unplug(make_harness) -> None:
    h = active_harness(make_harness)
    everything = set(SENSORS)
    assert h.wait(lambda: h.recognitions and set(h.recognitions[-1].sensors) == everything)
    rec = h.recognitions[-1]
    assert sorted(rec.modalities) == ["image", "point_cloud", "thermal"]
    assert rec.best_label and rec.best_label == rec.top_labels[0]
    assert len(rec.per_modality) == 3 and 0 <= rec.best_score <= 1
    # the test bundle carries no calibration: the confidence is the best score; unsure below
    # fusion.unsure_below (0.5)
    assert rec.confidence == pytest.approx(rec.best_score)
    assert rec.unsure == (rec.confidence < 0.5)
    assert rec.header.stamp.sec > 0
    # which model answered: the test bundle's directory name; it declares no family
    assert rec.bundle == h.node._bundle.name and rec.bundle and rec.model_family == ""

    # unplug the camera: STALE within its deadline (2.5 periods = 0.25 s + a monitor tick),
    # recognition continues from the others
    h.unplug("camera")
    t0 = time.monotonic()
    assert h.wait(lambda: h.state_of("camera") in ("STALE", "LOST"), timeout=3.0)
    assert time.monotonic() - t0 < 1.5
    assert h.wait(lambda: h.recognitions and
                  set(h.recognitions[-1].sensors) == {"thermal", "lidar"})
    # replug: LIVE and fused again
    h.publisher("camera", "image", SENSORS["camera"][1])
    assert h.wait(lambda: h.state_of("camera") == "LIVE", timeout=5.0)
    assert h.wait(lambda: h.recognitions and set(h.recognitions[-1].sensors) == everything)


def test_two_cameras_enter_as_two_tokens_and_disable_by_parameter(make_harness) -> None:
    from rclpy.parameter import Parameter

    sensors = {"cam_left": ("image", "/t/cam_left", "sensor_msgs/msg/Image"),
               "cam_right": ("image", "/t/cam_right", "sensor_msgs/msg/Image")}
    h = active_harness(make_harness, sensors)
    assert h.wait(lambda: h.recognitions and
                  set(h.recognitions[-1].sensors) == set(sensors))
    assert list(h.recognitions[-1].modalities) == ["image", "image"]

    assert h.node.set_parameters([Parameter("sensors.cam_left.enabled", value=False)])[0] \
        .successful
    assert h.wait(lambda: h.state_of("cam_left") == "DISABLED")
    assert h.wait(lambda: h.recognitions and list(h.recognitions[-1].sensors) == ["cam_right"])
    h.node.set_parameters([Parameter("sensors.cam_left.enabled", value=True)])
    assert h.wait(lambda: set(h.recognitions[-1].sensors) == set(sensors))


def test_min_modalities_not_met_publishes_no_answer_and_says_why(make_harness) -> None:
    h = active_harness(make_harness, {"camera": SENSORS["camera"]},
                       **{"fusion.min_modalities": 2})
    assert h.wait(lambda: h.state_of("camera") == "LIVE")
    assert h.wait(lambda: h.recognitions and not h.recognitions[-1].best_label
                  and h.node.engine.last_result is not None)
    assert "min_modalities" in h.node.engine.last_result.no_answer_reason

    def fusion_message() -> str:
        for arr in reversed(h.diags):
            for s in arr.status:
                if s.name.endswith(": fusion"):
                    return s.message
        return ""
    assert h.wait(lambda: "min_modalities" in fusion_message())


def test_add_and_remove_sensors_at_runtime(make_harness) -> None:
    from omnibind_ros.srv import AddSensor, RemoveSensor
    from rclpy.parameter import Parameter

    h = active_harness(make_harness, {"camera": SENSORS["camera"]})
    # by service
    client = h.helper.create_client(AddSensor, "/omnibind_perception/add_sensor")
    assert client.wait_for_service(timeout_sec=5.0)
    req = AddSensor.Request(name="lidar", modality="point_cloud", topic="/t/lidar",
                            expected_rate_hz=RATE_HZ)
    result = client.call(req, timeout_sec=10.0)
    assert result.success, result.message
    assert not client.call(req, timeout_sec=10.0).success  # duplicate
    assert "lidar" in h.node.get_parameter("sensors").value
    h.publisher("lidar", "point_cloud", "/t/lidar")
    assert h.wait(lambda: set(h.recognitions[-1].sensors) == {"camera", "lidar"}
                  if h.recognitions else False)

    # by parameters (the keys first, then the list)
    h.node.set_parameters_atomically([
        Parameter("sensors.thermal.modality", value="thermal"),
        Parameter("sensors.thermal.topic", value="/t/thermal"),
        Parameter("sensors.thermal.expected_rate_hz", value=RATE_HZ),
        Parameter("sensors", Parameter.Type.STRING_ARRAY, ["camera", "lidar", "thermal"])])
    h.publisher("thermal", "thermal", "/t/thermal")
    assert h.wait(lambda: h.recognitions and
                  set(h.recognitions[-1].sensors) == {"camera", "lidar", "thermal"})

    remove = h.helper.create_client(RemoveSensor, "/omnibind_perception/remove_sensor")
    assert remove.call(RemoveSensor.Request(name="lidar"), timeout_sec=10.0).success
    assert not remove.call(RemoveSensor.Request(name="lidar"), timeout_sec=10.0).success
    assert h.node.count_subscribers("/t/lidar") == 0
    assert h.wait(lambda: set(h.recognitions[-1].sensors) == {"camera", "thermal"})
    assert h.node.set_parameters([Parameter("sensors", Parameter.Type.STRING_ARRAY,
                                            ["camera"])])[0].successful
    assert h.wait(lambda: set(h.recognitions[-1].sensors) == {"camera"})
    assert h.wait(lambda: h.statuses and [s.name for s in h.statuses[-1].sensors] == ["camera"])


def test_bad_messages_degrade_the_sensor_without_crashing(make_harness) -> None:
    from omnibind_ros.ros import conversions as conv

    h = active_harness(make_harness, {"camera": SENSORS["camera"], "lidar": SENSORS["lidar"]})
    assert h.wait(lambda: h.state_of("camera") == "LIVE")
    pub = h.pubs.pop("camera")[0]
    for i in range(8):
        msg = conv.numpy_to_image(np.zeros((8, 8, 3), np.uint8), "rgb8", h.now())
        if i % 2:
            msg.encoding = "weird42"
        else:
            msg.data = bytes(10)  # size/step mismatch
        pub.publish(msg)
        h.publish_for(0.05, ["lidar"])
    assert h.wait(lambda: h.state_of("camera") == "DEGRADED", timeout=3.0)
    assert h.wait(lambda: h.recognitions and list(h.recognitions[-1].sensors) == ["lidar"])

    def levels() -> dict[str, bytes]:
        return {s.name.rsplit(" ", 1)[-1]: s.level for s in h.diags[-1].status}
    assert h.wait(lambda: levels()["camera"] == b"\x01"  # WARN
                  and levels()["lidar"] == b"\x00")  # OK (only lidar publishes)


def test_diagnostics_levels_per_state(make_harness) -> None:
    from diagnostic_msgs.msg import DiagnosticStatus

    h = active_harness(make_harness, {"camera": SENSORS["camera"], "lidar": SENSORS["lidar"]})
    assert h.wait(lambda: h.state_of("lidar") == "LIVE" and h.state_of("camera") == "LIVE")
    h.unplug("lidar")
    assert h.wait(lambda: h.state_of("lidar") in ("STALE", "LOST"))

    def level(name: str) -> Any:
        for s in h.diags[-1].status:
            if s.name == f"omnibind_perception: sensor {name}":
                values = {kv.key: kv.value for kv in s.values}
                assert values["topic"] == f"/t/{name}"
                return s.level
        return None
    assert h.wait(lambda: level("lidar") == DiagnosticStatus.ERROR
                  and level("camera") == DiagnosticStatus.OK)


def test_diagnostics_name_the_backend_in_use(make_harness) -> None:
    h = active_harness(make_harness, {"camera": SENSORS["camera"]})

    def fusion_values() -> dict[str, str] | None:
        for s in h.diags[-1].status if h.diags else ():
            if s.name == "omnibind_perception: fusion":
                return {kv.key: kv.value for kv in s.values}
        return None
    assert h.wait(lambda: fusion_values() is not None)
    values = fusion_values()
    assert values["backend"] == h.node._backend.name == "onnxruntime"
    assert values["providers"] == "CPUExecutionProvider"
    assert values["bundle"] == h.node._bundle.name


def test_audio_chunks_are_streamed_and_encoded_at_the_encode_rate(make_harness) -> None:
    sensors = {"mic": ("audio", "/t/mic", "omnibind_ros/msg/AudioChunk")}
    h = active_harness(make_harness, sensors, **{"sensors.mic.encode_rate_hz": 5.0})
    h.publish_for(1.2, rate_hz=50.0)
    worker = h.node.sensor_worker("mic")
    assert worker.received >= 20
    assert 2 <= worker.encoded <= 9  # ~5 Hz over ~1.2 s, not one per chunk
    assert h.wait(lambda: h.recognitions and list(h.recognitions[-1].sensors) == ["mic"])


def test_changing_labels_at_runtime_re_embeds_them(make_harness) -> None:
    from rclpy.parameter import Parameter

    h = active_harness(make_harness, {"camera": SENSORS["camera"]})
    assert h.wait(lambda: h.recognitions and h.recognitions[-1].best_label)
    labels = ["red apple", "blue chair"]
    assert h.node.set_parameters([Parameter("labels.names", Parameter.Type.STRING_ARRAY,
                                            labels)])[0].successful
    assert list(h.node.engine.fusion.label_names) == labels
    assert h.wait(lambda: h.recognitions[-1].best_label in labels
                  and set(h.recognitions[-1].top_labels) == set(labels))


# -- fuzz: random and malformed messages at the running node -----------------------------------

FUZZ_SENSORS = {**SENSORS, "mic": ("audio", "/t/mic", "omnibind_ros/msg/AudioChunk")}


def _fuzz_messages():
    from hypothesis import strategies as st
    from omnibind_ros.msg import AudioChunk
    from sensor_msgs.msg import Image, PointCloud2, PointField

    def stamp(msg, sec):
        msg.header.stamp.sec, msg.header.stamp.nanosec = sec, 0
        return msg

    secs = st.sampled_from([0, 1, 2**31 - 1, int(time.time()) - 5, int(time.time()),
                            int(time.time()) + 100])
    image = st.builds(
        lambda enc, h, w, step, big, data, sec: stamp(Image(
            encoding=enc, height=h, width=w, step=step, is_bigendian=big, data=data), sec),
        st.sampled_from(["rgb8", "bgr8", "mono8", "mono16", "16UC1", "32FC1", "rgba8",
                         "weird", ""]),
        st.integers(0, 12), st.integers(0, 12), st.integers(0, 60), st.integers(0, 1),
        st.binary(max_size=600), secs)
    field = st.builds(lambda name, off, dt, n: PointField(name=name, offset=off, datatype=dt,
                                                          count=n),
                      st.sampled_from(["x", "y", "z", "intensity", ""]), st.integers(0, 20),
                      st.integers(0, 9), st.integers(0, 2))
    cloud = st.builds(
        lambda fields, ps, w, h, dense, data, sec: stamp(PointCloud2(
            fields=fields, point_step=ps, row_step=ps * w, width=w, height=h, is_dense=dense,
            data=data), sec),
        st.lists(field, max_size=4), st.integers(0, 32), st.integers(0, 20),
        st.integers(0, 2), st.booleans(), st.binary(max_size=640), secs)
    audio = st.builds(
        lambda rate, ch, enc, data, sec: stamp(AudioChunk(
            sample_rate=rate, channels=ch, encoding=enc, data=data), sec),
        st.sampled_from([0, 8000, 16000, 48000]), st.integers(0, 3),
        st.sampled_from(["S16LE", "F32LE", "x"]), st.binary(max_size=800), secs)
    return st.one_of(st.tuples(st.sampled_from(["camera", "thermal"]), image),
                     st.tuples(st.just("lidar"), cloud), st.tuples(st.just("mic"), audio))


def test_fuzzed_messages_never_crash_the_node(make_harness) -> None:
    """Random and malformed Image / PointCloud2 / AudioChunk messages (bad sizes, steps,
    encodings, field layouts, stamps 0, far past, far future) on every sensor topic: the node
    keeps spinning, and valid data afterwards is recognised again."""
    from hypothesis import HealthCheck, given, settings

    h = active_harness(make_harness, FUZZ_SENSORS)
    assert h.wait(lambda: h.recognitions)

    @settings(max_examples=80, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_fuzz_messages())
    def publish(case) -> None:
        name, msg = case
        h.pubs[name][0].publish(msg)
        time.sleep(0.002)

    publish()
    assert h.thread.is_alive(), "the executor thread died"
    before = len(h.recognitions)
    # Valid data again: stamps from now on; the lidar and camera come back into fusion.
    assert h.wait(lambda: len(h.recognitions) > before + 5 and h.recognitions[-1].sensors
                  and {"camera", "lidar"} <= set(h.recognitions[-1].sensors), timeout=15.0)
    assert h.thread.is_alive()


# -- drivers' message types -----------------------------------------------------------------------

def test_audio_data_sensor_takes_its_format_from_the_sibling_audio_info(make_harness) -> None:
    from audio_common_msgs.msg import AudioInfo

    from omnibind_ros.ros import qos
    from omnibind_ros.ros.conversions import AudioFormat

    mic = {"mic": ("audio", "/t/mic/audio", "audio_common_msgs/msg/AudioData")}
    h = make_harness(sensor_overrides(mic))
    assert h.node.autostart()
    convert = h.node._sensors["mic"].convert
    assert convert.format == AudioFormat()                  # audio_capture's defaults until then
    pub = h.helper.create_publisher(AudioInfo, "/t/mic/audio_info", qos.SENSOR_RELIABLE)
    info = AudioInfo(channels=2, sample_rate=48000, sample_format="S32LE", bitrate=0,
                     coding_format="wave")

    def updated() -> bool:
        pub.publish(info)
        return convert.format == AudioFormat("S32LE", 48000, 2, "wave")
    assert h.wait(updated, timeout=10.0, publish=False)


def test_a_sensor_of_a_type_not_installed_fails_configure(make_harness) -> None:
    mic = {"mic": ("audio", "/t/mic/audio", "audio_common_msgs/msg/AudioStamped")}
    h = make_harness(sensor_overrides(mic))
    assert not h.node.autostart()


# -- input quality --------------------------------------------------------------------------------

def test_a_camera_in_the_dark_is_live_but_warns_dark(make_harness) -> None:
    """On time is not usable: a camera publishing dark frames stays LIVE, its SensorStatus
    quality drops with the issue named, /diagnostics says WARN "dark", and light clears it."""
    from omnibind_ros.ros import conversions as conv

    sensors = {k: SENSORS[k] for k in ("camera", "lidar")}
    h = active_harness(make_harness, sensors)
    texture = RNG.integers(0, 12, (32, 32, 3), np.uint8)

    def camera(frame: np.ndarray) -> Callable[[], None]:
        def publish() -> None:
            h.pubs["camera"][0].publish(conv.numpy_to_image(frame, "rgb8", h.now()))
        return publish

    def status(name: str) -> Any:
        for arr in reversed(h.statuses):
            for s in arr.sensors:
                if s.name == name:
                    return s
        return None

    def diag(name: str) -> Any:
        return next((s for s in reversed(h.diags[-1].status) if s.name.endswith(f" {name}")),
                    None) if h.diags else None

    def run(publish_camera: Callable[[], None], cond: Callable[[], Any]) -> Any:
        end = time.monotonic() + 8.0
        while time.monotonic() < end and not cond():
            publish_camera()
            h.publish_for(0.1, names=["lidar"])
        return cond()

    dark = camera(texture + 8)  # underexposed: everything below luma ~20
    assert run(dark, lambda: status("camera") is not None and status("camera").quality < 0.5
               and diag("camera") is not None and diag("camera").level == b"\x01")
    s, d = status("camera"), diag("camera")
    assert s.state == 1 and s.quality_issue == "dark"  # LIVE: messages arrive on time
    assert "dark, quality" in d.message and d.message.startswith("live at")
    assert {kv.key: kv.value for kv in d.values}["quality_issue"] == "dark"
    lidar = status("lidar")
    assert lidar.quality > 0.5 and diag("lidar").level == b"\x00"
    lit = camera(RNG.integers(40, 230, (32, 32, 3), np.uint8))
    assert run(lit, lambda: status("camera").quality == 1.0 and diag("camera").level == b"\x00")
    assert status("camera").quality_issue == ""
