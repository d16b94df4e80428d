"""Registry, config round-trips, the error hierarchy and the import-layer rule of preprocess."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

from omnibind_ros.core import errors
from omnibind_ros.core.errors import PreprocessConfigError, PreprocessError
from omnibind_ros.core.modalities import Modality
from omnibind_ros.core.preprocess import (
    REGISTRY,
    AudioPreprocessConfig,
    EventPreprocessConfig,
    ImagePreprocessConfig,
    PointCloudPreprocessConfig,
    Preprocessor,
    TactilePreprocessConfig,
    TextPreprocessConfig,
    ThermalPreprocessConfig,
    build_config,
    build_preprocessor,
    default_configs,
)
from omnibind_ros.core.types import AudioBlock, EventPacket, TactileFrame, ThermalFrame

# A non-default value per modality, to show that round-trips carry changed fields too.
CHANGED = {
    "image": {"size": 32, "mean": [0.485, 0.456, 0.406], "resize_mode": "stretch"},
    "text": {"prompt_templates": ["a {} on a table"], "lowercase": False},
    "thermal": {"t_min_c": -10.0, "t_max_c": 120.0, "mono8": "reject"},
    "event": {"window": "count", "max_events": 100, "log_scale": True},
    "tactile": {"gain": 2.5, "reference_frames": 3},
    "audio": {"sample_rate": 8000, "n_mels": 40, "fmax": 3000.0},
    "point_cloud": {"num_points": 256, "roi_min": [-1, -1, -1], "cluster_select": "largest"},
}

INVALID = [
    ("image", {"size": 0}), ("image", {"mean": [0.5, 0.5]}), ("image", {"std": [1, 0, 1]}),
    ("image", {"resize_mode": "pad"}), ("image", {"size": "160"}), ("image", {"size": True}),
    ("text", {"prompt_templates": ["no placeholder"]}), ("text", {"prompt_templates": []}),
    ("thermal", {"t_min_c": 40.0, "t_max_c": 20.0}), ("thermal", {"mono8": "maybe"}),
    ("event", {"hot_pixel_k": 0.5}), ("event", {"window": "space"}),
    ("event", {"normalize_percentile": 101}), ("event", {"window_ms": 0}),
    ("tactile", {"gain": 0}), ("tactile", {"clip": "yes"}),
    ("audio", {"fmax": 9000.0}), ("audio", {"window_s": 0.01}), ("audio", {"fmin": 9000.0}),
    ("audio", {"resample_quality": "best"}), ("audio", {"max_clip_fraction": 2.0}),
    ("point_cloud", {"roi_min": [5, 0, 0]}), ("point_cloud", {"up_axis": [0, 0, 0]}),
    ("point_cloud", {"cluster_select": "any"}), ("point_cloud", {"num_points": 0}),
    ("point_cloud", {"ground_max_tilt_deg": float("nan")}),
]


def _payload(modality: str):
    """A small valid payload per modality."""
    rng = np.random.default_rng(0)
    if modality == "image":
        return rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    if modality == "text":
        return " a  Mug "
    if modality == "thermal":
        return ThermalFrame(rng.integers(27000, 33000, (12, 16)).astype(np.uint16), "mono16")
    if modality == "event":
        n = 200
        return EventPacket(rng.integers(0, 16, n).astype(np.uint16),
                           rng.integers(0, 12, n).astype(np.uint16),
                           np.arange(n, dtype=np.int64) * 1000, rng.random(n) > 0.5, 16, 12)
    if modality == "tactile":
        image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        return TactileFrame(image, np.roll(image, 1, axis=0))
    if modality == "audio":
        return AudioBlock((0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)
    blob = rng.normal(0.0, 0.05, (300, 3)) + [1.0, 0.0, 0.0]
    return blob.astype(np.float32)


@pytest.mark.parametrize("modality", [m.value for m in Modality])
def test_config_round_trips_through_dict_and_yaml(modality):
    for config in (build_config(modality), build_config(modality, CHANGED[modality])):
        as_dict = config.to_dict()
        assert type(config).from_dict(as_dict) == config
        assert build_config(modality, yaml.safe_load(yaml.safe_dump(as_dict))) == config
    changed = build_config(modality, CHANGED[modality]).to_dict()
    for key, value in CHANGED[modality].items():
        assert changed[key] == value or changed[key] == pytest.approx(value)


@pytest.mark.parametrize("modality", [m.value for m in Modality])
def test_from_dict_rejects_unknown_keys_naming_them(modality):
    with pytest.raises(PreprocessConfigError, match="sizee") as info:
        build_config(modality, {"sizee": 3})
    assert "valid keys" in str(info.value)


@pytest.mark.parametrize(("modality", "bad"), INVALID)
def test_invalid_config_values_are_rejected(modality, bad):
    with pytest.raises(PreprocessConfigError):
        build_config(modality, bad)


def test_build_config_rejects_non_mappings_and_foreign_configs():
    with pytest.raises(PreprocessConfigError, match="mapping"):
        build_config("image", [("size", 3)])
    with pytest.raises(PreprocessConfigError):
        build_config("image", AudioPreprocessConfig())
    with pytest.raises(PreprocessConfigError, match="mapping"):
        ImagePreprocessConfig.from_dict("size: 3")


def test_unknown_modality_is_a_value_error():
    with pytest.raises(ValueError, match="unknown modality"):
        build_preprocessor("smell", None)


def test_default_configs_cover_every_modality_and_are_yaml_plain():
    configs = default_configs()
    assert set(configs) == {m.value for m in Modality}
    assert yaml.safe_load(yaml.safe_dump(configs)) == configs
    assert configs["image"]["size"] == 160 and configs["image"]["mean"] == [0.5, 0.5, 0.5]
    assert configs["audio"]["sample_rate"] == 16000
    assert set(REGISTRY) == set(configs)


@pytest.mark.parametrize("modality", [m.value for m in Modality])
def test_built_preprocessor_follows_the_protocol_and_its_output_shape(modality):
    pre = build_preprocessor(Modality(modality), CHANGED[modality] if modality != "audio"
                             else {"window_s": 0.5})
    assert isinstance(pre, Preprocessor)
    out = pre(_payload(modality))
    if modality == "text":
        assert out == "a Mug" and pre.output_shape is None  # CHANGED keeps the case
        return
    assert out.shape == pre.output_shape and out.dtype == np.float32
    assert np.all(np.isfinite(out))


def test_build_preprocessor_accepts_a_config_instance():
    config = EventPreprocessConfig(size=8)
    assert build_preprocessor("event", config).config is config
    configs = (ThermalPreprocessConfig, TactilePreprocessConfig, TextPreprocessConfig,
               PointCloudPreprocessConfig)
    for cls in configs:
        assert cls.from_dict(None) == cls()


def test_every_error_is_documented_and_preprocessing_errors_are_value_errors():
    preprocessing = [getattr(errors, n) for n in errors.__all__
                     if issubclass(getattr(errors, n), PreprocessError)]
    assert len(preprocessing) >= 14  # the hierarchy documented in errors.py
    for cls in preprocessing:
        assert issubclass(cls, ValueError)
    for name in errors.__all__:  # bundle/backend errors live here too: documented all the same
        cls = getattr(errors, name)
        assert cls.__doc__ and len(cls.__doc__) > 20, name
    assert issubclass(errors.NoEventsError, errors.EmptyInputError)
    assert issubclass(errors.EmptyRegionError, errors.EmptyInputError)


def test_importing_preprocess_pulls_in_no_torch_rclpy_or_heavy_libraries():
    code = (
        "import sys\n"
        "import omnibind_ros.core.preprocess as p\n"
        "p.build_preprocessor('image', {'size': 4})\n"
        "p.build_preprocessor('point_cloud', None)\n"
        "bad = [m for m in ('torch', 'rclpy', 'cv2', 'open3d', 'librosa', 'soxr', 'scipy')\n"
        "       if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == ""


def test_running_every_preprocessor_still_imports_no_torch_or_rclpy():
    code = (
        "import sys\n"
        "import numpy as np\n"
        "import omnibind_ros.core.preprocess as p\n"
        "from omnibind_ros.core.types import ThermalFrame\n"
        "p.build_preprocessor('image')(np.zeros((8, 8, 3), np.uint8))\n"
        "p.build_preprocessor('thermal')(ThermalFrame(np.zeros((8, 8), np.uint16), 'mono16'))\n"
        "print(','.join(m for m in ('torch', 'rclpy') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == ""
