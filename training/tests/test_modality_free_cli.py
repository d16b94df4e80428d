"""``omnibind-train modality-free`` on tiny published-format copies of ESC-50, ShapeNet-part,
Caltech-101 and N-Caltech101, with the real text teacher (all-MiniLM-L6-v2, offline).

The command is the builder's API behind flags: propose the label map, stop for review, refuse an
unreviewed map when asked, build the index with the paper's shares, recompute a map's undecided
targets, and read every source and setting of a split from the paper config. Errors a user can
fix are one line with exit status 2.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_modality_free_minilm import _caltech, _esc50, _shapenet

from omnibind_train.cli import main
from omnibind_train.datasets import ESC50, Caltech101, NCaltech101, ShapeNetPart
from omnibind_train.datasets.modality_free import (
    EncoderTextEmbedder,
    LabelMap,
    build_modality_free_index,
    read_modality_free_index,
)
from omnibind_train.datasets.modality_free.cli import parse_proportions, parse_source

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper_omnibind.yaml"


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny data sets laid out as the paper config expects them under one DATA_ROOT."""
    base = tmp_path_factory.mktemp("mf_cli_data")
    _caltech(base / "caltech101" / "101_ObjectCategories", ".jpg")
    _caltech(base / "N-Caltech101" / "Caltech101", ".bin")
    return {"base": base,
            "esc50": _esc50(base / "ESC-50"),
            "shapenet": _shapenet(base / "shapenetcore_partanno_segmentation_benchmark_v0_normal"),
            "caltech": base / "caltech101", "ncaltech": base / "N-Caltech101"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache for every run: MiniLM runs on the first texts only."""
    return tmp_path_factory.mktemp("mf_cli_cache") / "text.npz"


def _sources(roots: dict[str, Path]) -> list[str]:
    return ["--source", f"esc50={roots['esc50']}:folds=1,2,3,4,5",
            "--source", f"shapenetpart={roots['shapenet']}:split=train",
            "--source", f"cal={roots['caltech']}:reader=caltech101:split=all",
            "--source", f"ncal={roots['ncaltech']}:reader=ncaltech101:split=all"]


def test_source_and_proportion_parsing() -> None:
    assert parse_source("esc50=/data/ESC-50:folds=1,2,3,4") == (
        "esc50", "esc50", "/data/ESC-50", {"folds": [1, 2, 3, 4]})
    assert parse_source("cal=/d/x:y:reader=caltech101:split=train:seed=3") == (
        "cal", "caltech101", "/d/x:y", {"split": "train", "seed": 3})
    assert parse_source("esc50=/data/ESC-50:folds=5:esc10=true")[3] == {"folds": 5,
                                                                        "esc10": True}
    with pytest.raises(ValueError, match="KEY=ROOT"):
        parse_source("/data/ESC-50")
    assert parse_proportions("2=0.46,3=0.15") == {2: 0.46, 3: 0.15}
    with pytest.raises(ValueError, match="SIZE=WEIGHT"):
        parse_proportions("2:0.46")


def test_propose_review_build(roots, cache, tmp_path, capsys) -> None:
    lmap_path, out = tmp_path / "labelmap.yaml", tmp_path / "train_index.jsonl"
    common = [*_sources(roots), "--label-map", str(lmap_path), "--embedding-cache", str(cache),
              "--threads", "1"]
    # 1. propose only: the map is written, no index
    assert main(["modality-free", *common, "--propose-only"]) == 0
    said = capsys.readouterr().out
    assert "used targets" in said and "reviewed: false" in said and "review it" in said
    assert lmap_path.exists() and not out.exists()
    lmap = LabelMap.read(lmap_path)
    owner = {key: t.name for t in lmap.used_targets() for key in t.claimed()}
    assert owner[("esc50", "airplane")] == owner[("shapenetpart", "Airplane")] \
        == owner[("cal", "airplanes")] == owner[("ncal", "airplanes")]

    # 2. an unreviewed map is refused when a reviewed one is required
    build = [*common, "--out", str(out), "--num-items", "300", "--seed", "0"]
    assert main(["modality-free", *build, "--require-reviewed"]) == 2
    assert "not reviewed" in capsys.readouterr().err and not out.exists()

    # 3. the person reviews it (accepts the airplane target, marks it reviewed): built as edited
    data = yaml.safe_load(lmap_path.read_text())
    data["reviewed"] = True
    for t in data["targets"]:
        if ("esc50", "airplane") in [(d, m["label"]) for d, ms in t["sources"].items()
                                     for m in ms]:
            t["status"] = "accepted"
    lmap_path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["modality-free", *build, "--require-reviewed"]) == 0
    said = capsys.readouterr().out
    assert f"{out}: 300 items" in said and "size shares 1: 6.0%, 2: 46.0%, 3: 15.0%" in said
    src = {"esc50": ESC50(roots["esc50"], folds=[1, 2, 3, 4, 5]),
           "shapenetpart": ShapeNetPart(roots["shapenet"], split="train"),
           "cal": Caltech101(roots["caltech"], split="all"),
           "ncal": NCaltech101(roots["ncaltech"], split="all")}
    index = read_modality_free_index(out, src)
    shares = index.size_proportions()
    for k, share in {1: 0.06, 2: 0.46, 3: 0.15, 4: 0.16, 5: 0.17}.items():
        assert abs(shares[k] - share) <= 0.005, (k, shares)
    assert index.header["label_map"]["reviewed"] is True
    # the command is the builder's API: same sources, map and seed -> the same items
    api = build_modality_free_index(src, lmap_path, None,
                                    embedder=EncoderTextEmbedder(cache_path=cache),
                                    num_items=300, seed=0)
    assert api.items == index.items

    # 4. recompute keeps the decided targets verbatim (the whole reviewed map here)
    before = LabelMap.read(lmap_path)
    assert main(["modality-free", *common, "--recompute-map", "--propose-only"]) == 0
    assert LabelMap.read(lmap_path).targets == before.targets


@pytest.mark.parametrize("args, message", [
    (["--source", "esc51=/nowhere"], "unknown data set 'esc51'"),
    (["--source", "esc50=/nowhere/ESC-50"], "/nowhere/ESC-50"),
    (["--source", "esc50={esc50}:split=train"], "unexpected keyword argument 'split'"),
    (["--source", "esc50={esc50}:folds=7"], "fold"),
    ([], "no sources"),
    (["--source", "esc50={esc50}", "--set", "seed=1"], "--set needs --config"),
])
def test_user_errors_are_one_line(roots, tmp_path, capsys, args, message) -> None:
    args = [a.format(esc50=roots["esc50"]) for a in args]
    code = main(["modality-free", *args, "--label-map", str(tmp_path / "m.yaml"),
                 "--out", str(tmp_path / "i.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.startswith("omnibind-train modality-free: error:") and err.count("\n") == 1


def test_split_from_the_paper_config(roots, cache, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DATA_ROOT", str(roots["base"]))
    config = ["--config", str(PAPER), "--split", "train",
              "--set", "data.modality_free.train.sources=[esc50_train, shapenetpart_train, "
                       "caltech101_train, ncaltech101_train]",
              "--set", "data.sources.caltech101_train.options={split: all}",
              "--set", "data.sources.ncaltech101_train.options={split: all}",
              "--set", "data.sources.shapenetpart_train.options={split: train}",
              "--set", "data.modality_free.require_reviewed=false",
              "--set", f"data.modality_free.embedding_cache={cache}"]
    # MF_DIR unset: named before anything is read
    assert main(["modality-free", *config, "--num-items", "200"]) == 2
    assert "MF_DIR is not set" in capsys.readouterr().err
    monkeypatch.setenv("MF_DIR", str(tmp_path / "mf"))
    assert main(["modality-free", *config, "--num-items", "200"]) == 0
    out = tmp_path / "mf" / "train_index.jsonl"
    assert f"{out}: 200 items" in capsys.readouterr().out
    assert (tmp_path / "mf" / "labelmap.yaml").exists()
    header = read_modality_free_index(out).header
    assert sorted(header["sources"]) == ["caltech101_train", "esc50_train", "ncaltech101_train",
                                         "shapenetpart_train"]
    assert header["sources"]["esc50_train"]["selection"] == [1, 2, 3, 4]
    # a missing root of the split is named with its config key
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "empty"))
    assert main(["modality-free", *config]) == 2
    err = capsys.readouterr().err
    assert "data.sources.esc50_train.root" in err and "does not exist" in err
