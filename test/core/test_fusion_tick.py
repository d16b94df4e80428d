"""Fusion-tick logic: token selection, classification, results, the store under threads, and
the tick schedule.

The fusion head is injected, so these tests use a plain mean of the live tokens (the AF head's
shape contract without its weights) and count the calls. Times are ints of nanoseconds
(``ns(9.95)`` is 9.95 s); the ages and max ages people configure are float s."""
from __future__ import annotations

import math
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
from omnibind_ros.core.schedule import TickScheduler

D = 4
LABELS = ("mug", "ball", "box")
# Label embeddings along the first three axes: a token equal to e_i is "LABELS[i]".
LABEL_EMB = np.eye(3, D, dtype=np.float32)
SCALE = 10.0
SEC = 1_000_000_000  # ns per s


def ns(seconds: float) -> int:
    """``seconds`` as an int of nanoseconds."""
    return round(seconds * SEC)


def unit(i: int, d: int = D) -> np.ndarray:
    v = np.zeros(d, dtype=np.float32)
    v[i] = 1.0
    return v


def slot(sensor: str, modality: str, stamp: int, emb: np.ndarray | int = 0,
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
    s = slot("cam", "image", ns(1.0), buf)
    buf[:] = 7.0  # a backend reusing its output buffer
    np.testing.assert_array_equal(s.embedding, unit(1))
    assert not s.embedding.flags.writeable and s.dim == D


@pytest.mark.parametrize("kw", [
    {"emb": np.array([1.0, np.nan, 0.0, 0.0])}, {"emb": np.ones((2, 2))}, {"emb": np.ones(0)},
    {"quality": 1.5}, {"modality": "sonar"},
])
def test_slot_rejects_bad_input(kw: dict) -> None:
    args = {"sensor": "cam", "modality": "image", "stamp": ns(1.0), "emb": 0, "quality": 1.0}
    args.update(kw)
    with pytest.raises(ValueError):
        slot(**args)


@pytest.mark.parametrize("stamp", [1.0, 1e9, float("inf"), math.nan, np.float64(1.0), True,
                                   "1000000000"], ids=repr)
def test_slot_stamp_must_be_an_int_of_nanoseconds(stamp) -> None:
    with pytest.raises(TypeError, match="stamp_ns must be an int of nanoseconds"):
        slot("cam", "image", stamp)


def test_slot_stamp_is_a_plain_int_even_from_numpy() -> None:
    s = slot("cam", "image", np.int64(ns(9.95)))
    assert s.stamp_ns == 9_950_000_000 and type(s.stamp_ns) is int


def test_store_keeps_only_the_newest_per_sensor() -> None:
    store = LatestEmbeddings()
    assert store.put(slot("cam", "image", ns(2.0), 0))
    assert not store.put(slot("cam", "image", ns(1.0), 1))  # an encoder finishing late
    assert not store.put(slot("cam", "image", ns(2.0), 1))
    assert store.get("cam").stamp_ns == ns(2.0) and "cam" in store and len(store) == 1
    assert store.put(slot("cam", "image", ns(2.0) + 1, 1))  # newer by 1 ns is newer
    assert store.put(slot("cam", "image", ns(3.0), 1))
    snap = store.snapshot()
    store.remove("cam")
    assert snap["cam"].stamp_ns == ns(3.0) and store.get("cam") is None  # snapshot is a copy
    assert store.remove("cam") is None


def test_store_accepts_older_slots_after_the_clock_was_rewound() -> None:
    store = LatestEmbeddings()
    store.put(slot("cam", "image", ns(50.0)))
    assert not store.put(slot("cam", "image", ns(1.0)), now_ns=ns(49.9))  # same timeline: older
    assert store.put(slot("cam", "image", ns(1.0)), now_ns=ns(1.01))  # looping bag: "future"
    store.clear()
    assert len(store) == 0


def test_store_rewind_boundary_is_exact() -> None:
    """A stored stamp exactly ``future_tolerance_ns`` ahead of now is kept; 1 ns more is not."""
    store = LatestEmbeddings(future_tolerance_ns=ns(0.2))
    store.put(slot("cam", "image", ns(10.2), 0))
    assert not store.put(slot("cam", "image", ns(1.0), 1), now_ns=ns(10.0))
    assert store.get("cam").stamp_ns == ns(10.2)
    assert store.put(slot("cam", "image", ns(1.0), 1), now_ns=ns(10.0) - 1)
    assert store.get("cam").stamp_ns == ns(1.0)
    assert LatestEmbeddings().future_tolerance_ns == 200_000_000  # the default


# ---------------------------------------------------------------------------------------------
# Token selection


def test_select_skips_stale_non_fusable_future_and_low_quality_slots() -> None:
    slots = [slot("cam", "image", ns(9.9)), slot("old_cam", "image", ns(9.0)),
             slot("off_thermal", "thermal", ns(9.95)), slot("future", "audio", ns(10.5)),
             slot("blurred", "tactile", ns(9.95), quality=0.1),
             slot("lidar", "point_cloud", ns(9.8))]
    fusable = ["cam", "old_cam", "future", "blurred", "lidar"]  # off_thermal: DISABLED
    tokens, mask, used = select_tokens(slots, fusable, ns(10.0), max_age_ns=ns(0.5),
                                       min_quality=0.5)
    assert [s.sensor for s in used] == ["cam", "lidar"]
    assert tokens.shape == (1, 2, D) and tokens.dtype == np.float32
    assert mask.tolist() == [[True, True]]


def test_select_age_and_future_boundaries_are_exact() -> None:
    """A slot exactly ``max_age_ns`` old, or exactly ``future_tolerance_ns`` ahead, is used;
    one nanosecond beyond either is not."""
    now, max_age, ahead = ns(10.0), ns(0.5), ns(0.2)
    slots = [slot("at_age", "image", now - max_age),
             slot("past_age", "thermal", now - max_age - 1),
             slot("at_future", "audio", now + ahead),
             slot("past_future", "event", now + ahead + 1)]
    _, _, used = select_tokens(slots, [s.sensor for s in slots], now, max_age,
                               future_tolerance_ns=ahead)
    assert [s.sensor for s in used] == ["at_age", "at_future"]
    _, _, used = select_tokens(slots, [s.sensor for s in slots], now, 0, future_tolerance_ns=0)
    assert used == []
    _, _, used = select_tokens([slot("now", "image", now)], ["now"], now, 0,
                               future_tolerance_ns=0)
    assert [s.sensor for s in used] == ["now"]


def test_two_sensors_of_one_modality_are_two_tokens_in_a_fixed_order() -> None:
    slots = [slot("right_cam", "image", ns(1.0), 1), slot("mic", "audio", ns(1.0), 2),
             slot("left_cam", "image", ns(1.0), 0), slot("ir", "thermal", ns(1.0), 3)]
    names = [s.sensor for s in slots]
    orders = set()
    for perm in ([0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]):
        tokens, _, used = select_tokens([slots[i] for i in perm], names, ns(1.0), ns(0.5))
        orders.add(tuple(s.sensor for s in used))
        np.testing.assert_array_equal(tokens[0], np.stack([s.embedding for s in used]))
    assert orders == {("left_cam", "right_cam", "ir", "mic")}  # registry order, then name


def test_select_accepts_a_mapping_a_store_and_duplicate_sensors() -> None:
    store = LatestEmbeddings()
    store.put(slot("cam", "image", ns(1.0)))
    for source in (store, store.snapshot()):
        assert [s.sensor for s in select_tokens(source, ["cam"], ns(1.0), ns(0.5))[2]] == ["cam"]
    newer = slot("cam", "image", ns(1.2), 1)
    _, _, used = select_tokens([slot("cam", "image", ns(1.0)), newer], ["cam"], ns(1.2), ns(0.5))
    assert used == [newer]


def test_padding_and_max_tokens_keep_modality_diversity() -> None:
    slots = [slot("cam_a", "image", ns(1.00)), slot("cam_b", "image", ns(1.05)),
             slot("cam_c", "image", ns(1.04)), slot("ir", "thermal", ns(0.90))]
    tokens, mask, used = select_tokens(slots, [s.sensor for s in slots], ns(1.1), ns(0.5),
                                       pad_to=3)
    assert [s.sensor for s in used] == ["cam_b", "cam_c", "ir"]  # thermal before a 3rd camera
    assert tokens.shape == (1, 3, D) and mask.all()
    tokens, mask, used = select_tokens(slots[:1], ["cam_a"], ns(1.1), ns(0.5), pad_to=3)
    assert mask.tolist() == [[True, False, False]] and not tokens[0, 1:].any()
    with pytest.raises(ValueError, match="exceeds pad_to"):
        select_tokens(slots, ["cam_a"], ns(1.1), ns(0.5), max_tokens=4, pad_to=3)


def test_select_empty_and_mismatched_dims() -> None:
    tokens, mask, used = select_tokens([], [], 0, ns(0.5), dim=D)
    assert tokens.shape == (1, 0, D) and mask.shape == (1, 0) and used == []
    bad = [slot("cam", "image", ns(1.0)), slot("ir", "thermal", ns(1.0), unit(0, D + 1))]
    with pytest.raises(ValueError, match="different sizes"):
        select_tokens(bad, ["cam", "ir"], ns(1.0), ns(0.5))


@settings(max_examples=50, deadline=None)
@given(specs=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["image", "thermal", "audio"]),
                                st.integers(-ns(2.0), ns(2.0)), st.booleans()), max_size=12),
       max_age=st.integers(0, ns(1.5)), max_tokens=st.none() | st.integers(1, 4))
def test_selection_properties(specs, max_age, max_tokens) -> None:
    now = ns(100.0)
    slots = [slot(f"s{i}", m, now - age) for i, m, age, _ in specs]
    fusable = {f"s{i}" for i, _, _, ok in specs if ok}
    tokens, mask, used = select_tokens(slots, fusable, now, max_age, max_tokens)
    assert {s.sensor for s in used} <= fusable
    assert all(-ns(0.2) <= now - s.stamp_ns <= max_age for s in used)
    assert len({s.sensor for s in used}) == len(used) == int(mask.sum())
    assert max_tokens is None or len(used) <= max_tokens
    if max_tokens is None:  # every fusable sensor whose newest slot is in the window is used
        newest: dict[str, int] = {}
        for s in slots:
            newest[s.sensor] = max(newest.get(s.sensor, s.stamp_ns), s.stamp_ns)
        expected = {n for n, t in newest.items()
                    if n in fusable and -ns(0.2) <= now - t <= max_age}
        assert {s.sensor for s in used} == expected
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
    slots = [slot("left_cam", "image", ns(9.90), 0), slot("right_cam", "image", ns(9.95), 0),
             slot("ir", "thermal", ns(9.80), 1)]
    result = tick(slots, ["left_cam", "right_cam", "ir"], now_ns=ns(10.0))
    assert result.answered and result.no_answer_reason == ""
    assert result.stamp_ns == 9_950_000_000  # the newest input used, not the tick time
    assert result.tick_ns == 10_000_000_000
    assert type(result.stamp_ns) is int and type(result.tick_ns) is int
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
    assert preds["ir"].age_s == 0.2 and preds["ir"].stamp_ns == 9_800_000_000  # age: float s
    assert type(preds["ir"].age_s) is float and preds["right_cam"].age_s == 0.05
    assert preds["ir"].score == pytest.approx(float(classify(unit(1), LABEL_EMB, SCALE, 1)[1][0]))


def test_tick_max_age_is_seconds_converted_once_and_compared_exactly() -> None:
    tick, head = make_tick(max_age_s=0.5)
    assert tick.max_age_s == 0.5 and tick.max_age_ns == 500_000_000
    assert type(tick.max_age_ns) is int
    now = ns(10.0)
    result = tick([slot("cam", "image", now - ns(0.5))], ["cam"], now)
    assert result.sensors == ("cam",) and result.per_modality[0].age_s == 0.5
    result = tick([slot("cam", "image", now - ns(0.5) - 1)], ["cam"], now)
    assert result.sensors == () and "no embedding within max_age_s=0.50 s" in (
        result.no_answer_reason)
    assert len(head.calls) == 1
    assert make_tick(max_age_s=1e-9)[0].max_age_ns == 1


def test_fewer_modalities_than_min_gives_no_answer_and_says_why() -> None:
    tick, head = make_tick(min_modalities=2)
    slots = [slot("left_cam", "image", ns(1.0)), slot("right_cam", "image", ns(1.0))]
    result = tick(slots, ["left_cam", "right_cam"], now_ns=ns(1.0))
    assert not result.answered and head.calls == []  # two cameras are one modality
    assert "1 live modality ['image']" in result.no_answer_reason
    assert "min_modalities is 2" in result.no_answer_reason
    assert (result.best_label, result.best_score, result.sensors, result.top_labels,
            result.per_modality, result.embedding, result.stamp_ns) == ("", 0.0, (), (), (),
                                                                         None, None)
    assert result.tick_ns == ns(1.0)


@pytest.mark.parametrize(("fusable", "reason"), [
    ([], "no sensor is live"), (["cam"], "no embedding within max_age_s"),
])
def test_no_usable_sensor_gives_an_empty_result(fusable: list[str], reason: str) -> None:
    tick, head = make_tick()
    result = tick([slot("cam", "image", 0)], fusable, now_ns=ns(5.0))
    assert reason in result.no_answer_reason and head.calls == []
    assert result == FusionResult(tick_ns=5_000_000_000,
                                  no_answer_reason=result.no_answer_reason)


def test_tick_rejects_a_broken_head_and_bad_setup() -> None:
    tick = FusionTick(lambda t, m: np.full((1, D), np.nan), LABELS, LABEL_EMB, SCALE,
                      max_age_s=1.0)
    with pytest.raises(ValueError, match="non-finite"):
        tick([slot("cam", "image", 0)], ["cam"], 0)
    tick = FusionTick(lambda t, m: np.ones((2, D)), LABELS, LABEL_EMB, SCALE, max_age_s=1.0)
    with pytest.raises(ValueError, match="shape"):
        tick([slot("cam", "image", 0)], ["cam"], 0)
    with pytest.raises(ValueError, match="label names"):
        FusionTick(MeanHead(), LABELS[:2], LABEL_EMB, SCALE, max_age_s=1.0)
    with pytest.raises(ValueError):
        FusionTick(MeanHead(), LABELS, LABEL_EMB, SCALE, max_age_s=1.0, min_modalities=0)


def test_monitor_and_tick_follow_an_unplug_and_a_replug() -> None:
    """Hot-plug targets: excluded within 3 expected periods, back at the first valid message."""
    rate, period = 10.0, ns(0.1)
    mon = AvailabilityMonitor([SensorConfig("cam", "image", "/cam", rate),
                               SensorConfig("ir", "thermal", "/ir", rate)], now_ns=0)
    store = LatestEmbeddings()
    tick, _ = make_tick(max_age_s=1.0)

    def publish(name: str, modality: str, t: int, emb: int) -> None:
        if mon.on_sample(name, t, t):
            store.put(slot(name, modality, t, emb), now_ns=t)

    def fuse_at(t: int) -> FusionResult:
        result = tick(store, mon.fusable(t, tick.max_age_ns), t)
        mon.set_in_fusion(result.sensors)
        return result

    for k in range(10):
        publish("cam", "image", k * period, 0)
        publish("ir", "thermal", k * period + ns(0.01), 1)
    assert fuse_at(ns(0.95)).sensors == ("cam", "ir")
    for k in range(10, 20):  # cam unplugged after its sample at 0.9 s
        publish("ir", "thermal", k * period + ns(0.01), 1)
        if k * period + ns(0.01) >= ns(0.9) + 3 * period:
            assert fuse_at(k * period + ns(0.01)).sensors == ("ir",)
    assert [h.in_fusion for h in mon.health(ns(1.95))] == [False, True]
    publish("cam", "image", ns(2.0), 0)  # replug
    assert fuse_at(ns(2.0)).sensors == ("cam", "ir")


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
                store.put(slot(name, modality, k * SEC, rng.standard_normal(D).astype("f4")))
                k += 1
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(n, m, i))
               for i, (n, m) in enumerate(sensors)]
    for t in threads:
        t.start()
    stamps: dict[str, int] = {}
    try:
        for _ in range(200):
            result = tick(store, [n for n, _ in sensors], now_ns=ns(1e4))
            for p in result.per_modality:
                assert p.stamp_ns >= stamps.get(p.sensor, -1)  # never goes back in time
                stamps[p.sensor] = p.stamp_ns
            assert len(result.sensors) == len(set(result.sensors))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert {s.stamp_ns for s in store.snapshot().values()} <= {k * SEC for k in range(5000)}


# ---------------------------------------------------------------------------------------------
# TickScheduler: when ticks run (10 Hz: period 100 ms, cooldown 80 ms, deadline 120 ms,
# min gap 25 ms, heartbeat every 25 ms)

MS = 1_000_000  # ns per ms


def test_scheduler_periods_are_ints_of_nanoseconds() -> None:
    sched = TickScheduler(10.0)
    assert (sched.period_ns, sched.timer_period_ns) == (100 * MS, 25 * MS)
    assert type(sched.period_ns) is int and type(sched.timer_period_ns) is int
    assert TickScheduler(3.0).period_ns == 333_333_333  # rounded to the nanosecond
    assert TickScheduler(10.0, on_embedding=False).timer_period_ns == 100 * MS
    assert TickScheduler(0.0).period_ns == 0 and TickScheduler(0.0).timer_period_ns == 0


def test_scheduler_ticks_on_fresh_embeddings_near_the_rate() -> None:
    sched = TickScheduler(10.0)
    ticks = []
    for k in range(100):  # fresh embeddings every 14 ms for 1.4 s
        now = k * 14 * MS
        if sched.embedding_due(now):
            sched.ticked(now)
            ticks.append(now)
    assert ticks[0] == 0
    gaps = np.diff(ticks)  # cooldown 0.8 periods, then the next embedding...
    assert gaps.min() >= 80 * MS
    # ... until 4 ticks fill a 4-period window: the fifth waits for the first to leave it
    assert gaps.tolist()[:4] == [84 * MS, 84 * MS, 84 * MS, 154 * MS]
    assert all(later - first >= 400 * MS for first, later in zip(ticks, ticks[4:], strict=False))
    assert 13 <= len(ticks) <= 15  # 10 Hz over 1.4 s, not the 17 of an 84 ms cadence


def test_scheduler_cooldown_boundary_is_exact() -> None:
    sched = TickScheduler(10.0)
    sched.ticked(ns(1.0))
    assert not sched.embedding_due(ns(1.0) + 80 * MS - 1)
    assert sched.embedding_due(ns(1.0) + 80 * MS)
    odd = TickScheduler(3.0)  # cooldown round(0.8 * 333_333_333) = 266_666_666 ns
    odd.ticked(0)
    assert not odd.embedding_due(266_666_665) and odd.embedding_due(266_666_666)


def test_scheduler_heartbeat_meets_the_deadline_when_evidence_is_late() -> None:
    sched = TickScheduler(10.0)
    assert sched.timer_period_ns == 25 * MS
    sched.ticked(ns(1.0))
    assert not sched.timer_due(ns(1.1))  # evidence may still come
    assert sched.timer_due(ns(1.125))  # past the deadline (1.2 periods), at the next heartbeat
    # no embeddings at all: the quarter-period timer keeps 8 Hz of "no answer"
    fired = []
    for k in range(1, 81):
        t = ns(1.0) + 25 * MS * k
        if sched.timer_due(t):
            sched.ticked(t)
            fired.append(t)
    assert len(fired) == 16 and set(np.diff(fired).tolist()) == {125 * MS}


def test_scheduler_deadline_boundary_is_exact() -> None:
    sched = TickScheduler(10.0)
    sched.ticked(ns(1.0))
    assert not sched.timer_due(ns(1.0) + 120 * MS - 1)
    assert sched.timer_due(ns(1.0) + 120 * MS)


def test_scheduler_only_the_freshest_embedding_starts_a_tick() -> None:
    sched = TickScheduler(10.0)
    sched.ticked(0)
    assert not sched.embedding_due(90 * MS, freshest=False)  # an old-stamped event packet waits
    assert sched.embedding_due(90 * MS, freshest=True)
    assert TickScheduler(0.0).embedding_due(0, freshest=False)  # rate 0: every embedding


def test_scheduler_sensor_set_changes_tick_at_once_but_bounded() -> None:
    sched = TickScheduler(10.0)
    sched.ticked(ns(1.0))
    assert not sched.embedding_due(ns(1.01), joins=True)  # within MIN_GAP (25 ms): no burst...
    assert not sched.timer_due(ns(1.02))
    assert sched.timer_due(ns(1.025))  # ... but the next heartbeat after the gap answers it
    sched.ticked(ns(1.025))
    assert not sched.timer_due(ns(1.05))  # and only once
    sched.ticked(ns(1.0))
    assert sched.embedding_due(ns(1.03), joins=True, freshest=False)  # a replugged sensor
    assert not sched.change_due(ns(1.01))
    assert sched.change_due(ns(1.03))  # a fused sensor left
    timer_only = TickScheduler(10.0, on_embedding=False)
    assert not timer_only.embedding_due(ns(1.5), joins=True)
    assert not timer_only.change_due(ns(1.5))


def test_scheduler_min_gap_boundary_is_exact() -> None:
    t0 = ns(1.0)
    for due in ("join", "change"):
        sched = TickScheduler(10.0)
        sched.ticked(t0)
        early = (sched.embedding_due(t0 + 25 * MS - 1, joins=True, freshest=False)
                 if due == "join" else sched.change_due(t0 + 25 * MS - 1))
        assert not early and sched.change_pending, due
        assert not sched.timer_due(t0 + 25 * MS - 1), due  # the pending change waits too
        assert sched.timer_due(t0 + 25 * MS), due
        sched = TickScheduler(10.0)
        sched.ticked(t0)
        at_gap = (sched.embedding_due(t0 + 25 * MS, joins=True, freshest=False)
                  if due == "join" else sched.change_due(t0 + 25 * MS))
        assert at_gap and not sched.change_pending, due


def test_scheduler_timer_only_and_unthrottled_modes() -> None:
    timer_only = TickScheduler(10.0, on_embedding=False)
    assert timer_only.timer_period_ns == 100 * MS
    assert not timer_only.embedding_due(0) and timer_only.timer_due(0)
    timer_only.ticked(0)
    assert timer_only.timer_due(10 * MS)  # the timer decides its own period
    every = TickScheduler(0.0, on_embedding=False)  # rate 0: every embedding, no timer
    assert every.embedding_due(0) and not every.uses_timer and not every.timer_due(0)
    assert every.timer_period_ns == 0
    every.ticked(0)
    assert every.embedding_due(100_000)  # 0.1 ms later
    assert every.embedding_due(0)  # even at the same time
    with pytest.raises(ValueError):
        TickScheduler(-1.0)


def test_scheduler_survives_a_clock_jump_back() -> None:
    sched = TickScheduler(10.0)
    sched.ticked(ns(100.0))
    assert sched.last_tick_ns == ns(100.0) and type(sched.last_tick_ns) is int
    assert sched.embedding_due(ns(5.0))  # looping bag: the old tick time does not block
    assert sched.timer_due(ns(5.0))
    assert sched.embedding_due(ns(100.0) - 1)  # any step back counts as a reset
