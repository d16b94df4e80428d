"""Degradations in the world and in data sets: clean samples, hashes and fingerprints stay as
they were; degraded ones are drawn from their own stream, recorded, stored and read back."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from omnibind_ros.sim.dataset import (
    DatasetConfig,
    SimDataset,
    code_fingerprint,
    fingerprint_matches,
    flatten_sample,
    generate,
)
from omnibind_ros.sim.dataset.rendering import COMPATIBLE_FINGERPRINTS
from omnibind_ros.sim.degrade import DegradationSpec
from omnibind_ros.sim.world import STREAM_CLASS, STREAM_DEGRADE, World

REPO = Path(__file__).resolve().parents[2]
#: Digests of World().sample(seed) (every modality) rendered by the simulator code of
#: fingerprint 16659ef9996836cf, before degradations existed (see COMPATIBLE_FINGERPRINTS).
GOLDEN = {0: "cd213a580d9a7a52", 1: "fba1083490af6152", 7: "80b32223b38e7deb"}
#: Content hashes of the shipped clean data set configs before degradations existed.
CLEAN_HASHES = {"sim_dataset.yaml": "c39adb48ffea595e",
                "sim_dataset_tiny.yaml": "8114b395d1a1723e"}
EVERYTHING = {m: {"probability": 1.0} for m in
              ("image", "thermal", "event", "tactile", "audio", "point_cloud")}


def digest(sample) -> str:
    h = hashlib.sha256()
    for key, value in sorted(flatten_sample(sample).items()):
        h.update(key.encode())
        h.update(value.tobytes() if isinstance(value, np.ndarray) else str(value).encode())
    return h.hexdigest()[:16]


def test_default_samples_unchanged() -> None:
    """Clean samples are bit-identical to those of the code before degradations, with no spec
    and with a spec of probability 0: what keeps cached data sets and bundles valid."""
    zero = DegradationSpec.from_dict({m: {"probability": 0.0} for m in EVERYTHING})
    for seed, expected in GOLDEN.items():
        clean = World().sample(seed)
        assert digest(clean) == expected and clean.degradations == {}
        assert digest(World(degradations=zero).sample(seed)) == expected
    assert "16659ef9996836cf" in COMPATIBLE_FINGERPRINTS
    assert fingerprint_matches("16659ef9996836cf") and fingerprint_matches(code_fingerprint())
    assert not fingerprint_matches("16659ef9996836cf", degraded=True)
    assert not fingerprint_matches("0123456789abcdef")
    assert code_fingerprint(degraded=True) != code_fingerprint()


def test_clean_config_hashes_unchanged() -> None:
    for name, expected in CLEAN_HASHES.items():
        cfg = DatasetConfig.from_yaml(REPO / "config" / name)
        assert cfg.degradations is None and "degradations" not in cfg.to_dict()
        assert cfg.content_hash() == expected
    assert DatasetConfig(degradations={}).content_hash() == DatasetConfig().content_hash()


def test_degraded_config_file() -> None:
    cfg = DatasetConfig.from_yaml(REPO / "config" / "sim_dataset_degraded.yaml")
    default = DatasetConfig.from_yaml(REPO / "config" / "sim_dataset.yaml")
    assert cfg.split_sizes() == default.split_sizes() and cfg.name != default.name
    assert cfg.degraded and cfg.content_hash() != default.content_hash()
    assert set(cfg.degradations) == set(EVERYTHING)
    for entry in cfg.degradations.values():
        assert entry["probability"] == 0.3 and entry["severity"] == [0.4, 1.0]
    assert DatasetConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("bad, match", [
    ({"text": {"probability": 0.5}}, "degradations: .*text has no degradations"),
    ({"sonar": {"probability": 0.5}}, "unknown modality 'sonar'"),
    ({"image": {"probability": 1.5}}, r"degradations.image.probability"),
    ({"image": {"kinds": ["fog"]}}, r"degradations.image.kinds: unknown \['fog'\]"),
    ({"audio": {"severity": [0.8, 0.2]}}, r"degradations.audio.severity: low 0.8 > high"),
    ({"audio": {"level": 1}}, r"degradations.audio: unknown keys \['level'\]"),
])
def test_spec_errors_name_the_entry(bad, match) -> None:
    with pytest.raises(ValueError, match=match):
        DatasetConfig(degradations=bad)


def test_draw_rates_kinds_and_severities() -> None:
    spec = DegradationSpec.from_dict({"image": {"probability": 0.3, "kinds": ["dark", "glare"],
                                                "severity": [0.4, 1.0]}})
    draws = [spec.draw(seed, STREAM_DEGRADE) for seed in range(2000)]
    hits = [d["image"] for d in draws if "image" in d]
    assert all(set(d) <= {"image"} for d in draws)
    assert len(hits) / len(draws) == pytest.approx(0.3, abs=0.04)
    assert {k for k, _ in hits} == {"dark", "glare"}
    severities = np.array([s for _, s in hits])
    assert severities.min() >= 0.4 and severities.max() <= 1.0 and severities.std() > 0.1
    # Another stream id draws other degradations (the world's ids must not collide).
    assert STREAM_DEGRADE == 9 and STREAM_CLASS == 8
    assert [spec.draw(s, STREAM_DEGRADE) for s in range(50)] != \
        [spec.draw(s, 0) for s in range(50)]
    # A modality's draw does not depend on which other modalities the spec lists.
    both = DegradationSpec.from_dict({"image": {"probability": 0.3, "kinds": ["dark", "glare"],
                                                "severity": [0.4, 1.0]},
                                      "audio": {"probability": 0.9}})
    assert [d.get("image") for d in draws[:200]] == \
        [both.draw(s, STREAM_DEGRADE).get("image") for s in range(200)]


def test_world_records_what_it_degraded() -> None:
    spec = DegradationSpec.from_dict(EVERYTHING)
    clean, degraded = World().sample(5), World(degradations=spec).sample(5)
    assert set(degraded.degradations) == set(EVERYTHING)
    assert degraded.degradations["image"]["kind"] in ("dark", "glare", "motion_blur",
                                                     "occlusion", "lens_dirt")
    assert not np.array_equal(clean.image, degraded.image)
    assert clean.caption == degraded.caption and clean.nuisance == degraded.nuisance
    again = World(degradations=spec).sample(5)
    assert digest(again) == digest(degraded)
    only_image = World(degradations=spec).sample(5, modalities=["image", "text"])
    assert set(only_image.degradations) == {"image"}
    np.testing.assert_array_equal(only_image.image, degraded.image)


def test_degraded_data_set_round_trip(tmp_path: Path) -> None:
    spec = {"image": {"probability": 0.5, "kinds": ["dark"], "severity": [0.5, 1.0]},
            "audio": {"probability": 0.5}}
    cfg = DatasetConfig(name="deg", teacher_train=4, teacher_val=2, student_train=6,
                        student_val=2, student_test=2, shard_size=4, workers=1,
                        degradations=spec)
    root = generate(cfg, tmp_path, progress=False)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["code_fingerprint"] == code_fingerprint(degraded=True)
    assert manifest["config"]["degradations"]["image"]["kinds"] == ["dark"]
    world = World(degradations=DegradationSpec.from_dict(spec))
    students = SimDataset(root, "train", "student")
    table = students.degradations()
    assert len(table) == len(students) and any(table) and not all(table)
    for i in range(len(students)):
        stored = students[i]
        fresh = world.sample(int(students.seeds[i]), students.modalities,
                             int(students.labels[i]))
        assert stored.degradations == fresh.degradations == table[i]
        assert digest(stored) == digest(fresh)
    teachers = SimDataset(root, "train", "teacher")
    assert teachers.degradations() == [{}] * len(teachers)
    assert all(t.degradations == {} for t in teachers)
    # Resuming the same config is a no-op; the reader does not warn.
    assert generate(cfg, tmp_path, progress=False) == root


def test_clean_data_set_of_compatible_code_stays_valid(tmp_path: Path, recwarn) -> None:
    cfg = DatasetConfig(name="clean", teacher_train=2, teacher_val=1, student_train=1,
                        student_val=1, student_test=1, shard_size=4, workers=1)
    root = generate(cfg, tmp_path, progress=False)
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["code_fingerprint"] == code_fingerprint()
    assert "degradations" not in manifest["config"]
    manifest["code_fingerprint"] = "16659ef9996836cf"  # rendered before degradations existed
    path.write_text(json.dumps(manifest))
    SimDataset(root, "train", "student")
    generate(cfg, tmp_path, progress=False)
    assert not [w for w in recwarn if "simulator code" in str(w.message)]
    assert json.loads(path.read_text())["code_fingerprint"] == "16659ef9996836cf"
