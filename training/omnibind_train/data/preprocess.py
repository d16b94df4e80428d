"""Core preprocessing of simulator samples, exactly as the runtime does it (the configs are the
ones the bundle will carry), and the training-time augmentation of preprocessed inputs."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from omnibind_ros.core.errors import PreprocessError
from omnibind_ros.core.preprocess import build_config, build_preprocessor, default_configs

#: Sample attribute holding each modality's raw payload.
PAYLOAD_FIELD: dict[str, str] = {"image": "image", "text": "caption", "thermal": "thermal",
                                 "event": "events", "tactile": "tactile", "audio": "audio",
                                 "point_cloud": "points"}
#: Modalities whose runtime preprocessor keeps state (a fresh one per sample here).
STATEFUL = frozenset({"audio", "tactile"})


def resolve_preprocess_configs(trunk_norms: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                               overrides: Mapping[str, Mapping[str, Any]],
                               prompt_templates: Sequence[str] | None = None
                               ) -> dict[str, dict[str, Any]]:
    """Every modality's full preprocessing config as a plain dict (validated by core).

    Parameters
    ----------
    trunk_norms : modality -> (mean, std) the image trunk's weights expect; applied to the
        ``image`` config (the camera feeds the ImageNet trunk directly). Other image-like
        modalities keep their own normalisation (event polarity channels, signed tactile
        differences, radiometric thermal) unless overridden.
    overrides : modality -> user overrides (win over everything).
    prompt_templates : label prompt templates for the text config (default: the simulator's
        :data:`omnibind_ros.sim.text.PROMPT_TEMPLATES`), so the bundle carries the ones used.
    """
    from omnibind_ros.sim.text import PROMPT_TEMPLATES

    configs = default_configs()
    if "image" in trunk_norms:
        mean, std = trunk_norms["image"]
        configs["image"].update(mean=list(mean), std=list(std))
    configs["text"]["prompt_templates"] = list(prompt_templates or PROMPT_TEMPLATES)
    for modality, changes in overrides.items():
        if modality not in configs:
            raise ValueError(f"preprocess override for unknown modality {modality!r}")
        configs[modality].update(changes)
    return {m: build_config(m, c).to_dict() for m, c in configs.items()}


class SamplePreprocessor:
    """Core preprocessing of one modality of simulator samples.

    Stateful runtime preprocessors (audio window, tactile reference) are built fresh for every
    sample, which is what the runtime sees for a just-arrived object: an audio window holding
    only this impact, a tactile frame with its own reference.

    Parameters
    ----------
    modality : modality name.
    config : its preprocessing config (dict).
    """

    def __init__(self, modality: str, config: Mapping[str, Any]) -> None:
        self.modality = modality
        self.config = build_config(modality, dict(config))
        self._shared = None if modality in STATEFUL else build_preprocessor(modality, self.config)

    def __call__(self, sample: Any) -> np.ndarray | str | None:
        """The model input of ``sample``'s payload, or None if absent / not preprocessable."""
        payload = getattr(sample, PAYLOAD_FIELD[self.modality], None)
        if payload is None:
            return None
        try:
            if self.modality == "audio":
                pre = build_preprocessor("audio", self.config)
                pre.push(payload)
                return pre.features(check=False)
            pre = self._shared or build_preprocessor(self.modality, self.config)
            return pre(payload)
        except PreprocessError:
            return None

    def blank(self) -> np.ndarray | str:
        """A placeholder input for invalid samples (zeros of the output shape / a word)."""
        if self.modality == "text":
            return "unknown"
        shape = build_preprocessor(self.modality, self.config).output_shape
        return np.zeros(shape, dtype=np.float32)


def augment_input(x: np.ndarray, modality: str, rng: np.random.Generator) -> np.ndarray:
    """A training-time augmentation of a preprocessed input (wraps, never replaces, it).

    Image-like ``[C, S, S]``: random horizontal flip and a shift of up to S/16 pixels (edge
    padding). Audio ``[1, M, T]``: a time shift of up to T/10 frames (zero fill).
    Point sets are augmented on the fly by the trainer instead (random rotation about the up
    axis), so they are returned unchanged.
    """
    if modality in ("point_cloud", "text"):
        return x
    if modality == "audio":
        t = x.shape[-1]
        shift = int(rng.integers(-(t // 10), t // 10 + 1))
        out = np.zeros_like(x)
        if shift >= 0:
            out[..., shift:] = x[..., :t - shift]
        else:
            out[..., :shift] = x[..., -shift:]
        return out
    if rng.random() < 0.5:
        x = x[..., ::-1]
    s = x.shape[-1]
    pad = max(1, s // 16)
    dy, dx = (int(v) for v in rng.integers(0, 2 * pad + 1, size=2))
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    return np.ascontiguousarray(padded[:, dy:dy + x.shape[-2], dx:dx + s])
