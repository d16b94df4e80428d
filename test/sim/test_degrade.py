"""Sensor degradations (omnibind_ros.sim.degrade): the registry, identity at severity 0,
determinism, payloads the runtime's preprocessing accepts, and an effect that grows with
severity, measured per kind with a statistic of what the physics changes."""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnibind_ros.core.preprocess import build_preprocessor
from omnibind_ros.core.types import AudioBlock, EventPacket, TactileFrame, ThermalFrame
from omnibind_ros.sim.degrade import DEGRADATIONS, PAYLOAD_FIELDS, apply, kinds
from omnibind_ros.sim.degrade.tactile import imprint
from omnibind_ros.sim.degrade.thermal import to_kelvin, upper_limit_k
from omnibind_ros.sim.types import Sample
from omnibind_ros.sim.world import World

EXPECTED_KINDS = {
    "image": {"dark", "glare", "motion_blur", "occlusion", "lens_dirt"},
    "thermal": {"hot_saturation", "reflection", "nuc_drift"},
    "event": {"flicker", "hot_pixels", "no_motion"},
    "tactile": {"partial_contact", "no_contact", "slip"},
    "audio": {"wind", "clipping", "dropout"},
    "point_cloud": {"rain", "occlusion", "sparse"},
}
ALL_KINDS = [(m, k) for m, ks in EXPECTED_KINDS.items() for k in sorted(ks)]
PAYLOAD_TYPE = {"image": np.ndarray, "thermal": ThermalFrame, "event": EventPacket,
                "tactile": TactileFrame, "audio": AudioBlock, "point_cloud": np.ndarray}


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    world = World()
    return [world.sample(seed) for seed in (0, 1)]


def payload(sample: Sample, modality: str) -> Any:
    return getattr(sample, PAYLOAD_FIELDS[modality])


def degrade(modality: str, kind: str, clean: Any, severity: float, seed: int = 0) -> Any:
    return apply(modality, kind, clean, severity, np.random.default_rng(seed), window_s=0.05)


def arrays(modality: str, value: Any) -> list[np.ndarray]:
    """Every array of a payload (to compare payloads and check dtypes)."""
    if modality == "thermal":
        return [value.data]
    if modality == "event":
        return [value.x, value.y, value.t_ns, value.polarity]
    if modality == "tactile":
        return [value.image] + ([] if value.reference is None else [value.reference])
    if modality == "audio":
        return [value.samples]
    return [value]


def preprocess(modality: str, value: Any) -> np.ndarray:
    """The runtime's preprocessing, a fresh preprocessor per payload as training does."""
    pre = build_preprocessor(modality)
    if modality == "audio":
        pre.push(value)
        return pre.features(check=False)
    return pre(value)


def test_registry_has_every_kind_of_the_issue() -> None:
    assert {m: set(t) for m, t in DEGRADATIONS.items()} == EXPECTED_KINDS
    assert set(kinds("audio")) == EXPECTED_KINDS["audio"]
    with pytest.raises(ValueError, match="no degradations for modality 'text'"):
        kinds("text")
    with pytest.raises(ValueError, match="unknown degradation 'fog' for image; known: dark"):
        apply("image", "fog", np.zeros((4, 4, 3), np.uint8), 0.5, np.random.default_rng(0))
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="severity must be a number in"):
            apply("image", "dark", np.zeros((4, 4, 3), np.uint8), bad, np.random.default_rng(0))


@pytest.mark.parametrize(("modality", "kind"), ALL_KINDS)
def test_severity_zero_returns_the_input_unchanged(samples: list[Sample], modality: str,
                                                   kind: str) -> None:
    clean = payload(samples[0], modality)
    assert degrade(modality, kind, clean, 0.0) is clean


@pytest.mark.parametrize(("modality", "kind"), ALL_KINDS)
def test_valid_payload_for_the_runtime(samples: list[Sample], modality: str, kind: str) -> None:
    """Type, dtype, shape and encoding kept; the shared preprocessing gives finite inputs;
    deterministic given the generator; the clean payload is not modified in place."""
    for sample in samples:
        clean = payload(sample, modality)
        before = [a.copy() for a in arrays(modality, clean)]
        for severity in (0.35, 1.0):
            out = degrade(modality, kind, clean, severity)
            assert type(out) is PAYLOAD_TYPE[modality]
            for a, b in zip(arrays(modality, out), arrays(modality, clean), strict=True):
                assert a.dtype == b.dtype
                if modality not in ("event", "point_cloud"):
                    assert a.shape == b.shape
            assert not all(np.array_equal(a, b) for a, b in
                           zip(arrays(modality, out), before, strict=True)), "no effect"
            if modality == "thermal":
                assert out.encoding == clean.encoding
            if modality == "event":
                assert (out.width, out.height) == (clean.width, clean.height)
                assert np.all(np.diff(out.t_ns) >= 0) and len(out) > 0
                assert out.x.max() < out.width and out.y.max() < out.height
                assert out.t_ns.min() >= 0 and out.t_ns.max() < 50_000_000
            again = degrade(modality, kind, clean, severity)
            for a, b in zip(arrays(modality, out), arrays(modality, again), strict=True):
                np.testing.assert_array_equal(a, b)
            features = preprocess(modality, out)
            assert np.isfinite(features).all()
        for a, b in zip(arrays(modality, clean), before, strict=True):
            np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------
# One statistic per kind that the physics says must move as severity grows.

def _gradient(image: np.ndarray) -> float:
    gray = image.astype(np.float64).mean(axis=-1)
    return float(np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean())


def _audio(block: AudioBlock) -> np.ndarray:
    return np.asarray(block.samples, dtype=np.float64)


def _snr_db(clean: AudioBlock, out: AudioBlock) -> float:
    noise = _audio(out) - _audio(clean)
    return float(10 * np.log10(np.mean(_audio(clean) ** 2) / max(np.mean(noise ** 2), 1e-20)))


def _range(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[:, :3], axis=1).mean())


def _contact_area(frame: TactileFrame) -> float:
    return float((np.abs(imprint(frame)).mean(axis=-1) > 6.0).mean())


def _column_pattern(clean: ThermalFrame, out: ThermalFrame) -> float:
    return float((to_kelvin(out) - to_kelvin(clean)).mean(axis=0).std())


#: (modality, kind) -> (statistic(clean, degraded), +1 if it must rise with severity, -1 fall).
STATISTICS: dict[tuple[str, str], tuple[Callable[[Any, Any], float], int]] = {
    ("image", "dark"): (lambda c, o: float(o.mean()), -1),
    ("image", "glare"): (lambda c, o: float((o == 255).any(axis=-1).mean()), +1),
    ("image", "motion_blur"): (lambda c, o: _gradient(o), -1),
    ("image", "occlusion"): (lambda c, o: float((np.abs(o.astype(int) - c).max(-1) > 12).mean()),
                             +1),
    ("image", "lens_dirt"): (lambda c, o: float(o.astype(np.float64).std()), -1),
    ("thermal", "hot_saturation"): (
        lambda c, o: float((to_kelvin(o) >= upper_limit_k(o) - 0.01).mean()), +1),
    ("thermal", "reflection"): (lambda c, o: float(to_kelvin(o).mean()), +1),
    ("thermal", "nuc_drift"): (_column_pattern, +1),
    ("event", "flicker"): (lambda c, o: float(len(o)), +1),
    ("event", "hot_pixels"): (
        lambda c, o: float(np.bincount(o.y.astype(int) * o.width + o.x).max()), +1),
    ("event", "no_motion"): (lambda c, o: float(len(o)), -1),
    ("tactile", "partial_contact"): (lambda c, o: _contact_area(o), -1),
    ("tactile", "no_contact"): (lambda c, o: float(np.abs(imprint(o)).mean()), -1),
    ("tactile", "slip"): (lambda c, o: _gradient(imprint(o)), -1),
    ("audio", "wind"): (_snr_db, -1),
    ("audio", "clipping"): (lambda c, o: float((np.abs(_audio(o)) >= 0.999).mean()), +1),
    ("audio", "dropout"): (lambda c, o: float((_audio(o) == 0).mean()), +1),
    ("point_cloud", "rain"): (lambda c, o: _range(o), -1),
    ("point_cloud", "occlusion"): (lambda c, o: _range(o), -1),
    ("point_cloud", "sparse"): (lambda c, o: float(len(o)), -1),
}


def test_every_kind_has_a_statistic() -> None:
    assert set(STATISTICS) == set(ALL_KINDS)


@pytest.mark.parametrize(("modality", "kind"), ALL_KINDS)
def test_effect_grows_with_severity(samples: list[Sample], modality: str, kind: str) -> None:
    statistic, sign = STATISTICS[(modality, kind)]
    levels = (0.0, 0.3, 0.65, 1.0)
    means = []
    for severity in levels:
        values = [statistic(payload(s, modality),
                            degrade(modality, kind, payload(s, modality), severity, seed))
                  for s in samples for seed in (0, 1)]
        means.append(float(np.mean(values)))
    steps = sign * np.diff(means)
    assert np.all(steps > 0), f"{modality}/{kind}: {dict(zip(levels, means, strict=True))}"


def test_physical_magnitudes(samples: list[Sample]) -> None:
    """The constants the docstrings promise, measured."""
    image, audio = samples[0].image, samples[0].audio
    for severity in (0.25, 0.5, 0.9):  # the occluder covers a fraction = severity
        out = degrade("image", "occlusion", image, severity)
        covered = float((np.abs(out.astype(int) - image).max(-1) > 12).mean())
        assert covered == pytest.approx(severity, abs=0.12)
    # Wind: the SNR falls from ~20 dB to ~-10 dB across the severity range.
    assert _snr_db(audio, degrade("audio", "wind", audio, 1e-6)) == pytest.approx(20, abs=1.5)
    assert _snr_db(audio, degrade("audio", "wind", audio, 1.0)) == pytest.approx(-10, abs=1.5)
    events = samples[0].events
    assert len(degrade("event", "no_motion", events, 1.0)) < 0.02 * len(events)
    assert len(degrade("event", "flicker", events, 1.0)) > 5 * len(events)
    points = samples[0].points
    kept = [len(degrade("point_cloud", "sparse", points, 1.0, seed)) for seed in range(3)]
    assert 0.08 * len(points) < np.mean(kept) < 0.3 * len(points)
    assert (degrade("image", "dark", image, 1.0).mean()) < 0.35 * image.mean()


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1", "mono8"])
def test_thermal_encodings(samples: list[Sample], encoding: str) -> None:
    kelvin = to_kelvin(samples[0].thermal)
    if encoding == "32FC1":
        frame = ThermalFrame((kelvin - 273.15).astype(np.float32), "32FC1")
    elif encoding == "mono8":
        frame = ThermalFrame(np.clip(kelvin - kelvin.min() + 20, 0, 255).astype(np.uint8),
                             "mono8")
    else:
        frame = dataclasses.replace(samples[0].thermal, encoding="16UC1")
    for kind in EXPECTED_KINDS["thermal"]:
        out = degrade("thermal", kind, frame, 0.8)
        assert out.encoding == encoding and out.data.dtype == frame.data.dtype
        assert np.isfinite(preprocess("thermal", out)).all()


def test_audio_int16_and_stereo(samples: list[Sample]) -> None:
    mono = samples[0].audio.samples
    stereo = AudioBlock(np.round(np.stack([mono, 0.5 * mono], axis=1) * 32767).astype(np.int16),
                        samples[0].audio.sample_rate)
    for kind in EXPECTED_KINDS["audio"]:
        out = degrade("audio", kind, stereo, 0.7)
        assert out.samples.dtype == np.int16 and out.samples.shape == stereo.samples.shape
        assert np.isfinite(preprocess("audio", out)).all()


def test_tactile_without_reference(samples: list[Sample]) -> None:
    frame = TactileFrame(samples[0].tactile.image)
    out = degrade("tactile", "no_contact", frame, 1.0)
    assert out.reference is None and out.image.dtype == np.uint8
    assert out.image.std() < frame.image.std()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(ALL_KINDS), severity=st.floats(0.0, 1.0),
       seed=st.integers(0, 2 ** 32 - 1))
def test_property_any_severity_and_seed(kind: tuple[str, str], severity: float,
                                        seed: int) -> None:
    modality, name = kind
    clean = payload(_property_sample(), modality)
    out = degrade(modality, name, clean, severity, seed)
    again = degrade(modality, name, clean, severity, seed)
    assert type(out) is type(clean)
    for a, b, c in zip(arrays(modality, out), arrays(modality, again), arrays(modality, clean),
                       strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == c.dtype
    if modality == "event":
        assert len(out) > 0 and np.all(np.diff(out.t_ns) >= 0)
    assert np.isfinite(preprocess(modality, out)).all()


@functools.cache
def _property_sample() -> Sample:
    return World().sample(3)
