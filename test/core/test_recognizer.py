"""The recognition engine (``core.recognizer.Recognizer``) with a manual clock and a masked-mean
fusion head: when ticks run, what they fuse, and what the listeners and the hook receive.

No ROS, no bundle: the engine is fed events the way the perception node and the offline bag
evaluation feed it, at times written out as ints of nanoseconds. With the default schedule
(10 Hz) the period is 100 ms: cooldown 80 ms, heartbeat deadline 120 ms, min gap 25 ms. Every
sensor is configured at 10 Hz: STALE beyond 250 ms without a sample, LOST beyond 1 s."""
from __future__ import annotations

import numpy as np
import pytest

from omnibind_ros.core.availability import SensorConfig, SensorState
from omnibind_ros.core.fusion import FusionResult, FusionTick
from omnibind_ros.core.recognizer import MonitorUpdate, Recognizer

S = SensorState
SEC = 1_000_000_000  # ns per s
MS = 1_000_000  # ns per ms
D = 4
LABELS = ("mug", "ball", "box")
LABEL_EMB = np.eye(3, D, dtype=np.float32)  # e_i is LABELS[i]
SCALE = 10.0
# Each sensor alone names its own label; cam and ir fused (their mean, (0.8, 0.5, 0, 0)) is a mug.
EMBEDDINGS = {"cam": np.array([1.0, 0.0, 0.0, 0.0]), "ir": np.array([0.6, 1.0, 0.0, 0.0]),
              "mic": np.array([0.0, 0.0, 1.0, 0.0])}
MODALITIES = {"cam": "image", "ir": "thermal", "mic": "audio"}


def masked_mean(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The AF head's contract without weights: ``[1, N, D]`` + mask -> ``[1, D]``."""
    return tokens[mask].mean(axis=0, keepdims=True)


class Rig:
    """A Recognizer on a manual clock, with its listeners recording everything."""

    def __init__(self, sensors: tuple[str, ...] = ("cam", "ir"), *, start: int = 0,
                 rate_hz: float = 10.0, fuse=masked_mean, listen_errors: bool = True) -> None:
        self.now = start
        self.results: list[FusionResult] = []
        self.errors: list[Exception] = []
        self.hooks: list[tuple[str, float]] = []
        fusion = FusionTick(fuse, LABELS, LABEL_EMB, SCALE, max_age_s=0.5)
        self.rec = Recognizer(fusion, clock=self.clock, rate_hz=rate_hz,
                              on_result=self.results.append,
                              on_tick_error=self.errors.append if listen_errors else None,
                              hook=lambda key, value: self.hooks.append((key, value)))
        for name in sensors:
            self.rec.add_sensor(SensorConfig(name, MODALITIES[name], f"/{name}", 10.0))

    def clock(self) -> int:
        return self.now

    def sample(self, name: str, stamp: int, now: int | None = None) -> FusionResult | None:
        """A valid message of ``name`` stamped ``stamp``, accepted and encoded at ``now``."""
        self.now = stamp if now is None else now
        assert self.rec.on_sample(name, stamp)
        return self.rec.on_embedding(name, stamp, EMBEDDINGS[name])

    def timer(self, now: int) -> FusionResult | None:
        self.now = now
        return self.rec.on_fusion_timer()

    def monitor(self, now: int) -> MonitorUpdate:
        self.now = now
        return self.rec.on_monitor_timer()

    def ticks(self) -> list[tuple[int, tuple[str, ...]]]:
        return [(r.tick_ns, r.sensors) for r in self.results]

    def hook_keys(self) -> list[str]:
        return [key for key, _ in self.hooks]


def test_embeddings_tick_after_the_cooldown_only_when_they_are_the_freshest() -> None:
    rig = Rig()
    first = rig.sample("cam", 0)  # the first evidence ticks at once
    assert first is rig.results[0] and (first.tick_ns, first.sensors) == (0, ("cam",))
    assert first.best_label == "mug" and first.stamp_ns == 0
    second = rig.sample("ir", 30 * MS)  # joins fusion: ticks (30 ms >= the 25 ms min gap)
    assert second is not None and second.sensors == ("cam", "ir")
    assert second.best_label == "mug"
    assert [p.label for p in second.per_modality] == ["mug", "ball"]
    assert rig.sample("cam", 100 * MS) is None  # freshest, but 70 ms < the 80 ms cooldown
    assert rig.sample("cam", 109 * MS, now=110 * MS - 1) is None  # 1 ns short of the cooldown
    assert rig.sample("ir", 90 * MS, now=110 * MS) is None  # cooled down, but cam is fresher
    third = rig.sample("cam", 110 * MS)  # cooled down and the freshest
    assert third is not None and third.tick_ns == 110 * MS and third.stamp_ns == 110 * MS
    assert [(p.sensor, p.stamp_ns, p.age_s) for p in third.per_modality] == [
        ("cam", 110 * MS, 0.0), ("ir", 90 * MS, 0.02)]
    assert rig.ticks() == [(0, ("cam",)), (30 * MS, ("cam", "ir")), (110 * MS, ("cam", "ir"))]
    assert rig.rec.last_result is third and rig.errors == []


def test_a_joining_sensor_ticks_at_once_but_at_most_every_min_gap() -> None:
    rig = Rig(("cam", "ir", "mic"))
    rig.sample("cam", 0)
    rig.sample("cam", 100 * MS)
    assert rig.sample("cam", 120 * MS) is None  # cooldown
    # ir joins with an older stamp than cam's, inside the cooldown: it ticks anyway
    joined = rig.sample("ir", 115 * MS, now=130 * MS)
    assert joined is not None and (joined.tick_ns, joined.sensors) == (130 * MS, ("cam", "ir"))
    assert rig.sample("mic", 140 * MS) is None  # joins 10 ms after a tick: waits for the gap
    assert rig.timer(150 * MS) is None  # 20 ms: still inside the gap
    late = rig.timer(155 * MS)  # the first heartbeat after the gap ticks for the join
    assert late is not None and late.sensors == ("cam", "ir", "mic")
    assert rig.timer(180 * MS) is None  # only once; the next deadline is 155 + 120 ms
    assert rig.ticks() == [(0, ("cam",)), (100 * MS, ("cam",)), (130 * MS, ("cam", "ir")),
                           (155 * MS, ("cam", "ir", "mic"))]


def test_the_heartbeat_ticks_at_the_deadline_of_one_point_two_periods() -> None:
    rig = Rig(("cam",))
    assert rig.rec.timer_period_ns == 25 * MS
    rig.sample("cam", 0)
    for t in (25 * MS, 50 * MS, 75 * MS, 100 * MS, 120 * MS - 1):
        assert rig.timer(t) is None, t
    beat = rig.timer(120 * MS)
    assert beat is not None and (beat.tick_ns, beat.sensors) == (120 * MS, ("cam",))

    rig = Rig(("cam",))  # a heartbeat every 25 ms and no more evidence after the first
    rig.sample("cam", 0)
    fired = [t for t in range(25 * MS, 401 * MS, 25 * MS) if rig.timer(t) is not None]
    assert fired == [125 * MS, 250 * MS, 375 * MS]
    # at 250 ms cam's sample is exactly the stale timeout old: still fused; at 375 ms it is not
    assert rig.ticks() == [(0, ("cam",)), (125 * MS, ("cam",)), (250 * MS, ("cam",)),
                           (375 * MS, ())]
    assert rig.results[-1].no_answer_reason == "no sensor is live"
    assert rig.rec.last_result is rig.results[-1]  # a "no answer" is a result too


def _drained_start(rig: Rig) -> None:
    """cam at 0 and ir at 30 ms fused, with their UNKNOWN -> LIVE transitions consumed by a
    monitor evaluation before their embeddings arrived (so no tick depends on those)."""
    for name, t in (("cam", 0), ("ir", 30 * MS)):
        rig.now = t
        assert rig.rec.on_sample(name, t)
        (tr,) = rig.rec.on_monitor_timer().transitions
        assert (tr.name, tr.old, tr.new, tr.time_ns) == (name, S.UNKNOWN, S.LIVE, t)
        assert rig.rec.on_embedding(name, t, EMBEDDINGS[name]) is not None
    assert rig.ticks() == [(0, ("cam",)), (30 * MS, ("cam", "ir"))]


def test_a_fused_sensor_going_stale_ticks_at_once_and_leaves_the_result() -> None:
    rig = Rig()
    _drained_start(rig)
    assert rig.monitor(250 * MS) == MonitorUpdate(())  # cam exactly 250 ms old: not STALE yet
    assert len(rig.results) == 2
    update = rig.monitor(250 * MS + 1)
    (tr,) = update.transitions
    assert (tr.name, tr.old, tr.new, tr.time_ns) == ("cam", S.LIVE, S.STALE, 250 * MS + 1)
    assert "stale timeout 0.25 s" in tr.reason and not update.clock_reset
    left = rig.results[-1]  # ticked by the evaluation, not by a timer or an embedding
    assert (left.tick_ns, left.sensors, left.best_label) == (250 * MS + 1, ("ir",), "ball")
    assert rig.rec.last_result is left
    assert [(h.name, h.in_fusion) for h in rig.rec.monitor.health()] == [("cam", False),
                                                                        ("ir", True)]
    (tr,) = rig.monitor(280 * MS + 1).transitions  # ir too, 30 ms later (past the min gap)
    assert (tr.name, tr.new) == ("ir", S.STALE)
    assert rig.ticks()[2:] == [(250 * MS + 1, ("ir",)), (280 * MS + 1, ())]
    assert rig.results[-1].no_answer_reason == "no sensor is live"


def test_a_transition_of_a_sensor_not_fused_does_not_tick() -> None:
    rig = Rig(("cam", "mic"))  # mic never publishes
    rig.now = 0
    assert rig.rec.on_sample("cam", 0)
    assert [t.name for t in rig.rec.on_monitor_timer().transitions] == ["cam"]
    rig.rec.on_embedding("cam", 0, EMBEDDINGS["cam"])
    for k in range(1, 10):
        assert rig.sample("cam", k * 100 * MS) is not None
    update = rig.monitor(SEC + 1)  # mic's startup grace is over; cam is 100 ms old
    assert [(t.name, t.old, t.new, t.time_ns) for t in update.transitions] == [
        ("mic", S.UNKNOWN, S.LOST, SEC + 1)]
    assert len(rig.results) == 10 and rig.results[-1].tick_ns == 900 * MS


def test_not_ticking_records_samples_but_never_ticks() -> None:
    rig = Rig(("cam",))
    rig.rec.ticking = False
    assert rig.sample("cam", 0) is None
    assert rig.timer(200 * MS) is None  # a first tick would be due at once
    assert rig.rec.store.get("cam").stamp_ns == 0
    assert rig.rec.monitor.state("cam") == S.LIVE  # the sample was recorded
    assert rig.results == [] and rig.rec.last_result is None
    assert "fusion/tick" not in rig.hook_keys()
    rig.rec.ticking = True
    resumed = rig.timer(200 * MS)
    assert resumed is not None and (resumed.tick_ns, resumed.sensors) == (200 * MS, ("cam",))


def test_a_removed_sensors_late_embedding_is_ignored() -> None:
    rig = Rig()
    rig.sample("cam", 0)
    rig.sample("ir", 30 * MS)
    rig.now = 130 * MS
    assert rig.rec.on_sample("ir", 130 * MS)  # accepted, then removed while being encoded
    rig.rec.remove_sensor("ir")
    hooks = len(rig.hooks)
    assert rig.rec.on_embedding("ir", 130 * MS, EMBEDDINGS["ir"]) is None
    assert rig.rec.store.get("ir") is None and len(rig.hooks) == hooks  # its old slot went too
    assert rig.rec.sensor_names == ("cam",)
    assert not rig.rec.on_sample("ir", 140 * MS)
    rig.rec.remove_sensor("ir")  # unknown: ignored
    assert rig.ticks() == [(0, ("cam",)), (30 * MS, ("cam", "ir"))]
    beat = rig.timer(150 * MS)  # the next heartbeat fuses cam alone
    assert beat is not None and beat.sensors == ("cam",)


def test_events_of_unknown_sensors_are_ignored() -> None:
    rig = Rig(("cam",))
    assert rig.rec.on_sample("ghost", 0) is False
    assert rig.rec.on_bad_sample("ghost", "InvalidShapeError") is None
    rig.rec.on_publisher_count("ghost", 0)
    assert rig.rec.on_embedding("ghost", 0, EMBEDDINGS["cam"]) is None
    assert rig.rec.sensor_names == ("cam",) and len(rig.rec.store) == 0 and rig.results == []
    for t in (10 * MS, 20 * MS, 30 * MS):  # a known sensor's bad samples do count
        rig.now = t
        rig.rec.on_bad_sample("cam", "InvalidShapeError")
    (health,) = rig.rec.monitor.health()
    assert health.state == S.DEGRADED and "InvalidShapeError" in health.reason


def test_a_failing_fuse_is_reported_and_keeps_the_previous_result() -> None:
    broken = [False]
    crash = RuntimeError("fusion head crashed")

    def fuse(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if broken[0]:
            raise crash
        return masked_mean(tokens, mask)

    rig = Rig(("cam",), fuse=fuse)
    first = rig.sample("cam", 0)
    broken[0] = True
    assert rig.timer(120 * MS) is None
    assert rig.errors == [crash] and rig.errors[0] is crash
    assert rig.rec.last_result is first and rig.results == [first]
    assert rig.hook_keys().count("fusion/tick") == 2  # the failed tick is timed too
    assert rig.rec.monitor.health()[0].in_fusion  # still what the last good tick used
    broken[0] = False
    assert rig.timer(200 * MS) is None  # the failed tick counted: next deadline 240 ms
    again = rig.timer(240 * MS)
    assert again is not None and (again.tick_ns, again.sensors) == (240 * MS, ("cam",))
    assert rig.rec.last_result is again and rig.results == [first, again]

    quiet = Rig(("cam",), fuse=fuse, listen_errors=False)  # no error listener: no raise either
    broken[0] = True
    assert quiet.sample("cam", 0) is None and quiet.rec.last_result is None


def test_a_clock_jump_back_clears_the_stored_embeddings() -> None:
    rig = Rig(start=5 * SEC)
    rig.sample("cam", 5 * SEC)
    rig.sample("ir", 5 * SEC + 30 * MS)
    assert len(rig.rec.store) == 2 and rig.rec.last_result.sensors == ("cam", "ir")
    update = rig.monitor(2 * SEC)  # a looping bag restarts 3 s earlier
    assert update.clock_reset and len(rig.rec.store) == 0
    assert [(t.name, t.old, t.new, t.time_ns) for t in update.transitions][-2:] == [
        ("cam", S.LIVE, S.UNKNOWN, 2 * SEC), ("ir", S.LIVE, S.UNKNOWN, 2 * SEC)]
    reset = rig.results[-1]  # the fused sensors changed state: ticked at once
    assert (reset.tick_ns, reset.sensors) == (2 * SEC, ())
    assert reset.no_answer_reason == "no sensor is live"
    assert rig.monitor(2 * SEC + 50 * MS) == MonitorUpdate((), clock_reset=False)
    back = rig.sample("cam", 2 * SEC + 100 * MS)  # the new timeline's first sample
    assert back is not None and (back.tick_ns, back.sensors) == (2 * SEC + 100 * MS, ("cam",))
    assert back.stamp_ns == 2 * SEC + 100 * MS


def test_a_new_timeline_embedding_stored_before_the_monitor_sees_the_jump_stays() -> None:
    """The first sample after a jump back is seen by the monitor (reset) before its evaluation:
    only the old timeline's embeddings go, the new one is fused at once."""
    rig = Rig(start=5 * SEC)
    rig.sample("cam", 5 * SEC)
    rig.sample("ir", 5 * SEC + 30 * MS)
    back = rig.sample("cam", 2 * SEC)  # the monitor resets on this sample's clock reading
    assert back is not None and back.sensors == ("cam",)  # ir's old slot is in the future
    update = rig.monitor(2 * SEC + 10 * MS)
    assert update.clock_reset
    assert set(rig.rec.store.snapshot()) == {"cam"}  # ir's 5 s slot dropped, cam's kept
    again = rig.timer(2 * SEC + 200 * MS)
    assert again is not None and again.sensors == ("cam",) and again.best_label


def test_on_result_receives_every_result_whatever_started_the_tick() -> None:
    rig = Rig()
    _drained_start(rig)  # two ticks started by embeddings
    beat = rig.timer(150 * MS)  # deadline 30 + 120 ms
    assert beat is not None and rig.results[2] is beat
    assert [t.name for t in rig.monitor(250 * MS + 1).transitions] == ["cam"]  # cam: STALE
    assert rig.ticks() == [(0, ("cam",)), (30 * MS, ("cam", "ir")), (150 * MS, ("cam", "ir")),
                           (250 * MS + 1, ("ir",))]
    assert rig.results[3] is rig.rec.last_result and rig.results[3] is not beat


def test_the_hook_times_ticks_and_stamp_to_embedding() -> None:
    rig = Rig()
    rig.now = 0
    assert rig.rec.on_sample("cam", 0)
    rig.now = 30 * MS  # encoding took 30 ms
    assert rig.rec.on_embedding("cam", 0, EMBEDDINGS["cam"]) is not None
    rig.now = 40 * MS
    assert rig.rec.on_sample("ir", 40 * MS)
    rig.now = 45 * MS
    assert rig.rec.on_embedding("ir", 40 * MS, EMBEDDINGS["ir"]) is None  # 15 ms: min gap
    assert rig.timer(55 * MS) is not None
    assert rig.hook_keys() == ["cam/stamp_to_embedding", "fusion/tick",
                               "ir/stamp_to_embedding", "fusion/tick"]
    values = dict(rig.hooks[::2])
    assert values == {"cam/stamp_to_embedding": 0.03, "ir/stamp_to_embedding": 0.005}  # in s
    spent = [v for k, v in rig.hooks if k == "fusion/tick"]
    assert all(isinstance(v, float) and 0.0 <= v < 10.0 for v in spent)


def test_the_schedule_can_be_replaced() -> None:
    rig = Rig(("cam",))
    rig.rec.set_schedule(5.0)
    assert rig.rec.timer_period_ns == 50 * MS and rig.rec.scheduler.period_ns == 200 * MS
    rig.rec.set_schedule(10.0, tick_on_embedding=False)
    assert rig.rec.timer_period_ns == 100 * MS
    assert rig.sample("cam", 0) is None  # timer only: embeddings never tick
    assert rig.timer(10 * MS) is not None


@pytest.mark.parametrize("stamp", [0.5, float(SEC)], ids=repr)
def test_float_stamps_are_rejected(stamp: float) -> None:
    rig = Rig(("cam",))
    with pytest.raises(TypeError, match="int of nanoseconds"):
        rig.rec.on_sample("cam", stamp)
    with pytest.raises(TypeError, match="int of nanoseconds"):
        rig.rec.on_embedding("cam", stamp, EMBEDDINGS["cam"])
    assert len(rig.rec.store) == 0 and rig.results == []


def test_the_fusion_tick_uses_the_bundles_logit_scale(tmp_path) -> None:
    """Scores are the softmax at the scale training used; a bundle without one is refused."""
    import yaml

    from omnibind_ros.core.backends import create_backend
    from omnibind_ros.core.bundle import load_bundle
    from omnibind_ros.core.errors import BundleIncompatibleError
    from omnibind_ros.core.recognizer import FusionSettings, build_fusion_tick
    from omnibind_ros.testing import write_test_bundle

    root = write_test_bundle(tmp_path / "b", logit_scale=7.5)
    bundle = load_bundle(root)
    backend = create_backend("onnxruntime", bundle, threads=1)
    tick = build_fusion_tick(bundle, backend, FusionSettings(), bundle.label_names,
                             bundle.label_embeddings)
    assert tick.logit_scale == 7.5
    manifest = root / "bundle.yaml"
    doc = yaml.safe_load(manifest.read_text())
    del doc["labels"]["logit_scale"]
    manifest.write_text(yaml.safe_dump(doc))
    old = load_bundle(root)
    assert old.logit_scale is None
    with pytest.raises(BundleIncompatibleError, match="no labels.logit_scale.*re-export"):
        build_fusion_tick(old, backend, FusionSettings(), old.label_names, old.label_embeddings)


def test_an_embedding_keeps_its_input_quality_and_min_quality_leaves_it_out() -> None:
    rig = Rig()
    rig.rec.set_fusion(FusionTick(masked_mean, LABELS, LABEL_EMB, SCALE, max_age_s=0.5,
                                  min_quality=0.5))
    rig.now = 0
    assert rig.rec.on_sample("cam", 0) and rig.rec.on_sample("ir", 0)
    rig.rec.on_embedding("cam", 0, EMBEDDINGS["cam"], quality=0.2)  # a camera in the dark
    result = rig.rec.on_embedding("ir", 0, EMBEDDINGS["ir"], quality=0.9)
    assert rig.rec.store.get("cam").quality == 0.2 and rig.rec.store.get("ir").quality == 0.9
    result = result or rig.timer(120 * MS)
    assert result is not None and result.sensors == ("ir",)
    # out of range from a buggy measure: clamped, never an error that drops the sample
    rig.rec.on_embedding("cam", 130 * MS, EMBEDDINGS["cam"], quality=1.7)
    assert rig.rec.store.get("cam").quality == 1.0
