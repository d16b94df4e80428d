"""INT8 calibration data: simulated sensor samples through the runtime's preprocessing.

The engine builder (:func:`omnibind_ros.core.engines.build_engines`) takes calibration batches
per component; :class:`SimCalibration` supplies them for a bundle's modality encoders from the
simulated world (:class:`omnibind_ros.sim.world.World`), each payload turned into a model
input by the bundle's own preprocessing config through ``core.preprocess``, the way training
(``omnibind_train.data.preprocess.SamplePreprocessor``) and the runtime pipelines do:
stateful preprocessors (audio window, tactile reference) are fresh per sample, and a sample the
preprocessor rejects is skipped.

Samples are drawn lazily, when the builder iterates a component's batches (never when its
calibration cache is reused), and again on every iteration (same seeds, same samples).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from omnibind_ros.core.bundle import ModelBundle
from omnibind_ros.core.errors import PreprocessError
from omnibind_ros.core.preprocess import build_preprocessor

__all__ = ["DEFAULT_CALIB_SAMPLES", "DEFAULT_CALIB_SEED", "PAYLOAD_FIELD", "SimCalibration",
           "model_input", "sim_inputs"]

#: Calibration samples per encoder (TensorRT's guidance for entropy calibration is a few
#: hundred images for ImageNet-scale classifiers; the simulator's classes need far fewer).
DEFAULT_CALIB_SAMPLES = 64
#: First seed of the calibration samples (away from the seeds previews and tests start at).
DEFAULT_CALIB_SEED = 1_000_000
#: Sample attribute holding each modality's raw payload.
PAYLOAD_FIELD: dict[str, str] = {"image": "image", "thermal": "thermal", "event": "events",
                                 "tactile": "tactile", "audio": "audio",
                                 "point_cloud": "points"}
_STATEFUL = frozenset({"audio", "tactile"})


def model_input(modality: str, config: Any, payload: Any, shared: Any | None = None
                ) -> np.ndarray | None:
    """The model input of one payload (None if the preprocessor rejects it).

    ``shared`` is a reusable preprocessor for stateless modalities; audio and tactile get a
    fresh one per payload (an audio window holding only this sound, a tactile frame with its
    own reference).
    """
    try:
        if modality == "audio":
            pre = build_preprocessor("audio", config)
            pre.push(payload)
            return np.asarray(pre.features(check=False), dtype=np.float32)
        pre = shared if shared is not None and modality not in _STATEFUL else (
            build_preprocessor(modality, config))
        return np.asarray(pre(payload), dtype=np.float32)
    except PreprocessError:
        return None


def sim_inputs(bundle: ModelBundle, modality: str, seeds: Iterable[int],
               world: Any | None = None) -> Iterator[np.ndarray]:
    """Model inputs ``[*sample_shape]`` of ``modality`` for simulated samples of ``seeds``."""
    from omnibind_ros.sim.world import World

    if modality not in bundle.modalities:
        raise ValueError(f"bundle {bundle.root} has no {modality!r} encoder")
    if modality not in PAYLOAD_FIELD:
        raise ValueError(f"the simulator has no {modality!r} sensor")
    world = World() if world is None else world
    config = bundle.modalities[modality].preprocess
    shared = None if modality in _STATEFUL else build_preprocessor(modality, config)
    for seed in seeds:
        payload = getattr(world.sample(int(seed), modalities=[modality]),
                          PAYLOAD_FIELD[modality])
        x = model_input(modality, config, payload, shared) if payload is not None else None
        if x is not None:
            yield x


class _Batches:
    """Re-iterable batches of one modality (drawn afresh on every iteration)."""

    def __init__(self, owner: SimCalibration, modality: str) -> None:
        self._owner, self.modality = owner, modality

    def __iter__(self) -> Iterator[np.ndarray]:
        owner = self._owner
        if owner.world is None:
            from omnibind_ros.sim.world import World

            owner.world = World()
        owner.iterations[self.modality] = owner.iterations.get(self.modality, 0) + 1
        seeds = range(owner.seed, owner.seed + owner.samples)
        pending: list[np.ndarray] = []
        for x in sim_inputs(owner.bundle, self.modality, seeds, owner.world):
            owner.drawn += 1
            pending.append(x)
            if len(pending) == owner.batch_size:
                yield np.stack(pending)
                pending = []
        if pending:
            yield np.stack(pending)


class SimCalibration(Mapping[str, Iterable[np.ndarray]]):
    """Calibration batches of a bundle's encoders (``"encoder:<modality>"`` -> batches).

    Parameters
    ----------
    bundle : the loaded bundle (its preprocessing configs are used).
    samples : simulated samples per encoder (seeds ``seed .. seed + samples - 1``).
    batch_size : samples per batch.
    seed : first seed.
    modalities : encoders to calibrate (default every one the simulator has a sensor for).
    world : a :class:`~omnibind_ros.sim.world.World` (default: the default world).

    ``drawn`` counts the samples drawn so far and ``iterations`` the passes per modality.
    """

    def __init__(self, bundle: ModelBundle, *, samples: int = DEFAULT_CALIB_SAMPLES,
                 batch_size: int = 8, seed: int = DEFAULT_CALIB_SEED,
                 modalities: Sequence[str] | None = None, world: Any | None = None) -> None:
        if samples < 1 or batch_size < 1:
            raise ValueError(f"samples and batch_size must be >= 1, got {samples}, "
                             f"{batch_size}")
        self.bundle, self.samples, self.batch_size = bundle, int(samples), int(batch_size)
        self.seed, self.world = int(seed), world
        names = list(bundle.modalities) if modalities is None else list(modalities)
        self.modalities = [m for m in names if m in bundle.modalities and m in PAYLOAD_FIELD]
        self.drawn = 0
        self.iterations: dict[str, int] = {}

    def __getitem__(self, key: str) -> Iterable[np.ndarray]:
        modality = key.split(":", 1)[1] if key.startswith("encoder:") else None
        if modality not in self.modalities:
            raise KeyError(key)
        return _Batches(self, modality)

    def __iter__(self) -> Iterator[str]:
        return (f"encoder:{m}" for m in self.modalities)

    def __len__(self) -> int:
        return len(self.modalities)

