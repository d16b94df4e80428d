"""Fusion-tick logic: token selection, classification, results, and the store under threads.

The fusion head is injected, so these tests use a plain mean of the live tokens (the AF head's
shape contract without its weights) and count the calls."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnibind_ros.core.availability import AvailabilityMonitor, SensorConfig
from omnibind_ros.core.fusion import (
    EmbeddingSlot,
    FusionResult,
    FusionTick,
    LatestEmbeddings,
    classify,
    select_tokens,
)

D = 4
LABELS = ("mug", "ball", "box")
# Label embeddings along the first three axes: a token equal to e_i is "LABELS[i]".
LABEL_EMB = np.eye(3, D, dtype=np.float32)
SCALE = 10.0


def unit(i: int, d: int = D) -> np.ndarray:
    v = np.zeros(d, dtype=np.float32)
    v[i] = 1.0
    return v


def slot(sensor: str, modality: str, stamp: float, emb: np.ndarray | int = 0,
         quality: float = 1.0) -> EmbeddingSlot:
    emb = unit(emb) if isinstance(emb, int) else emb
    return EmbeddingSlot(sensor, modality, stamp, emb, quality)


class MeanHead:
    """fuse(tokens, mask) -> mean of the live tokens, like the AF head's output contract."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        assert tokens.dtype == np.float32 and mask.dtype == bool
        assert tokens.shape[:2] == mask.shape and tokens.shape[0] == 1
        self.calls.append((tokens.copy(), mask.copy()))
        live = tokens[mask]
        out = live.mean(axis=0, keepdims=True)
        return out / np.linalg.norm(out, axis=-1, keepdims=True)


def make_tick(**kw) -> tuple[FusionTick, MeanHead]:
    head = MeanHead()
    kw.setdefault("max_age_s", 0.5)
    return FusionTick(head, LABELS, LABEL_EMB, SCALE, **kw), head


# ---------------------------------------------------------------------------------------------
# Slots and the store


def test_slot_copies_and_freezes_its_embedding() -> None:
    buf = unit(1)
    s = slot("cam", "image", 1.0, buf)
    buf[:] = 7.0  # a backend reusing its output buffer
    np.testing.assert_array_equal(s.embedding, unit(1))
    assert not s.embedding.flags.writeable and s.dim == D


@pytest.mark.parametrize("kw", [
    {"emb": np.array([1.0, np.nan, 0.0, 0.0])}, {"emb": np.ones((2, 2))}, {"emb": np.ones(0)},
    {"stamp": float("inf")}, {"quality": 1.5}, {"modality": "sonar"},
])
def test_slot_rejects_bad_input(kw: dict) -> None:
    args = {"sensor": "cam", "modality": "image", "stamp": 1.0, "emb": 0, "quality": 1.0}
    args.update(kw)
    with pytest.raises(ValueError):
        slot(**args)


def test_store_keeps_only_the_newest_per_sensor() -> None:
    store = LatestEmbeddings()
    assert store.put(slot("cam", "image", 2.0, 0))
    assert not store.put(slot("cam", "image", 1.0, 1))  # an encoder finishing late
    assert not store.put(slot("cam", "image", 2.0, 1))
    assert store.get("cam").stamp_s == 2.0 and "cam" in store and len(store) == 1
    assert store.put(slot("cam", "image", 3.0, 1))
    snap = store.snapshot()
    store.remove("cam")
    assert snap["cam"].stamp_s == 3.0 and store.get("cam") is None  # snapshot is a copy
    assert store.remove("cam") is None


def test_store_accepts_older_slots_after_the_clock_was_rewound() -> None:
    store = LatestEmbeddings()
    store.put(slot("cam", "image", 50.0))
    assert not store.put(slot("cam", "image", 1.0), now_s=49.9)  # same timeline: older
    assert store.put(slot("cam", "image", 1.0), now_s=1.01)  # looping bag: stored is "future"
    store.clear()
    assert len(store) == 0


# ---------------------------------------------------------------------------------------------
# Token selection


def test_select_skips_stale_non_fusable_future_and_low_quality_slots() -> None:
    slots = [slot("cam", "image", 9.9), slot("old_cam", "image", 9.0),
             slot("off_thermal", "thermal", 9.95), slot("future", "audio", 10.5),
             slot("blurred", "tactile", 9.95, quality=0.1), slot("lidar", "point_cloud", 9.8)]
    fusable = ["cam", "old_cam", "future", "blurred", "lidar"]  # off_thermal: DISABLED
    tokens, mask, used = select_tokens(slots, fusable, 10.0, max_age_s=0.5, min_quality=0.5)
    assert [s.sensor for s in used] == ["cam", "lidar"]
    assert tokens.shape == (1, 2, D) and tokens.dtype == np.float32
    assert mask.tolist() == [[True, True]]


def test_two_sensors_of_one_modality_are_two_tokens_in_a_fixed_order() -> None:
    slots = [slot("right_cam", "image", 1.0, 1), slot("mic", "audio", 1.0, 2),
             slot("left_cam", "image", 1.0, 0), slot("ir", "thermal", 1.0, 3)]
    names = [s.sensor for s in slots]
    orders = set()
    for perm in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        tokens, _, used = select_tokens([slots[i] for i in perm], names, 1.0, 0.5)
        orders.add(tuple(s.sensor for s in used))
        np.testing.assert_array_equal(tokens[0], np.stack([s.embedding for s in used]))
    assert orders == {("left_cam", "right_cam", "ir", "mic")}  # registry order, then name


def test_select_accepts_a_mapping_a_store_and_duplicate_sensors() -> None:
    store = LatestEmbeddings()
    store.put(slot("cam", "image", 1.0))
    for source in (store, store.snapshot()):
        assert [s.sensor for s in select_tokens(source, ["cam"], 1.0, 0.5)[2]] == ["cam"]
    newer = slot("cam", "image", 1.2, 1)
    _, _, used = select_tokens([slot("cam", "image", 1.0), newer], ["cam"], 1.2, 0.5)
    assert used == [newer]


def test_padding_and_max_tokens_keep_modality_diversity() -> None:
    slots = [slot("cam_a", "image", 1.00), slot("cam_b", "image", 1.05),
             slot("cam_c", "image", 1.04), slot("ir", "thermal", 0.90)]
    tokens, mask, used = select_tokens(slots, [s.sensor for s in slots], 1.1, 0.5, pad_to=3)
    assert [s.sensor for s in used] == ["cam_b", "cam_c", "ir"]  # thermal before a 3rd camera
    assert tokens.shape == (1, 3, D) and mask.all()
    tokens, mask, used = select_tokens(slots[:1], ["cam_a"], 1.1, 0.5, pad_to=3)
    assert mask.tolist() == [[True, False, False]] and not tokens[0, 1:].any()
    with pytest.raises(ValueError, match="exceeds pad_to"):
        select_tokens(slots, ["cam_a"], 1.1, 0.5, max_tokens=4, pad_to=3)


def test_select_empty_and_mismatched_dims() -> None:
    tokens, mask, used = select_tokens([], [], 0.0, 0.5, dim=D)
    assert tokens.shape == (1, 0, D) and mask.shape == (1, 0) and used == []
    bad = [slot("cam", "image", 1.0), slot("ir", "thermal", 1.0, unit(0, D + 1))]
    with pytest.raises(ValueError, match="different sizes"):
        select_tokens(bad, ["cam", "ir"], 1.0, 0.5)


@settings(max_examples=50, deadline=None)
@given(specs=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["image", "thermal", "audio"]),
                                st.floats(-2.0, 2.0), st.booleans()), max_size=12),
       max_age=st.floats(0.0, 1.5), max_tokens=st.none() | st.integers(1, 4))
def test_selection_properties(specs, max_age, max_tokens) -> None:
    now = 100.0
    slots = [slot(f"s{i}", m, now - age) for i, m, age, _ in specs]
    fusable = {f"s{i}" for i, _, _, ok in specs if ok}
    tokens, mask, used = select_tokens(slots, fusable, now, max_age, max_tokens)
    assert {s.sensor for s in used} <= fusable
    assert all(-0.2 <= now - s.stamp_s <= max_age for s in used)
    assert len({s.sensor for s in used}) == len(used) == int(mask.sum())
    assert max_tokens is None or len(used) <= max_tokens
    again = select_tokens(list(reversed(slots)), sorted(fusable), now, max_age, max_tokens)[2]
    assert [s.sensor for s in again] == [s.sensor for s in used]


# ---------------------------------------------------------------------------------------------
# Classification


def test_classify_matches_a_hand_computation() -> None:
    labels = np.array([[1.0, 0.0], [0.0, 2.0]])  # normalised inside: e0, e1
    emb = np.array([3.0, 4.0])  # unit: (0.6, 0.8)
    idx, probs = classify(emb, labels, logit_scale=5.0, top_k=2)
    e = np.exp([5.0 * 0.6, 5.0 * 0.8])
    expected = e / e.sum()
    assert idx.tolist() == [1, 0]
    np.testing.assert_allclose(probs, [expected[1], expected[0]], rtol=1e-6)
    assert probs.dtype == np.float32 and idx.dtype == np.int64


def test_classify_batches_clips_top_k_and_breaks_ties_by_label_order() -> None:
    batch = np.stack([unit(2), unit(0), unit(3)])  # unit(3) is equidistant from all labels
    idx, probs = classify(batch, LABEL_EMB, SCALE, top_k=10)
    assert idx.shape == probs.shape == (3, 3)
    assert idx[:, 0].tolist() == [2, 0, 0] and idx[2].tolist() == [0, 1, 2]
    np.testing.assert_allclose(probs[2], 1 / 3, rtol=1e-6)
    assert np.all(np.diff(probs, axis=1) <= 0) and np.all((probs >= 0) & (probs <= 1))
    with pytest.raises(ValueError):
        classify(np.zeros(D), LABEL_EMB, SCALE)
    with pytest.raises(ValueError):
        classify(unit(0), LABEL_EMB, -1.0)
    with pytest.raises(ValueError):
        classify(unit(0, D + 1), LABEL_EMB, SCALE)


# ---------------------------------------------------------------------------------------------
# The tick


def test_tick_fuses_and_reports_everything_recognition_needs() -> None:
    tick, head = make_tick(top_k=2)
    slots = [slot("left_cam", "image", 9.90, 0), slot("right_cam", "image", 9.95, 0),
             slot("ir", "thermal", 9.80, 1)]
    result = tick(slots, ["left_cam", "right_cam", "ir"], now_s=10.0)
    assert result.answered and result.no_answer_reason == ""
    assert result.stamp_s == 9.95  # the newest input used, not the tick time
    assert result.tick_s == 10.0
    assert result.sensors == ("left_cam", "right_cam", "ir")
    assert result.modalities == ("image", "image", "thermal")
    fused = (2 * unit(0) + unit(1)) / np.linalg.norm(2 * unit(0) + unit(1))
    np.testing.assert_allclose(result.embedding, fused, rtol=1e-6)
    idx, probs = classify(fused, LABEL_EMB, SCALE, top_k=2)
    assert result.top_labels == tuple(LABELS[i] for i in idx) == ("mug", "ball")
    np.testing.assert_allclose(result.top_scores, probs, rtol=1e-6)
    assert result.best_label == "mug" and result.best_score == result.top_scores[0]
    (tokens, mask), = head.calls
    assert tokens.shape == (1, 3, D) and mask.all()
    preds = {p.sensor: p for p in result.per_modality}
    assert [p.sensor for p in result.per_modality] == list(result.sensors)
    assert preds["ir"].label == "ball" and preds["left_cam"].label == "mug"
    assert preds["ir"].age_s == pytest.approx(0.2) and preds["ir"].stamp_s == 9.80
    assert preds["ir"].score == pytest.approx(float(classify(unit(1), LABEL_EMB, SCALE, 1)[1][0]))


def test_fewer_modalities_than_min_gives_no_answer_and_says_why() -> None:
    tick, head = make_tick(min_modalities=2)
    slots = [slot("left_cam", "image", 1.0), slot("right_cam", "image", 1.0)]
    result = tick(slots, ["left_cam", "right_cam"], now_s=1.0)
    assert not result.answered and head.calls == []  # two cameras are one modality
    assert "1 live modality ['image']" in result.no_answer_reason
    assert "min_modalities is 2" in result.no_answer_reason
    assert (result.best_label, result.best_score, result.sensors, result.top_labels,
            result.per_modality, result.embedding, result.stamp_s) == ("", 0.0, (), (), (),
                                                                        None, None)


@pytest.mark.parametrize(("fusable", "reason"), [
    ([], "no sensor is live"), (["cam"], "no embedding within max_age_s"),
])
def test_no_usable_sensor_gives_an_empty_result(fusable: list[str], reason: str) -> None:
    tick, head = make_tick()
    result = tick([slot("cam", "image", 0.0)], fusable, now_s=5.0)
    assert reason in result.no_answer_reason and head.calls == []
    assert result == FusionResult(tick_s=5.0, no_answer_reason=result.no_answer_reason)


def test_tick_rejects_a_broken_head_and_bad_setup() -> None:
    tick = FusionTick(lambda t, m: np.full((1, D), np.nan), LABELS, LABEL_EMB, SCALE,
                      max_age_s=1.0)
    with pytest.raises(ValueError, match="non-finite"):
        tick([slot("cam", "image", 0.0)], ["cam"], 0.0)
    tick = FusionTick(lambda t, m: np.ones((2, D)), LABELS, LABEL_EMB, SCALE, max_age_s=1.0)
    with pytest.raises(ValueError, match="shape"):
        tick([slot("cam", "image", 0.0)], ["cam"], 0.0)
    with pytest.raises(ValueError, match="label names"):
        FusionTick(MeanHead(), LABELS[:2], LABEL_EMB, SCALE, max_age_s=1.0)
    with pytest.raises(ValueError):
        FusionTick(MeanHead(), LABELS, LABEL_EMB, SCALE, max_age_s=1.0, min_modalities=0)


def test_monitor_and_tick_follow_an_unplug_and_a_replug() -> None:
    """Hot-plug targets: excluded within 3 expected periods, back at the first valid message."""
    rate, period = 10.0, 0.1
    mon = AvailabilityMonitor([SensorConfig("cam", "image", "/cam", rate),
                               SensorConfig("ir", "thermal", "/ir", rate)], now_s=0.0)
    store = LatestEmbeddings()
    tick, _ = make_tick(max_age_s=1.0)

    def publish(name: str, modality: str, t: float, emb: int) -> None:
        if mon.on_sample(name, t, t):
            store.put(slot(name, modality, t, emb), now_s=t)

    def fuse_at(t: float) -> FusionResult:
        result = tick(store, mon.fusable(t, tick.max_age_s), t)
        mon.set_in_fusion(result.sensors)
        return result

    for k in range(10):
        publish("cam", "image", k * period, 0)
        publish("ir", "thermal", k * period + 0.01, 1)
    assert fuse_at(0.95).sensors == ("cam", "ir")
    for k in range(10, 20):  # cam unplugged after its sample at 0.9
        publish("ir", "thermal", k * period + 0.01, 1)
        if k * period + 0.01 >= 0.9 + 3 * period:
            assert fuse_at(k * period + 0.01).sensors == ("ir",)
    assert [h.in_fusion for h in mon.health(1.95)] == [False, True]
    publish("cam", "image", 2.0, 0)  # replug
    assert fuse_at(2.0).sensors == ("cam", "ir")


def test_store_and_tick_under_threads() -> None:
    store = LatestEmbeddings()
    tick, _ = make_tick(max_age_s=1e9)
    sensors = [("cam", "image"), ("ir", "thermal"), ("mic", "audio"), ("lidar", "point_cloud")]
    stop = threading.Event()
    errors: list[BaseException] = []

    def producer(name: str, modality: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        k = 0
        try:
            while not stop.is_set() and k < 5000:
                store.put(slot(name, modality, float(k), rng.standard_normal(D).astype("f4")))
                k += 1
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(n, m, i))
               for i, (n, m) in enumerate(sensors)]
    for t in threads:
        t.start()
    stamps: dict[str, float] = {}
    try:
        for _ in range(200):
            result = tick(store, [n for n, _ in sensors], now_s=1e4)
            for p in result.per_modality:
                assert p.stamp_s >= stamps.get(p.sensor, -1.0)  # never goes back in time
                stamps[p.sensor] = p.stamp_s
            assert len(result.sensors) == len(set(result.sensors))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert {s.stamp_s for s in store.snapshot().values()} <= set(map(float, range(5000)))


# ---------------------------------------------------------------------------------------------
# TickScheduler: when ticks run


def test_scheduler_ticks_on_fresh_embeddings_near_the_rate() -> None:
    from omnibind_ros.core.fusion import TickScheduler

    sched = TickScheduler(10.0)
    ticks = []
    for k in range(100):  # fresh embeddings every 14 ms for 1.4 s
        now = k * 0.014
        if sched.embedding_due(now):
            sched.ticked(now)
            ticks.append(now)
    assert ticks[0] == 0.0
    gaps = np.diff(ticks)  # cooldown 0.8 periods, then the next embedding
    assert gaps.min() >= 0.08 - 1e-9 and gaps.max() < 0.08 + 0.014 + 1e-9
    assert 14 <= len(ticks) <= 17


def test_scheduler_heartbeat_meets_the_deadline_when_evidence_is_late() -> None:
    from omnibind_ros.core.fusion import TickScheduler

    sched = TickScheduler(10.0)
    assert sched.timer_period_s == pytest.approx(0.025)
    sched.ticked(1.0)
    assert not sched.timer_due(1.1)  # evidence may still come
    assert sched.timer_due(1.125)  # past the deadline (1.2 periods), at the next heartbeat
    # no embeddings at all: the quarter-period timer keeps 8 Hz of "no answer"
    fired, t = [], 1.0
    for k in range(1, 81):
        t = 1.0 + 0.025 * k
        if sched.timer_due(t):
            sched.ticked(t)
            fired.append(t)
    assert len(fired) == 16 and np.allclose(np.diff(fired), 0.125)


def test_scheduler_only_the_freshest_embedding_starts_a_tick() -> None:
    from omnibind_ros.core.fusion import TickScheduler

    sched = TickScheduler(10.0)
    sched.ticked(0.0)
    assert not sched.embedding_due(0.09, freshest=False)  # an old-stamped event packet waits
    assert sched.embedding_due(0.09, freshest=True)
    assert TickScheduler(0.0).embedding_due(0.0, freshest=False)  # rate 0: every embedding


def test_scheduler_sensor_set_changes_tick_at_once_but_bounded() -> None:
    from omnibind_ros.core.fusion import TickScheduler

    sched = TickScheduler(10.0)
    sched.ticked(1.0)
    assert not sched.embedding_due(1.01, joins=True)  # within MIN_GAP (25 ms): no burst...
    assert not sched.timer_due(1.02)
    assert sched.timer_due(1.025)  # ... but the next heartbeat after the gap answers it
    sched.ticked(1.025)
    assert not sched.timer_due(1.05)  # and only once
    sched.ticked(1.0)
    assert sched.embedding_due(1.03, joins=True, freshest=False)  # a replugged sensor
    assert not sched.change_due(1.01)
    assert sched.change_due(1.03)  # a fused sensor left
    timer_only = TickScheduler(10.0, on_embedding=False)
    assert not timer_only.embedding_due(1.5, joins=True)
    assert not timer_only.change_due(1.5)


def test_scheduler_timer_only_and_unthrottled_modes() -> None:
    from omnibind_ros.core.fusion import TickScheduler

    timer_only = TickScheduler(10.0, on_embedding=False)
    assert timer_only.timer_period_s == pytest.approx(0.1)
    assert not timer_only.embedding_due(0.0) and timer_only.timer_due(0.0)
    timer_only.ticked(0.0)
    assert timer_only.timer_due(0.01)  # the timer decides its own period
    every = TickScheduler(0.0, on_embedding=False)  # rate 0: every embedding, no timer
    assert every.embedding_due(0.0) and not every.uses_timer and not every.timer_due(0.0)
    assert every.timer_period_s == 0.0
    every.ticked(0.0)
    assert every.embedding_due(0.0001)
    with pytest.raises(ValueError):
        TickScheduler(-1.0)


def test_scheduler_survives_a_clock_jump_back() -> None:
    from omnibind_ros.core.fusion import TickScheduler

    sched = TickScheduler(10.0)
    sched.ticked(100.0)
    assert sched.embedding_due(5.0)  # looping bag: the old tick time does not block
    assert sched.timer_due(5.0)
