"""``omnibind-train eval | export --config training/configs/paper_omnibind.yaml`` on the tiny
published-format copies of :mod:`test_paper_wiring`, with test splits filled in (ESC-50 fold 5,
LLVIP test images, Touch-and-Go test.txt, ShapeNet-part's test list, the Caltech-101 /
N-Caltech101 seeded split at 2 train images per class) and a modality-free test index:

* eval: each student's zero-shot top-1 on its own data set's test split (the sources the config
  derives: esc50_test, llvip_test, ...), AF and the baselines' fused top-1 on the modality-free
  test index (the numbers ``af`` printed), report.md + results.json under the run directory;
* export: the bundle loads with ``load_bundle``; ONNX Runtime's embeddings of real test samples
  equal the torch modules' (image teacher, every student, the text teacher through the CLIP BPE
  tokenizer.json, the AF head), and its cached label embeddings equal training's.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _reader_fixtures import (
    flat_image,
    tone,
    voc_xml,
    write_csv,
    write_image,
    write_json,
    write_wav,
)
from test_modality_free_minilm import _caltech, _shapenet
from test_paper_wiring import (
    CONFIG,
    MF_SOURCES,
    TINY,
    StemEmbedder,
    _llvip,
    _tiny_open_clip,
)

from omnibind_train.cli import main
from omnibind_train.datasets.modality_free import build_modality_free_index
from omnibind_train.datasets.shapenet_part import SEG_CLASSES
from omnibind_train.pipeline.paper import PaperOmniBindConfig

MF_TEST = ["caltech101_test", "shapenetpart_test", "esc50_test", "llvip_test",
           "ncaltech101_test", "touchandgo_test"]
SPLIT = [f"data.sources.{k}.options={{split: {s}, seed: 0, train_per_class: 2}}"
         for k in ("caltech101_train", "caltech101_test", "ncaltech101_train",
                   "ncaltech101_test") for s in [k.rsplit("_", 1)[1]]]
SETS = [*TINY, *SPLIT, f"data.modality_free.test.sources=[{', '.join(MF_TEST)}]"]


def _esc50(root: Path) -> Path:
    rows = []
    for target, cat in enumerate(["dog", "airplane", "chirping_birds"]):
        for k in range(5):  # folds 1-5: fold 5 is the test split
            fname = f"{1 + k}-{1000 * target + k}-A-{target}.wav"
            write_wav(root / "audio" / fname, tone(0.05, 8000, 300 + 50 * target), 8000)
            rows.append((fname, 1 + k, target, cat, False, f"{k}.ogg", "A"))
    write_csv(root / "meta" / "esc50.csv",
              ("filename", "fold", "target", "category", "esc10", "src_file", "take"), rows)
    return root


def _shapenet_test(root: Path) -> None:
    cats = [("Airplane", "02691156"), ("Chair", "03001627"), ("Mug", "03797390")]
    rng = np.random.default_rng(1)
    test = []
    for name, syn in cats:
        shape = f"{syn[-3:]}t"
        xyz = rng.uniform(-0.5, 0.5, (50, 3))
        np.savetxt(root / syn / f"{shape}.txt",
                   np.column_stack([xyz, xyz, np.full(50, float(SEG_CLASSES[name][0]))]),
                   fmt="%.6f")
        test.append(f"shape_data/{syn}/{shape}")
    write_json(root / "train_test_split" / "shuffled_test_file_list.json", test)


def _llvip_test(root: Path) -> None:
    w, h = 64, 48
    for k in range(2):
        stem = f"02000{k}"
        ir = np.tile((np.arange(w) * 2 + 30 * k).astype(np.uint8), (h, 1))
        write_image(root / "infrared" / "test" / f"{stem}.jpg", np.repeat(ir[..., None], 3, 2))
        write_image(root / "visible" / "test" / f"{stem}.jpg", flat_image(h, w, (9, 90 * k, 50)))
        (root / "Annotations" / f"{stem}.xml").write_text(
            voc_xml(f"{stem}.jpg", w, h, [("person", 6 + 3 * k, 8, 18 + 3 * k, 30)]))


def _touch_and_go(root: Path) -> Path:
    train, test = [], []
    for v, video in enumerate(["20220318_020426", "20220511_164750"]):
        for f in range(3):
            name = f"{f:010d}.jpg"
            write_image(root / "dataset" / video / "gelsight_frame" / name,
                        flat_image(10, 14, (20 * f, 40 + 100 * v, 90)))
            write_image(root / "dataset" / video / "video_frame" / name,
                        flat_image(12, 16, (200, 30 * v, 40 * f)))
            (train if f else test).append(f"{video}/{name},{v + 3}")  # wood / metal
    (root / "label.txt").write_text("\n".join(train + test) + "\n")
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "test.txt").write_text("\n".join(test) + "\n")
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("paper_eval_export")
    data = base / "data"
    _caltech(data / "caltech101" / "101_ObjectCategories", ".jpg")
    _caltech(data / "N-Caltech101" / "Caltech101", ".bin")
    _esc50(data / "ESC-50")
    shapenet = _shapenet(data / "shapenetcore_partanno_segmentation_benchmark_v0_normal")
    _shapenet_test(shapenet)
    _llvip(data / "LLVIP")
    _llvip_test(data / "LLVIP")
    _touch_and_go(data / "touch_and_go")
    _tiny_open_clip(base / "ckpt" / "ViT-L-14" / "open_clip_model.safetensors")
    return {"data": data, "ckpt": base / "ckpt", "mf": base / "mf", "cache": base / "cache",
            "bundle": base / "bundle"}


@pytest.fixture
def paths(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("DATA_ROOT", str(env["data"]))
    monkeypatch.setenv("CKPT_DIR", str(env["ckpt"]))
    monkeypatch.setenv("MF_DIR", str(env["mf"]))
    return env


def _args(paths: dict[str, Path], *extra: str) -> list[str]:
    out = ["--config", str(CONFIG), "--cache-dir", str(paths["cache"]), "--device", "cpu"]
    for s in [*SETS, *extra]:
        out += ["--set", s]
    return out


def _run(paths: dict[str, Path]):
    from omnibind_train.pipeline.paper_run import PaperRun

    return PaperRun(PaperOmniBindConfig.from_yaml(
        CONFIG, [*SETS, f"cache_dir={paths['cache']}", "device=cpu"]))


@pytest.fixture(scope="module")
def trained(env: dict[str, Path]) -> dict[str, str]:
    """cad and af on the tiny copies, both modality-free indices built; the af output."""
    mp = pytest.MonkeyPatch()
    for name, key in (("DATA_ROOT", "data"), ("CKPT_DIR", "ckpt"), ("MF_DIR", "mf")):
        mp.setenv(name, str(env[key]))
    try:
        assert main(["cad", *_args(env)]) == 0
        cfg = PaperOmniBindConfig.from_yaml(CONFIG, SETS)
        build_modality_free_index({k: cfg.open_source(k) for k in MF_SOURCES},
                                  env["mf"] / "labelmap.yaml", env["mf"] / "train_index.jsonl",
                                  embedder=StemEmbedder(), num_items=60, seed=0)
        build_modality_free_index({k: cfg.open_source(k) for k in MF_TEST},
                                  env["mf"] / "labelmap_test.yaml",
                                  env["mf"] / "test_index.jsonl", embedder=StemEmbedder(),
                                  num_items=24, seed=1)
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["af", *_args(env)]) == 0
        return {"af": buf.getvalue()}
    finally:
        mp.undo()


def test_config_derives_each_students_test_split() -> None:
    cfg = PaperOmniBindConfig.from_yaml(CONFIG)
    assert {m: cfg.eval_source(m) for m in cfg.cad.students} == {
        "tactile": "touchandgo_test", "thermal": "llvip_test", "event": "ncaltech101_test",
        "audio": "esc50_test", "point_cloud": "shapenetpart_test"}
    cfg = PaperOmniBindConfig.from_yaml(CONFIG, ["data.eval={audio: urbansound8k_test}"])
    assert cfg.eval_source("audio") == "urbansound8k_test"
    with pytest.raises(ValueError, match="data.eval.audio: 'llvip_test' is thermal data"):
        PaperOmniBindConfig.from_yaml(CONFIG, ["data.eval={audio: llvip_test}"])


def test_eval_and_export_without_data_are_one_line(monkeypatch, capsys, tmp_path) -> None:
    for name in ("DATA_ROOT", "CKPT_DIR", "MF_DIR"):
        monkeypatch.delenv(name, raising=False)
    for cmd in ("eval", "export"):
        assert main([cmd, "--config", str(CONFIG), "--cache-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"stage {cmd} cannot run" in err and "DATA_ROOT is not set" in err, err
        assert err.count("\n") == 1


def test_eval_scores_each_student_on_its_test_split(paths, trained, capsys) -> None:
    assert main(["eval", *_args(paths)]) == 0
    out = capsys.readouterr().out
    print(out)
    for m, key, n in (("tactile", "touchandgo_test", 2), ("thermal", "llvip_test", 4),
                      ("event", "ncaltech101_test", 4), ("audio", "esc50_test", 3),
                      ("point_cloud", "shapenetpart_test", 3)):
        assert re.search(rf"\[eval\] {m}: {key} {n}/{n} samples, \d+ classes: zero-shot "
                         r"top-1 [0-9.]+", out), (m, out)
    # the fused scores are the ones af printed after training (same function, same heads)
    af_line = re.search(r"\[af\] test fused top-1 \(modality-free items\): (.*)",
                        trained["af"]).group(1)
    eval_line = re.search(r"\[eval\] modality-free test \(\d+ items\) fused top-1: (.*)",
                          out).group(1)
    assert eval_line == af_line
    run_dir = paths["cache"] / "runs" / "paper_omnibind" / "eval"
    res = json.loads((run_dir / "results.json").read_text())
    assert res["zero_shot_test"]["audio"]["source"] == "esc50_test"
    assert res["zero_shot_test"]["audio"]["options"] == {"folds": [5]}
    assert res["zero_shot_test"]["audio"]["train_source"] == "esc50_train"
    assert set(res["modality_free_test"]["fused_top1"]) == {"af", "mean", "linear", "concat"}
    assert res["modality_free_test"]["num_items"] == 24
    assert res["combinations"]["num_samples"] == 24
    assert res["meta"]["selection"].startswith("none")
    report = (run_dir / "report.md").read_text()
    assert "## Zero-shot per student on its data set's test split" in report
    assert "## Modality-free test index: fused top-1" in report
    assert "`esc50_test`" in report and "every subset of the items' modalities" in report

    # the numbers are what the modules compute
    run = _run(paths)
    from omnibind_train.pipeline.paper_eval import choose_on_val, student_zero_shot

    zs = student_zero_shot(run, "thermal")
    assert zs["top1"] == pytest.approx(res["zero_shot_test"]["thermal"]["top1"], abs=1e-4)
    with pytest.raises(ValueError, match="no finite 'val' score"):
        choose_on_val({"a": {"test": 0.9}, "b": {"test": 0.1}})
    assert choose_on_val({"a": {"val": 0.2, "test": 0.9},
                          "b": {"val": 0.3, "test": 0.1}})["chosen"] == "b"


def test_export_bundle_loads_and_onnx_runtime_equals_torch(paths, trained, capsys) -> None:
    from omnibind_ros.core.backends import create_backend
    from omnibind_ros.core.bundle import load_bundle
    from omnibind_train.data.text import embed_texts
    from omnibind_train.pipeline.paper_export import (
        clip_tokenizer,
        export_labels,
        sample_inputs,
    )

    out = paths["bundle"]
    assert main(["export", *_args(paths), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    print(printed)
    assert f"[export] bundle: {out}" in printed
    bundle = load_bundle(out)
    students = ["tactile", "thermal", "event", "audio", "point_cloud"]
    assert set(bundle.modality_names) == {"image", *students}
    run = _run(paths)
    names, where = export_labels(run)
    assert where == "modality-free train index target labels"
    assert bundle.label_names == tuple(names) and bundle.dim == 16
    assert bundle.preprocess_configs["thermal"].size == 32
    prov = bundle.provenance
    assert prov["source"] == "paper"
    assert len(prov["checkpoints"]["teachers"]["image"]["sha256"]) == 64
    assert prov["data_roots"]["esc50_test"] == str(paths["data"] / "ESC-50")
    assert prov["training_config"]["family"] == "omnibind_paper"

    ort = create_backend("onnxruntime", bundle, threads=1)
    pre = {m: bundle.preprocess_configs[m].to_dict() for m in bundle.modality_names}
    samples = sample_inputs(run, pre, 2)
    torch_enc = {"image": run.image_teacher_encoder(pretrained=True).eval(),
                 **{m: run.ws.load_encoder(m).eval() for m in students}}
    with torch.no_grad():
        for m, x in samples.items():
            want = torch_enc[m](x).numpy()
            np.testing.assert_allclose(ort.encode(m, x.numpy()), want, atol=1e-4, err_msg=m)
        # text: the runtime's tokenizer.json + graph vs the torch text teacher (CLIP BPE)
        text = run.ws.text_encoder
        text.tokenizer = clip_tokenizer(run)
        prompts = [run.cfg.data.label_prompt.format(n) for n in names[:3]]
        want = embed_texts(text, prompts, bundle.preprocess_configs["text"].to_dict())
        np.testing.assert_allclose(ort.embed_text(prompts), want.numpy(), atol=1e-4)
        # the cached labels are the ones training embedded (training's tokenizer)
        np.testing.assert_allclose(bundle.label_embeddings,
                                   _run(paths).label_embeddings(names).numpy(), atol=1e-4)
        # the AF head
        head = run.fusion_heads(["af"])["af"]
        tokens = torch.nn.functional.normalize(torch.randn(3, 4, 16), dim=-1)
        mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
        np.testing.assert_allclose(ort.fuse(tokens.numpy(), mask.numpy()),
                                   head(tokens, mask).numpy(), atol=1e-4)
