"""Per-modality preprocessing, shared unchanged by training data sets and the ROS runtime.

Each modality has a module (named by :attr:`ModalitySpec.preprocess_id`) with a frozen
``<Modality>PreprocessConfig`` dataclass (stored in ``bundle.yaml`` through ``to_dict`` /
``from_dict``) and a callable preprocessor mapping the raw payload of
:mod:`omnibind_ros.core.types` to the model input:

============  ==========================  ====================================================
modality      payload                     output
============  ==========================  ====================================================
image         uint8/uint16 HxW[xC] array  float32 [3, size, size]
thermal       ThermalFrame                float32 [3, size, size]
event         EventPacket                 float32 [3, size, size] (ON, OFF, ON - OFF)
tactile       TactileFrame                float32 [3, size, size] (signed difference)
audio         AudioBlock (streaming)      float32 [1, n_mels, n_frames] log-mel
point_cloud   float [N, >=3] array        float32 [num_points, 3] on the unit sphere
text          str                         normalised str (the model tokenizes)
============  ==========================  ====================================================

Bad input raises a subclass of :class:`omnibind_ros.core.errors.PreprocessError`.

Only numpy and the standard library are imported here; OpenCV, SciPy, librosa and soxr are
imported inside the functions that use them, so importing this package is cheap.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from omnibind_ros.core.errors import PreprocessConfigError
from omnibind_ros.core.modalities import MODALITY_SPECS, Modality, parse_modality
from omnibind_ros.core.preprocess.audio import AudioPreprocessConfig, AudioPreprocessor
from omnibind_ros.core.preprocess.event import EventPreprocessConfig, EventPreprocessor
from omnibind_ros.core.preprocess.image import ImagePreprocessConfig, ImagePreprocessor
from omnibind_ros.core.preprocess.point_cloud import (
    PointCloudPreprocessConfig,
    PointCloudPreprocessor,
)
from omnibind_ros.core.preprocess.tactile import TactilePreprocessConfig, TactilePreprocessor
from omnibind_ros.core.preprocess.text import TextPreprocessConfig, TextPreprocessor
from omnibind_ros.core.preprocess.thermal import ThermalPreprocessConfig, ThermalPreprocessor

__all__ = [
    "AudioPreprocessConfig", "AudioPreprocessor", "EventPreprocessConfig", "EventPreprocessor",
    "ImagePreprocessConfig", "ImagePreprocessor", "PointCloudPreprocessConfig",
    "PointCloudPreprocessor", "Preprocessor", "PreprocessorEntry", "REGISTRY",
    "TactilePreprocessConfig", "TactilePreprocessor", "TextPreprocessConfig",
    "TextPreprocessor", "ThermalPreprocessConfig", "ThermalPreprocessor", "build_config",
    "build_preprocessor", "default_configs",
]


@runtime_checkable
class Preprocessor(Protocol):
    """What the bundle and the nodes need from a preprocessor.

    ``output_shape`` is the shape of one model input (no batch axis); None for text, whose
    output is a normalised string. ``__call__`` may take modality-specific keyword arguments
    (e.g. ``channel_order`` for images).
    """

    config: Any

    @property
    def output_shape(self) -> tuple[int, ...] | None: ...

    def __call__(self, payload: Any) -> Any: ...


class PreprocessorEntry:
    """A registry entry: the config type and the preprocessor type of one preprocess id."""

    def __init__(self, config_type: type, preprocessor_type: type) -> None:
        self.config_type = config_type
        self.preprocessor_type = preprocessor_type


#: preprocess_id (see :data:`omnibind_ros.core.modalities.MODALITY_SPECS`) -> entry.
REGISTRY: dict[str, PreprocessorEntry] = {
    "image": PreprocessorEntry(ImagePreprocessConfig, ImagePreprocessor),
    "text": PreprocessorEntry(TextPreprocessConfig, TextPreprocessor),
    "thermal": PreprocessorEntry(ThermalPreprocessConfig, ThermalPreprocessor),
    "event": PreprocessorEntry(EventPreprocessConfig, EventPreprocessor),
    "tactile": PreprocessorEntry(TactilePreprocessConfig, TactilePreprocessor),
    "audio": PreprocessorEntry(AudioPreprocessConfig, AudioPreprocessor),
    "point_cloud": PreprocessorEntry(PointCloudPreprocessConfig, PointCloudPreprocessor),
}


def _entry(modality: str | Modality) -> PreprocessorEntry:
    return REGISTRY[MODALITY_SPECS[parse_modality(modality)].preprocess_id]


def build_config(modality: str | Modality, config: Mapping[str, Any] | Any | None = None
                 ) -> Any:
    """Return the modality's config from a dict (e.g. a ``bundle.yaml`` section).

    Parameters
    ----------
    modality : modality name or :class:`Modality`.
    config : a mapping of config fields (missing ones take their defaults), an instance of the
        modality's config class (returned as is), or None for the defaults.

    Raises
    ------
    ValueError
        Unknown modality.
    PreprocessConfigError
        Unknown keys, invalid values, or a config object of another modality.
    """
    entry = _entry(modality)
    if isinstance(config, entry.config_type):
        return config
    if config is not None and not isinstance(config, Mapping):
        raise PreprocessConfigError(
            f"config for {parse_modality(modality).value} must be a mapping or "
            f"{entry.config_type.__name__}, got {type(config).__name__}")
    return entry.config_type.from_dict(config)


def build_preprocessor(modality: str | Modality,
                       config: Mapping[str, Any] | Any | None = None) -> Preprocessor:
    """Build a fresh preprocessor for ``modality`` from its config (see :func:`build_config`).

    Stateful preprocessors (audio, tactile) start empty; build one per sensor stream.
    """
    return _entry(modality).preprocessor_type(build_config(modality, config))


def default_configs() -> dict[str, dict[str, Any]]:
    """Return every modality's default config as plain dicts, keyed by modality name."""
    return {m.value: _entry(m).config_type().to_dict() for m in Modality}
