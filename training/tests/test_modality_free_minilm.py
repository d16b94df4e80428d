"""Modality-free builder with the real text teacher (all-MiniLM-L6-v2, offline) and the real
readers on tiny copies of ESC-50, ShapeNet-part, Caltech-101 and N-Caltech101."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _reader_fixtures import (
    flat_image,
    tone,
    write_atis_bin,
    write_csv,
    write_image,
    write_json,
    write_wav,
)

from omnibind_train.datasets import ESC50, Caltech101, NCaltech101, ShapeNetPart
from omnibind_train.datasets.modality_free import (
    EncoderTextEmbedder,
    LabelMap,
    build_modality_free_index,
    propose_label_map,
    read_modality_free_index,
)
from omnibind_train.datasets.shapenet_part import SEG_CLASSES

# label names as the data sets publish them (subsets)
ESC_NAMES = ["dog", "rooster", "cat", "helicopter", "siren", "car_horn", "airplane",
             "chirping_birds", "church_bells", "glass_breaking"]
US8K_NAMES = ["air_conditioner", "car_horn", "children_playing", "dog_bark", "siren"]
SHAPENET_NAMES = ["Airplane", "Bag", "Cap", "Car", "Chair", "Earphone", "Guitar", "Knife",
                  "Lamp", "Laptop", "Motorbike", "Mug", "Pistol", "Rocket", "Skateboard",
                  "Table"]
CALTECH_NAMES = ["BACKGROUND_Google", "Faces_easy", "Motorbikes", "airplanes", "chair",
                 "dalmatian", "electric_guitar", "headphone", "helicopter", "lamp", "laptop",
                 "revolver", "rooster", "windsor_chair"]


class NamesOnly:
    def __init__(self, modality: str, names: Sequence[str]) -> None:
        self.modality, self.label_names = modality, tuple(names)
        self._labels = np.arange(len(names), dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return None, int(self._labels[i])


@pytest.fixture(scope="module")
def minilm(text_encoder: Any, tmp_path_factory: pytest.TempPathFactory) -> EncoderTextEmbedder:
    return EncoderTextEmbedder(text_encoder,
                               cache_path=tmp_path_factory.mktemp("emb") / "cache.npz")


def test_minilm_aligns_published_label_names(minilm: EncoderTextEmbedder, text_encoder: Any
                                             ) -> None:
    src = {"esc50": NamesOnly("audio", ESC_NAMES),
           "urbansound8k": NamesOnly("audio", US8K_NAMES),
           "shapenetpart": NamesOnly("point_cloud", SHAPENET_NAMES),
           "caltech101": NamesOnly("image", CALTECH_NAMES),
           "ncaltech101": NamesOnly("event", CALTECH_NAMES)}
    lmap = propose_label_map(src, minilm)
    owner = {key: t.name for t in lmap.targets for key in t.claimed()}

    def same(a: tuple[str, str], b: tuple[str, str]) -> bool:
        return owner[a] == owner[b]

    # identical meaning across data sets and modalities
    assert same(("esc50", "airplane"), ("shapenetpart", "Airplane"))
    assert same(("esc50", "airplane"), ("caltech101", "airplanes"))
    assert same(("caltech101", "airplanes"), ("ncaltech101", "airplanes"))
    assert same(("caltech101", "chair"), ("shapenetpart", "Chair"))
    assert same(("caltech101", "laptop"), ("shapenetpart", "Laptop"))
    assert same(("caltech101", "Motorbikes"), ("shapenetpart", "Motorbike"))
    assert same(("caltech101", "electric_guitar"), ("shapenetpart", "Guitar"))
    assert same(("esc50", "siren"), ("urbansound8k", "siren"))
    assert same(("esc50", "car_horn"), ("urbansound8k", "car_horn"))
    assert same(("esc50", "helicopter"), ("caltech101", "helicopter"))
    # different things stay apart
    assert not same(("shapenetpart", "Table"), ("caltech101", "chair"))
    assert not same(("shapenetpart", "Car"), ("esc50", "car_horn"))
    assert not same(("caltech101", "dalmatian"), ("esc50", "dog"))
    assert not same(("caltech101", "helicopter"), ("shapenetpart", "Airplane"))
    # one label per data set per target; similarities as recorded are >= the threshold
    for t in lmap.targets:
        assert all(len(ms) == 1 for ms in t.sources.values())
        assert all(lmap.threshold - 1e-4 <= m.similarity <= 1.0
                   for ms in t.sources.values() for m in ms)
    assert lmap.targets[0].name == "airplane"  # the widest target (4 modalities) comes first
    assert lmap.encoder.startswith("encoder:minilm")

    # every label text was cached: a second embedder on the same file never runs the model
    cached = EncoderTextEmbedder(text_encoder, cache_path=minilm.cache_path)
    cached._encoder = _NoModel()
    assert propose_label_map(src, cached).targets == lmap.targets


class _NoModel:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError("the text model should not run: embeddings are cached")


# --- the real readers on tiny published-format copies ----------------------------------------
def _esc50(root: Path) -> Path:
    rows = []
    for target, cat in enumerate(["dog", "airplane", "chirping_birds"]):
        for k in range(4):
            fname = f"{1 + k % 5}-{1000 * target + k}-A-{target}.wav"
            write_wav(root / "audio" / fname, tone(0.05, 8000, 300 + 50 * target), 8000)
            rows.append((fname, 1 + k % 5, target, cat, False, f"{k}.ogg", "A"))
    write_csv(root / "meta" / "esc50.csv",
              ("filename", "fold", "target", "category", "esc10", "src_file", "take"), rows)
    return root


def _shapenet(root: Path) -> Path:
    cats = [("Airplane", "02691156"), ("Chair", "03001627"), ("Mug", "03797390")]
    root.mkdir(parents=True)
    (root / "synsetoffset2category.txt").write_text("".join(f"{n}\t{s}\n" for n, s in cats))
    shapes = [(syn, f"{syn[-3:]}{k}") for _, syn in cats for k in range(3)]
    for part in ("train", "val", "test"):
        write_json(root / "train_test_split" / f"shuffled_{part}_file_list.json",
                   [f"shape_data/{s}/{i}" for s, i in shapes] if part == "train" else [])
    rng = np.random.default_rng(0)
    for syn, shape in shapes:
        (root / syn).mkdir(exist_ok=True)
        xyz = rng.uniform(-0.5, 0.5, (50, 3))
        part = SEG_CLASSES[next(n for n, s in cats if s == syn)][0]
        np.savetxt(root / syn / f"{shape}.txt",
                   np.column_stack([xyz, xyz, np.full(50, float(part))]), fmt="%.6f")
    return root


def _caltech(root: Path, ext: str) -> Path:
    for cat, n in {"airplanes": 4, "chair": 3, "dalmatian": 3}.items():
        for k in range(1, n + 1):
            p = root / cat / f"image_{k:04d}{ext}"
            if ext == ".jpg":
                write_image(p, flat_image(6, 9, (k * 20, 5, 250)))
            else:
                write_atis_bin(p, [(k, 2, 1, 10), (3, k, 0, 20 + k)])
    return root


def test_real_readers_build_an_index_with_the_papers_shares(
        tmp_path: Path, minilm: EncoderTextEmbedder) -> None:
    src = {"esc50": ESC50(_esc50(tmp_path / "ESC-50-master")),
           "shapenetpart": ShapeNetPart(_shapenet(tmp_path / "shapenet"), split="train"),
           "caltech101": Caltech101(_caltech(tmp_path / "cal" / "101_ObjectCategories", ".jpg")
                                    .parent, split="all"),
           "ncaltech101": NCaltech101(_caltech(tmp_path / "ncal" / "Caltech101", ".bin").parent,
                                      split="all")}
    out = tmp_path / "train_index.jsonl"
    index = build_modality_free_index(src, tmp_path / "labelmap.yaml", out, embedder=minilm,
                                      num_items=300, seed=0)
    lmap = LabelMap.read(tmp_path / "labelmap.yaml")
    owner = {key: t.name for t in lmap.used_targets() for key in t.claimed()}
    # airplane: ESC-50 audio + ShapeNet points + Caltech image + N-Caltech events (+ text)
    assert owner[("esc50", "airplane")] == owner[("shapenetpart", "Airplane")] \
        == owner[("caltech101", "airplanes")] == owner[("ncaltech101", "airplanes")]
    shares = index.size_proportions()
    print("measured size shares:", shares)
    for k, share in {1: 0.06, 2: 0.46, 3: 0.15, 4: 0.16, 5: 0.17}.items():
        assert abs(shares[k] - share) <= 0.005, (k, shares)
    assert {it["label"] for it in index if it["size"] == 5} == {owner[("esc50", "airplane")]}
    for it in index:
        for m in it["members"]:
            if m["modality"] == "text":
                continue
            reader = src[m["dataset"]]
            assert reader.label_names[reader.label(m["index"])] == m["source_label"]
            assert owner[(m["dataset"], m["source_label"])] == it["label"]
    # a member is loadable through its reader (the index stores reader positions)
    m = next(m for it in index for m in it["members"] if m["modality"] == "point_cloud")
    points, _ = src["shapenetpart"][m["index"]]
    assert points.shape == (50, 3)
    back = read_modality_free_index(out, src)
    assert back.items == index.items
    assert back.header["sources"]["esc50"]["reader"] == "ESC50"
    assert back.header["sources"]["caltech101"]["selection"] == "all"
