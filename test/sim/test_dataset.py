"""Data-set writer and reader, against a small fake world (fast) and, if present, the real one."""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from omnibind_ros.core.modalities import ALL_MODALITIES, Modality
from omnibind_ros.core.paths import default_cache_dir
from omnibind_ros.core.types import AudioBlock, EventPacket, TactileFrame, ThermalFrame
from omnibind_ros.sim.catalog import CLASS_NAMES, CLASSES
from omnibind_ros.sim.dataset import (
    DEFAULT_COMBO_WEIGHTS,
    DatasetConfig,
    ShardedArray,
    SimDataset,
    build_index,
    class_indices,
    code_fingerprint,
    code_of,
    dataset_info,
    generate,
    modality_free_records,
    pack_samples,
    read_npz_member,
    sample_seed,
    unpack_sample,
)
from omnibind_ros.sim.types import Sample

REPO = Path(__file__).resolve().parents[2]


class FakeWorld:
    """Deterministic stand-in for World: tiny arrays of every modality, variable-length
    events and points, so the writer's format is exercised without rendering."""

    calls = 0
    fail_at_seed: int | None = None

    def sample(self, seed: int, modalities=None, class_index: int | None = None) -> Sample:
        if seed == FakeWorld.fail_at_seed:
            raise RuntimeError("simulated crash")
        FakeWorld.calls += 1
        rng = np.random.default_rng(seed)
        mods = set(ALL_MODALITIES if modalities is None else modalities)
        c = CLASSES[class_index if class_index is not None else int(rng.integers(len(CLASSES)))]
        s = Sample(seed, c.index, c.name, nuisance={"scale": float(rng.random()),
                                                    "pose": rng.random(3)})
        if Modality.IMAGE in mods:
            s.image = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
        if Modality.TEXT in mods:
            s.caption = f"a photo of a {c.name} #{seed % 97}"
        if Modality.THERMAL in mods:
            s.thermal = ThermalFrame(rng.integers(29000, 31000, (4, 5), dtype=np.uint16), "mono16")
        if Modality.EVENT in mods:
            n = int(rng.integers(0, 30))  # zero events must round-trip too
            s.events = EventPacket(rng.integers(0, 5, n, dtype=np.uint16),
                                   rng.integers(0, 4, n, dtype=np.uint16),
                                   np.sort(rng.integers(0, 10**6, n)).astype(np.int64),
                                   rng.random(n) < 0.5, 5, 4)
        if Modality.TACTILE in mods:
            s.tactile = TactileFrame(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8),
                                     np.full((3, 3, 3), 128, np.uint8))
        if Modality.AUDIO in mods:
            s.audio = AudioBlock(rng.uniform(-1, 1, 50).astype(np.float32), 16000)
        if Modality.POINT_CLOUD in mods:
            s.points = rng.normal(size=(int(rng.integers(3, 40)), 3)).astype(np.float32)
        return s


def fake_factory(overrides) -> FakeWorld:  # module level: picklable for spawn workers
    return FakeWorld()


def small_config(**kw) -> DatasetConfig:
    base = dict(name="t", teacher_train=40, teacher_val=9, student_train=21, student_val=7,
                student_test=5, shard_size=8, workers=1)
    base.update(kw)
    return DatasetConfig(**base)


def assert_samples_equal(a: Sample, b: Sample) -> None:
    assert (a.seed, a.class_index, a.class_name, a.caption) == \
        (b.seed, b.class_index, b.class_name, b.caption)
    for name in ("image", "points"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None)
        if x is not None:
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)
    for name, fields in (("thermal", ("data", "encoding", "kelvin_per_count")),
                         ("events", ("x", "y", "t_ns", "polarity", "width", "height")),
                         ("tactile", ("image", "reference")),
                         ("audio", ("samples", "sample_rate"))):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is None:
            continue
        assert type(x) is type(y)
        for f in fields:
            u, v = getattr(x, f), getattr(y, f)
            if isinstance(u, np.ndarray):
                assert u.dtype == v.dtype, (name, f)
                np.testing.assert_array_equal(u, v)
            else:
                assert u == v, (name, f)


# --- config -----------------------------------------------------------------------------------

def test_config_yaml_files_load_and_round_trip() -> None:
    for name in ("sim_dataset.yaml", "sim_dataset_tiny.yaml"):
        cfg = DatasetConfig.from_yaml(REPO / "config" / name)
        assert DatasetConfig.from_dict(cfg.to_dict()) == cfg
        sizes = cfg.split_sizes()
        assert set(sizes) == {("teacher", "train"), ("teacher", "val"), ("student", "train"),
                              ("student", "val"), ("student", "test")}
    default = DatasetConfig.from_yaml(REPO / "config" / "sim_dataset.yaml")
    assert default == DatasetConfig()  # the dataclass defaults are the default data set
    assert default.teacher_train >= 8 * default.student_train  # the papers' imbalance
    assert all(n % len(CLASSES) == 0 for n in default.split_sizes().values())


@pytest.mark.parametrize("bad, key", [
    ({"teacher_trian": 3}, "teacher_trian"),
    ({"student_val": -1}, "student_val"),
    ({"shard_size": 0}, "shard_size"),
    ({"workers": 1.5}, "workers"),
    ({"teacher_val": True}, "teacher_val"),
    ({"name": "a/b"}, "name"),
    ({"world": [1]}, "world"),
    ({"combo_size_weights": {9: 1.0}}, "combo_size_weights"),
    ({"combo_size_weights": {2: -1.0}}, "combo_size_weights"),
    ({"combo_size_weights": {}}, "combo_size_weights"),
])
def test_config_errors_name_the_key(bad, key) -> None:
    with pytest.raises(ValueError, match=key):
        DatasetConfig.from_dict(bad)


def test_content_hash_ignores_name_and_workers_only() -> None:
    a = small_config()
    assert a.content_hash() == small_config(name="other", workers=2).content_hash()
    assert a.content_hash() != small_config(seed=1).content_hash()
    assert a.content_hash() != small_config(world={"image_size": 32}).content_hash()


def test_default_cache_dir_resolution(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("OMNIBIND_CACHE_DIR", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.setenv("OMNIBIND_CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "omnibind_ros"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "omnibind_ros"


# --- index --------------------------------------------------------------------------------------

def test_sample_seeds_are_individual_and_distinct() -> None:
    assert sample_seed(0, "student", "train", 5) == sample_seed(0, "student", "train", 5)
    seeds = {sample_seed(s, k, sp, i) for s in (0, 1) for k, sp in
             (("teacher", "train"), ("teacher", "val"), ("student", "test")) for i in range(500)}
    assert len(seeds) == 3000 and max(seeds) < 2 ** 53


def test_classes_are_balanced() -> None:
    counts = np.bincount(class_indices(18 * 7 + 5, 18), minlength=18)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 18 * 7 + 5


def test_modality_free_proportions_are_exact_and_deterministic() -> None:
    recs = modality_free_records(1000, 2, DEFAULT_COMBO_WEIGHTS, rng_seed=3)
    assert recs == modality_free_records(1000, 2, DEFAULT_COMBO_WEIGHTS, rng_seed=3)
    assert recs != modality_free_records(1000, 2, DEFAULT_COMBO_WEIGHTS, rng_seed=4)
    sizes = Counter(len(m) for _, m in recs)
    assert sizes == {1: 120, 2: 920, 3: 300, 4: 320, 5: 220, 6: 80, 7: 40}
    assert sizes[2] / len(recs) == pytest.approx(0.46)
    assert sum(sizes[k] for k in (5, 6, 7)) / len(recs) == pytest.approx(0.17)
    per_sample = Counter(i for i, _ in recs)
    assert set(per_sample.values()) == {2} and sorted(per_sample) == list(range(1000))
    # every modality appears about equally often (uniform subsets): 7 modalities
    uses = Counter(m for _, mods in recs for m in mods)
    assert set(uses) == set(ALL_MODALITIES)
    assert max(uses.values()) / min(uses.values()) < 1.15
    # records are in canonical modality order and the two of a sample differ (mostly)
    order = {m: k for k, m in enumerate(ALL_MODALITIES)}
    assert all(list(m) == sorted(m, key=order.get) for _, m in recs)
    dup = sum(recs[2 * i][1] == recs[2 * i + 1][1] for i in range(1000))
    assert dup <= 5


def test_index_is_a_pure_function_of_the_config() -> None:
    cfg = small_config()
    a, b = build_index(cfg), build_index(small_config(workers=2, name="n"))
    assert a == b
    st = a["splits"]["student/train"]
    assert st["size"] == 21 and len(st["seeds"]) == 21
    assert [s["stop"] - s["start"] for s in st["shards"]] == [8, 8, 5]
    assert len(st["modality_free"]) == 42 and "modality_free" not in a["splits"]["teacher/val"]
    assert a["class_names"] == list(CLASS_NAMES)


# --- packing ------------------------------------------------------------------------------------

def test_pack_unpack_round_trip_with_ragged_fields() -> None:
    world = FakeWorld()
    samples = [world.sample(s, class_index=s % 18) for s in range(12)]
    arrays = pack_samples(samples)
    assert arrays["image"].shape == (12, 6, 5, 3)
    assert arrays["points__offsets"].shape == (13,)
    assert arrays["events.x__offsets"][-1] == arrays["events.x"].shape[0]
    for i, s in enumerate(samples):
        assert_samples_equal(unpack_sample(arrays, i), s)
        assert unpack_sample(arrays, i).nuisance["pose"] == s.nuisance["pose"].tolist()


def test_pack_rejects_mixed_kinds() -> None:
    w = FakeWorld()
    with pytest.raises(ValueError, match="one kind"):
        pack_samples([w.sample(1, [Modality.IMAGE], 0), w.sample(2, None, 0)])


# --- generate + read -----------------------------------------------------------------------------

@pytest.fixture
def generated(tmp_path) -> tuple[DatasetConfig, Path]:
    cfg = small_config()
    root = generate(cfg, tmp_path, world_factory=fake_factory, progress=False)
    return cfg, root


def test_generate_writes_shards_index_manifest(generated) -> None:
    cfg, root = generated
    assert root.name == "t" and root.parent.name == "datasets"
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["complete"] and manifest["last_run"]["samples"] == 82
    shards = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.npz"))
    assert len(shards) == 5 + 2 + 3 + 1 + 1
    assert "student/train/shard_00002.npz" in shards
    assert not list(root.rglob("*.tmp*"))
    info = dataset_info(root)
    assert info["splits"]["teacher/train"]["class_counts"] == [3] * 4 + [2] * 14
    assert info["splits"]["student/train"]["shards_present"] == 3


def test_reader_reconstructs_exactly_what_the_world_made(generated) -> None:
    cfg, root = generated
    world = FakeWorld()
    for kind, split in (("teacher", "train"), ("student", "train"), ("student", "test")):
        ds = SimDataset(root, split, kind)
        assert len(ds) == cfg.split_sizes()[(kind, split)]
        for i in sorted({0, min(7, len(ds) - 1), min(8, len(ds) - 1), len(ds) - 1}):
            expect = world.sample(int(ds.seeds[i]), ds.modalities, int(ds.labels[i]))
            assert_samples_equal(ds[i], expect)
        assert_samples_equal(ds[-1], ds[len(ds) - 1])
    teacher = SimDataset(root, "train", "teacher")
    assert teacher[0].thermal is None and teacher[0].points is None
    assert teacher[0].caption and teacher[0].image is not None
    student = SimDataset(root, "train", "student")
    assert student.modality_free and all(0 <= i < 21 for i, _ in student.modality_free)
    with pytest.raises(IndexError):
        student[21]


def test_fast_array_access(generated) -> None:
    _, root = generated
    ds = SimDataset(root, "train", "teacher")
    images = ds.images
    assert isinstance(images, ShardedArray) and images.shape == (40, 6, 5, 3)
    full = np.asarray(images)
    np.testing.assert_array_equal(images[[39, 0, 8, 8, 17]], full[[39, 0, 8, 8, 17]])
    np.testing.assert_array_equal(images[5:20:3], full[5:20:3])
    np.testing.assert_array_equal(images[-1], ds[39].image)
    mask = np.zeros(40, bool)
    mask[[3, 30]] = True
    np.testing.assert_array_equal(images[mask], full[mask])
    with pytest.raises(IndexError):
        images[[40]]
    assert ds.captions[9] == ds[9].caption
    assert np.array_equal(ds.labels, np.arange(40) % 18)
    member = read_npz_member(root / "teacher/train/shard_00000.npz", "image")
    assert isinstance(member, np.memmap)  # uncompressed shards are memory-mapped
    sample = ds[3]  # ...but a Sample owns its arrays: writeable, not views of the file
    assert not isinstance(sample.image, np.memmap) and sample.image.flags.writeable
    assert sample.image.base is None or not isinstance(sample.image.base, np.memmap)
    student = SimDataset(root, "val", "student")
    assert student.field("thermal.data").shape == (7, 4, 5)
    with pytest.raises(ValueError, match="variable-length"):
        student.field("points")
    with pytest.raises(KeyError):
        student.field("nope")


def test_resume_renders_only_missing_or_bad_shards(generated) -> None:
    cfg, root = generated
    before = {p: p.read_bytes() for p in root.rglob("*.npz")}
    (root / "student/train/shard_00001.npz").unlink()
    (root / "teacher/val/shard_00000.npz").write_bytes(b"not a zip")
    generate(cfg, root.parents[1], world_factory=fake_factory, progress=False)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["last_run"]["samples"] == 8 + 8
    assert {p: p.read_bytes() for p in root.rglob("*.npz")} == before  # bit-identical


def test_changed_config_is_refused_not_mixed(generated, tmp_path) -> None:
    cfg, root = generated
    with pytest.raises(ValueError, match="another config.*differs in: seed"):
        generate(small_config(seed=5), root=root, world_factory=fake_factory, progress=False)
    generate(small_config(seed=5), root=root, world_factory=fake_factory, progress=False,
             overwrite=True)
    assert SimDataset(root, "train", "student").seeds[0] == sample_seed(5, "student", "train", 0)


def test_interrupted_run_leaves_no_partial_shard_and_resumes(tmp_path) -> None:
    cfg = small_config()
    crash_seed = sample_seed(cfg.seed, "teacher", "train", 20)  # in the third teacher shard
    FakeWorld.fail_at_seed = crash_seed
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            generate(cfg, tmp_path, world_factory=fake_factory, progress=False)
    finally:
        FakeWorld.fail_at_seed = None
    root = tmp_path / "datasets" / "t"
    assert not json.loads((root / "manifest.json").read_text())["complete"]
    assert not (root / "teacher/train/shard_00002.npz").exists()
    assert not list(root.rglob("*.tmp*"))
    with pytest.raises(RuntimeError, match="incomplete"):
        SimDataset(root, "train", "teacher")
    done_before = sum(len(read_npz_member(p, "seed")) for p in root.rglob("*.npz"))
    assert 0 < done_before < 82
    generate(cfg, tmp_path, world_factory=fake_factory, progress=False)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["complete"]
    assert manifest["last_run"]["samples"] == 82 - done_before


def test_two_workers_write_identical_shards(generated, tmp_path) -> None:
    cfg, root = generated
    root2 = generate(cfg, root=tmp_path / "par", world_factory=fake_factory, progress=False,
                     workers=2)
    files = sorted(p.relative_to(root) for p in root.rglob("*.npz"))
    assert files == sorted(p.relative_to(root2) for p in root2.rglob("*.npz"))
    assert all((root / f).read_bytes() == (root2 / f).read_bytes() for f in files)
    assert (root / "index.json").read_text() == (root2 / "index.json").read_text()


def test_reader_argument_errors(generated, tmp_path) -> None:
    _, root = generated
    with pytest.raises(ValueError, match="splits"):
        SimDataset(root, "test", "teacher")
    with pytest.raises(ValueError, match="kind"):
        SimDataset(root, "train", "both")
    with pytest.raises(FileNotFoundError):
        SimDataset(tmp_path / "nothing", "train", "teacher")


class PidWorld(FakeWorld):
    """Records which process rendered each sample."""

    def sample(self, seed: int, modalities=None, class_index: int | None = None) -> Sample:
        s = super().sample(seed, modalities, class_index)
        s.nuisance["pid"] = os.getpid()
        return s


def pid_factory(overrides) -> PidWorld:
    return PidWorld()


def test_workers_render_in_separate_processes(tmp_path) -> None:
    root = generate(small_config(), root=tmp_path / "p", world_factory=pid_factory,
                    progress=False, workers=2)
    ds = SimDataset(root, "train", "student")
    pids = {ds[i].nuisance["pid"] for i in range(len(ds))}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_empty_split_reads_as_empty(tmp_path) -> None:
    root = generate(small_config(student_test=0), tmp_path, world_factory=fake_factory,
                    progress=False)
    ds = SimDataset(root, "test", "student")
    assert len(ds) == 0 and ds.labels.shape == (0,) and ds.modality_free == []
    with pytest.raises(ValueError, match="empty"):
        _ = ds.images


def test_real_world_round_trip(tmp_path) -> None:
    """With the real World: what the reader returns is exactly what World.sample renders."""
    world_mod = pytest.importorskip("omnibind_ros.sim.world")
    cfg = small_config(teacher_train=3, teacher_val=0, student_train=3, student_val=0,
                       student_test=0)
    root = generate(cfg, tmp_path, progress=False)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["world_config"] == world_mod.WorldConfig().to_dict()
    world = world_mod.World()
    for kind in ("teacher", "student"):
        ds = SimDataset(root, "train", kind)
        for i in range(len(ds)):
            assert_samples_equal(ds[i], world.sample(int(ds.seeds[i]), ds.modalities,
                                                     int(ds.labels[i])))
    student = SimDataset(root, "train", "student")[0]
    assert student.image.shape[2] == 3 and student.points.shape[1] == 3 and len(student.events)
    with pytest.raises(ValueError, match="WorldConfig"):
        generate(small_config(world={"no_such_key": 1}), tmp_path / "bad", progress=False)


def test_reader_warns_when_simulator_code_changed(generated) -> None:
    _, root = generated
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["code_fingerprint"] = "0123456789abcdef"  # as if rendered by older code
    path.write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="other simulator code"):
        SimDataset(root, "train", "teacher")


def test_code_fingerprint_covers_the_modules_that_shape_a_sample() -> None:
    """Simulator modules are hashed; the data set package, the CLI, the preview, the stream,
    the scenarios and the degradation package are not (changing them leaves every rendered
    clean sample as it was)."""
    sim = REPO / "omnibind_ros" / "sim"
    hashed = sorted(p for p in sim.glob("*.py")
                    if p.name not in ("cli.py", "preview.py", "stream.py", "scenario.py"))
    assert {"world.py", "render.py", "thermal.py", "catalog.py"} <= {p.name for p in hashed}
    assert (sim / "dataset").is_dir() and not (sim / "dataset.py").exists()
    assert (sim / "degrade").is_dir() and not (sim / "degrade.py").exists()
    digest = hashlib.sha256()
    for path in hashed:
        digest.update(path.name.encode() + b"\0" + code_of(path).encode())
    assert code_fingerprint() == digest.hexdigest()[:16]


def test_code_fingerprint_ignores_docstrings_and_comments(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text('"""Doc."""\ndef f(x):\n    """Doc."""\n    return x + 1  # note\n')
    b.write_text('"""Other words."""\ndef f(x):\n    return x + 1\n')
    c.write_text('def f(x):\n    return x + 2\n')
    assert code_of(a) == code_of(b) != code_of(c)
