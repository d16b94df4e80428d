"""Modality-free data set builder (seed 000, Sec. 3.4 / A.2) on tiny fake readers.

A deterministic bag-of-words text embedder stands in for the text teacher here (fast, and its
similarities are known: identical word sets -> 1, one word of three shared differently -> 2/3);
``test_modality_free_minilm.py`` runs the real all-MiniLM-L6-v2 and the real readers.
"""
from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from omnibind_train.datasets.modality_free import (
    DEFAULT_PROPORTIONS,
    PAPER_STATED_PROPORTIONS,
    CaptionDescriber,
    LabelMap,
    LabelMapError,
    ModalityFreeBuildError,
    StaleIndexError,
    StaleLabelMapError,
    build_modality_free_index,
    load_or_create_label_map,
    propose_label_map,
    read_modality_free_index,
    size_quotas,
)

COLOURS = ("red", "blue", "green")


class FakeReader:
    """Just what the builder reads: modality, label names, labels; ``[i]`` gives a raw sample
    that carries a colour (for the captioner test)."""

    def __init__(self, modality: str, names: Sequence[str], per: Sequence[int] | int = 6
                 ) -> None:
        self.modality = modality
        self.label_names = tuple(names)
        counts = [per] * len(names) if isinstance(per, int) else list(per)
        self._labels = np.repeat(np.arange(len(names)), counts).astype(np.int64)

    @property
    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return {"colour": COLOURS[i % 3]}, int(self._labels[i])


class BowEmbedder:
    """Sum of fixed random word vectors (seeded by the word), normalised."""

    identity = "test-bag-of-words"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), 256), np.float32)
        for r, t in enumerate(texts):
            for w in re.findall(r"[a-z0-9]+", t.lower()):
                out[r] += np.random.default_rng(zlib.crc32(w.encode())).standard_normal(256)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


class RaisingEmbedder:
    identity = "must-not-be-called"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        raise AssertionError(f"embedder called with {list(texts)[:3]}")


def sources() -> dict[str, FakeReader]:
    """airplane spans image, event, audio, point cloud (+ text = 5 modalities); chair, dog,
    guitar 4; siren, wood, metal 2."""
    return {
        "img": FakeReader("image", ["airplane", "chair", "dog", "guitar"], [6, 5, 7, 4]),
        "evt": FakeReader("event", ["airplane", "chair", "dog", "guitar"], 3),
        "aud": FakeReader("audio", ["airplane", "dog", "siren"], [4, 6, 5]),
        "pts": FakeReader("point_cloud", ["Airplane", "Chair", "Guitar"], [5, 4, 6]),
        "tac": FakeReader("tactile", ["wood", "metal"], 6),
    }


def target_of(lmap: LabelMap) -> dict[tuple[str, str], str]:
    return {key: t.name for t in lmap.used_targets() for key in t.claimed()}


# --- proportions ---------------------------------------------------------------------------------
def test_size_quotas_are_the_papers_shares() -> None:
    # 50,080 items (Sec. 3.4): 46/15/16/17 % as stated + the unstated 6 % as single items
    q = size_quotas(50_080, DEFAULT_PROPORTIONS)
    assert q == {1: 3005, 2: 23037, 3: 7512, 4: 8013, 5: 8513}
    assert sum(q.values()) == 50_080
    # the stated four alone are normalised (the "2-5 only" reading)
    q = size_quotas(1000, PAPER_STATED_PROPORTIONS)
    assert q == {2: 489, 3: 160, 4: 170, 5: 181}
    with pytest.raises(ValueError, match="proportions"):
        size_quotas(10, {0: 1.0})
    with pytest.raises(ValueError, match="proportions"):
        size_quotas(10, {2: -0.1, 3: 1.0})


def test_index_has_the_papers_proportions_and_consistent_items(tmp_path: Path) -> None:
    src = sources()
    index = build_modality_free_index(src, tmp_path / "map.yaml", tmp_path / "index.jsonl",
                                      embedder=BowEmbedder(), num_items=400, seed=0)
    measured = index.size_proportions()
    for k, share in {1: 0.06, 2: 0.46, 3: 0.15, 4: 0.16, 5: 0.17}.items():
        assert abs(measured[k] - share) <= 0.0025, (k, measured)
    assert index.size_counts() == {1: 24, 2: 184, 3: 60, 4: 64, 5: 68}

    lmap = LabelMap.read(tmp_path / "map.yaml")
    owner = target_of(lmap)
    for it in index:
        mods = it["modalities"]
        assert len(mods) == it["size"] == len(it["members"]) == len(set(mods))
        assert it["label"] == index.label_names[it["label_index"]]
        assert it["anchor"] in mods and it["anchor"] != "text"
        for m in it["members"]:
            if m["modality"] == "text":
                assert it["size"] > 1 and m["text"].endswith(".")
                continue
            reader = src[m["dataset"]]
            assert reader.modality == m["modality"]
            assert reader.label_names[reader.labels[m["index"]]] == m["source_label"]
            # label level: every member's source label is under the item's target
            assert owner[(m["dataset"], m["source_label"])] == it["label"]
    # only airplane spans five modalities; single items are never text alone
    assert {it["label"] for it in index if it["size"] == 5} == {"airplane"}
    assert all(it["modalities"] != ["text"] for it in index)
    # balanced over categories: the 7 labels share the 2-modality items
    per_label = Counter(it["label"] for it in index if it["size"] == 2)
    assert len(per_label) == 7 and min(per_label.values()) >= 12 and max(per_label.values()) <= 42
    # anchors cycle and matches prefer the least used sample: every sample is used, and the
    # samples of one source label are used evenly (random choice among ties spreads by ~8 here)
    assert index.header["samples_used"] == {k: len(r) for k, r in src.items()}
    uses = Counter((m["dataset"], m["index"]) for it in index for m in it["members"]
                   if "dataset" in m)
    for key, reader in src.items():
        for lab in range(len(reader.label_names)):
            counts = [uses[(key, i)] for i in np.flatnonzero(reader.labels == lab)]
            assert max(counts) - min(counts) <= 2, (key, reader.label_names[lab], counts)


def test_same_seed_same_file_other_seed_other_items(tmp_path: Path) -> None:
    src, emb = sources(), BowEmbedder()
    lmap = propose_label_map(src, emb)
    a = build_modality_free_index(src, lmap, tmp_path / "a.jsonl", embedder=emb, num_items=300,
                                  seed=3)
    build_modality_free_index(src, lmap, tmp_path / "b.jsonl", embedder=emb, num_items=300,
                              seed=3)
    c = build_modality_free_index(src, lmap, tmp_path / "c.jsonl", embedder=emb, num_items=300,
                                  seed=4)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert a.items != c.items
    assert a.size_counts() == c.size_counts()  # the shares do not depend on the seed


def test_a_size_no_label_can_form_is_a_clear_error() -> None:
    src = {"aud": FakeReader("audio", ["siren"]), "tac": FakeReader("tactile", ["wood"])}
    with pytest.raises(ModalityFreeBuildError, match="no target label spans 3 modalities"):
        build_modality_free_index(src, propose_label_map(src, BowEmbedder()),
                                  embedder=BowEmbedder(), num_items=100)
    index = build_modality_free_index(src, propose_label_map(src, BowEmbedder()),
                                      embedder=BowEmbedder(), num_items=100,
                                      proportions={1: 0.3, 2: 0.7})
    assert index.size_counts() == {1: 30, 2: 70}


# --- label level -------------------------------------------------------------------------------
def test_label_map_file_format_and_proposal(tmp_path: Path) -> None:
    src = sources()
    lmap = load_or_create_label_map(tmp_path / "map.yaml", src, BowEmbedder())
    text = (tmp_path / "map.yaml").read_text()
    assert text.startswith("# Label-level alignment")
    data = yaml.safe_load(text)
    assert data["format"] == "omnibind-modality-free-label-map" and data["reviewed"] is False
    assert data["datasets"]["pts"]["modality"] == "point_cloud"
    assert data["datasets"]["pts"]["num_labels"] == 3
    by_name = {t["name"]: t for t in data["targets"]}
    assert sorted(by_name) == ["airplane", "chair", "dog", "guitar", "metal", "siren", "wood"]
    assert by_name["airplane"]["sources"] == {
        "img": [{"label": "airplane", "similarity": 1.0}],
        "evt": [{"label": "airplane", "similarity": 1.0}],
        "aud": [{"label": "airplane", "similarity": 1.0}],
        "pts": [{"label": "Airplane", "similarity": 1.0}]}
    assert all(t["status"] == "proposed" for t in data["targets"])
    # more modalities first
    assert data["targets"][0]["name"] == "airplane"
    assert LabelMap.read(tmp_path / "map.yaml") == lmap


def test_edits_win_and_no_recomputation(tmp_path: Path) -> None:
    src, path = sources(), tmp_path / "map.yaml"
    load_or_create_label_map(path, src, BowEmbedder())
    data = yaml.safe_load(path.read_text())
    by_name = {t["name"]: t for t in data["targets"]}
    by_name["siren"]["status"] = "rejected"
    by_name["airplane"]["name"] = "aeroplane"
    by_name["airplane"]["status"] = "accepted"
    # a person puts the tactile "metal" under guitar (bare label, no similarity) and drops the
    # metal target
    by_name["guitar"]["sources"]["tac"] = ["metal"]
    data["targets"] = [t for t in data["targets"] if t["name"] != "metal"]
    data["reviewed"] = True
    path.write_text(yaml.safe_dump(data, sort_keys=False))

    lmap = load_or_create_label_map(path, src, RaisingEmbedder())  # read, never recomputed
    assert lmap.reviewed and [t.name for t in lmap.used_targets()][0] == "aeroplane"
    index = build_modality_free_index(src, path, tmp_path / "i.jsonl", embedder=BowEmbedder(),
                                      num_items=300, require_reviewed=True)
    labels = set(index.label_names)
    assert "siren" not in labels and "airplane" not in labels and "metal" not in labels
    assert "aeroplane" in labels
    assert not any(m.get("source_label") == "siren" for it in index for m in it["members"])
    guitar_tactile = [m for it in index if it["label"] == "guitar" for m in it["members"]
                      if m["modality"] == "tactile"]
    assert guitar_tactile and {m["source_label"] for m in guitar_tactile} == {"metal"}
    assert index.header["label_map"]["reviewed"] is True
    assert index.header["label_map"]["sha256"] == lmap.sha256()

    # recompute keeps the decided targets verbatim and re-proposes the undecided ones
    redo = load_or_create_label_map(path, src, BowEmbedder(), recompute=True)
    names = {t.name: t for t in redo.targets}
    assert names["aeroplane"].status == "accepted" and names["siren"].status == "rejected"
    assert {t.name for t in redo.targets} >= {"aeroplane", "siren", "guitar"}
    assert redo.reviewed  # it was reviewed and nothing new was proposed
    # once unreviewed, only accepted/rejected survive: guitar loses the hand-added metal
    data = yaml.safe_load(path.read_text())
    data["reviewed"] = False
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    redo = load_or_create_label_map(path, src, BowEmbedder(), recompute=True)
    names = {t.name: t for t in redo.targets}
    assert "tac" not in names["guitar"].sources and "metal" in names
    assert names["aeroplane"].sources["pts"][0].label == "Airplane"
    assert not redo.reviewed


def test_require_reviewed(tmp_path: Path) -> None:
    src = sources()
    with pytest.raises(LabelMapError, match="not reviewed"):
        build_modality_free_index(src, tmp_path / "map.yaml", embedder=BowEmbedder(),
                                  num_items=10, require_reviewed=True)
    assert (tmp_path / "map.yaml").is_file()  # proposed and written for review


def test_stale_label_map_is_refused(tmp_path: Path) -> None:
    src, path = sources(), tmp_path / "map.yaml"
    load_or_create_label_map(path, src, BowEmbedder())
    renamed = dict(src, aud=FakeReader("audio", ["airplane", "dog", "sirens"]))
    with pytest.raises(StaleLabelMapError, match=r"stale for data set 'aud'.*gone: \['siren'\]"):
        load_or_create_label_map(path, renamed, RaisingEmbedder())
    with pytest.raises(StaleLabelMapError, match="made without data set 'new'"):
        build_modality_free_index(dict(src, new=FakeReader("thermal", ["person"])), path,
                                  embedder=BowEmbedder(), num_items=10)
    with pytest.raises(StaleLabelMapError, match="'tac' is thermal now"):
        load_or_create_label_map(path, dict(src, tac=FakeReader("thermal", ["wood", "metal"])))
    # building from a subset of the map's data sets is fine
    sub = {k: src[k] for k in ("img", "evt")}
    index = build_modality_free_index(sub, path, embedder=BowEmbedder(), num_items=50,
                                      proportions={2: 1.0})
    assert {m["dataset"] for it in index for m in it["members"] if "dataset" in m} == {"img",
                                                                                        "evt"}
    # a hand-typed label that the data set lacks
    data = yaml.safe_load(path.read_text())
    data["targets"][0]["sources"]["aud"] = [{"label": "airplanee"}]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(StaleLabelMapError, match=r"has no label 'airplanee' \(close: "
                                                 r"\['airplane'\]\)"):
        load_or_create_label_map(path, src)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: "a: [b", "not valid YAML"),
    (lambda d: {**d, "format": "something"}, "format must be"),
    (lambda d: {**d, "version": 7}, "version 7 is not supported"),
    (lambda d: {**d, "reviewed": "yes"}, "reviewed must be true or false"),
    (lambda d: {**d, "targets": [{**d["targets"][0], "status": "maybe"}]}, "status must be one"),
    (lambda d: {**d, "targets": [d["targets"][0], {**d["targets"][1], "sources": {
        **d["targets"][1]["sources"], "img": [{"label": "airplane"}]}}]},
     r"img label 'airplane' is also under target 'airplane'"),
    (lambda d: {**d, "targets": [{**d["targets"][0], "sources": {"xyz": ["a"]}}]},
     "data set 'xyz' is not declared"),
    (lambda d: {**d, "targets": [{**d["targets"][0], "sources": {"img": [
        {"label": "airplane", "similarity": "high"}]}}]}, "similarity must be a number"),
    (lambda d: {**d, "targets": [d["targets"][0], d["targets"][0]]}, "name also used by"),
    (lambda d: {**d, "datasets": {"img": {"modality": "smell", "num_labels": 1,
                                          "labels_sha1": "x"}}}, "modality 'smell'"),
])
def test_malformed_label_map_is_refused(tmp_path: Path, edit: Any, message: str) -> None:
    path = tmp_path / "map.yaml"
    load_or_create_label_map(path, sources(), BowEmbedder())
    new = edit(yaml.safe_load(path.read_text()))
    path.write_text(new if isinstance(new, str) else yaml.safe_dump(new, sort_keys=False))
    with pytest.raises(LabelMapError, match=message):
        load_or_create_label_map(path, sources(), RaisingEmbedder())


# --- sample level ------------------------------------------------------------------------------
class ColourCaptioner:
    identity = "fake-colour-captioner"

    def __init__(self) -> None:
        self.calls = 0

    def caption(self, sample: Any, modality: str) -> str:
        self.calls += 1
        return f"a {sample['colour']} object"


def _colour_agreement(index: Any, src: dict[str, FakeReader]) -> float:
    same = total = 0
    for it in index:
        anchor = next(m for m in it["members"] if m["modality"] == it["anchor"])
        colour = src[anchor["dataset"]][anchor["index"]][0]["colour"]
        for m in it["members"]:
            if m["modality"] not in ("text", it["anchor"]):
                total += 1
                same += src[m["dataset"]][m["index"]][0]["colour"] == colour
    return same / total


def test_captioner_drives_sample_level_matching(tmp_path: Path) -> None:
    src, emb = sources(), BowEmbedder()
    lmap = propose_label_map(src, emb)
    cache = tmp_path / "captions.jsonl"
    captioner = ColourCaptioner()
    kw = {"embedder": emb, "num_items": 300, "proportions": {3: 0.5, 4: 0.5}, "seed": 1}
    index = build_modality_free_index(src, lmap, tmp_path / "c.jsonl",
                                      describer=CaptionDescriber(captioner, cache_path=cache),
                                      **kw)
    assert _colour_agreement(index, src) == 1.0  # "a red object" matches "a red object"
    assert captioner.calls == sum(len(r) for r in src.values())  # each sample captioned once
    for it in index:
        anchor = next(m for m in it["members"] if m["modality"] == it["anchor"])
        colour = src[anchor["dataset"]][anchor["index"]][0]["colour"]
        text = next((m["text"] for m in it["members"] if m["modality"] == "text"), None)
        assert text in (None, f"a {colour} object")  # the item's text is the anchor's caption
        assert all(m.get("similarity", 1.0) > 0.99 for m in it["members"])
    # label templates carry no colour: agreement is about chance (1/3)
    plain = build_modality_free_index(src, lmap, **kw)
    assert _colour_agreement(plain, src) < 0.6
    # the caption cache is reused: no captioner call, same index
    again = build_modality_free_index(
        src, lmap, tmp_path / "d.jsonl",
        describer=CaptionDescriber(_NeverCaptioner(), cache_path=cache), **kw)
    assert again.items == index.items


class _NeverCaptioner:
    identity = "fake-colour-captioner"

    def caption(self, sample: Any, modality: str) -> str:
        raise AssertionError("captions should come from the cache")


# --- the index file ----------------------------------------------------------------------------
def test_index_file_round_trip_and_staleness(tmp_path: Path) -> None:
    src = sources()
    path = tmp_path / "index.jsonl"
    built = build_modality_free_index(src, propose_label_map(src, BowEmbedder()), path,
                                      embedder=BowEmbedder(), num_items=120)
    lines = path.read_text().splitlines()
    assert len(lines) == 121
    back = read_modality_free_index(path, src)
    assert back.items == built.items and back.header["num_items"] == 120
    assert back.header["sources"]["pts"]["modality"] == "point_cloud"
    assert back.header["size_counts"] == {"1": 7, "2": 55, "3": 18, "4": 19, "5": 21}
    arrays = back.member_arrays()
    present = np.stack([arrays[m]["present"] for m in
                        ("image", "text", "thermal", "event", "tactile", "audio", "point_cloud")])
    assert present.sum(0).tolist() == [len(it["modalities"]) for it in back]
    first = back.items[0]
    for m in first["members"]:
        if m["modality"] != "text":
            assert arrays[m["modality"]]["dataset"][0] == m["dataset"]
            assert arrays[m["modality"]]["index"][0] == m["index"]
    assert (arrays["thermal"]["index"] == -1).all()  # no thermal source here
    assert arrays["label"]["index"].tolist() == [it["label_index"] for it in back]
    fewer = dict(src, aud=FakeReader("audio", ["airplane", "dog", "siren"], 2))
    with pytest.raises(StaleIndexError, match="stale for data set 'aud': num_samples"):
        read_modality_free_index(path, fewer)
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(StaleIndexError, match="119 items, the header says 120"):
        read_modality_free_index(path)
    (tmp_path / "x.jsonl").write_text('{"a": 1}\n')
    with pytest.raises(StaleIndexError, match="not a modality-free index"):
        read_modality_free_index(tmp_path / "x.jsonl")


def test_repeated_label_names_get_keys(tmp_path: Path) -> None:
    # ImageNet-1K's first synonyms repeat "crane" (bird, machine) and "maillot"
    img = FakeReader("image", ["crane", "tench", "crane"], 4)
    img.wnids = ("n02012849", "n01440764", "n03126707")  # type: ignore[attr-defined]
    evt = FakeReader("event", ["crane", "tench", "crane"], 2)  # no wnids: label index
    src = {"img": img, "evt": evt}
    lmap = load_or_create_label_map(tmp_path / "map.yaml", src, BowEmbedder())
    keys = {key for t in lmap.targets for key in t.claimed()}
    assert keys == {("img", "crane [n02012849]"), ("img", "crane [n03126707]"),
                    ("img", "tench"), ("evt", "crane [#0]"), ("evt", "crane [#2]"),
                    ("evt", "tench")}
    # equal names pair in label order (N-ImageNet shares ImageNet's synset order)
    owner = target_of(lmap)
    assert owner[("img", "crane [n02012849]")] == owner[("evt", "crane [#0]")]
    assert owner[("img", "crane [n03126707]")] == owner[("evt", "crane [#2]")]
    assert owner[("img", "crane [n02012849]")] != owner[("img", "crane [n03126707]")]
    index = build_modality_free_index(src, tmp_path / "map.yaml", embedder=BowEmbedder(),
                                      num_items=60, proportions={2: 1.0})
    for it in index:
        for m in it["members"]:
            if m["modality"] == "image":
                wnid = img.wnids[img.labels[m["index"]]]  # type: ignore[attr-defined]
                assert m["source_label"] in ("tench", f"crane [{wnid}]")
