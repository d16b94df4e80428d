"""``training/configs/paper_omnibind.yaml``: seed 000's Table 10 as the trainers' configs.

* the file parses (without data or checkpoints) and holds Table 10's values, checked against
  constants copied from the paper and, where the paper's text is at hand, against the table
  itself;
* every value the paper does not give carries a ``CHOICE`` comment;
* per-student learning rates and batch sizes reach the CAD trainer: the batches it draws per
  student have Table 10's sizes, its optimiser groups Table 10's learning rates, and each
  student takes ``epochs`` passes over its own samples (``schedule: per_student``);
* data roots: placeholders and missing roots are named when a stage needs them, not before;
  readers open on tiny published-format copies;
* a real teacher from a local open_clip checkpoint (tiny, random, open_clip's key layout)
  resolves through the model registry and computes what the checkpoint's towers compute.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from _reader_fixtures import tone, write_csv, write_wav
from test_trainers import F_DIM, C, D, centres_to_text, small_encoder

from omnibind_train.pipeline.paper import DataRootError, PaperOmniBindConfig
from omnibind_train.trainers import StudentData, train_cad
from omnibind_train.trainers import cad as cad_module

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "training" / "configs" / "paper_omnibind.yaml"
SEED_000 = sorted((REPO.parent / "shared" / "seeds").glob("000_*.txt"))

#: Table 10 of seed 000, copied from the paper: modality -> (data set, batch, lr, epochs).
TABLE_10 = {"tactile": ("Touch-and-Go", 512, 5e-4, 20),
            "thermal": ("LLVIP", 256, 1e-3, 20),
            "event": ("N-Caltech-101", 128, 5e-4, 20),
            "all": ("Modality-free", 512, 1e-3, 10)}
#: The reader each Table 10 data set is read with.
TABLE_10_READERS = {"tactile": "touchandgo", "thermal": "llvip", "event": "ncaltech101"}


@pytest.fixture(autouse=True)
def _no_placeholders_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATA_ROOT", "CKPT_DIR", "MF_DIR"):
        monkeypatch.delenv(name, raising=False)


def load(*overrides: str) -> PaperOmniBindConfig:
    return PaperOmniBindConfig.from_yaml(CONFIG, list(overrides))


# --- Table 10 -----------------------------------------------------------------------------------


def test_table_10_constants_match_the_papers_text() -> None:
    if not SEED_000:
        pytest.skip("seed 000's text is not next to the repository")
    text = SEED_000[0].read_text()
    rows = {}
    for line in text[:text.index("Table 10.")].splitlines()[-6:]:
        parts = line.split("\t")
        if len(parts) == 5 and parts[0] != "Modality":
            rows[parts[0]] = (parts[1], int(parts[2]), float(parts[3]), int(parts[4]))
    names = {"Touch": "tactile", "Thermal": "thermal", "Event": "event", "All": "all"}
    got = {names[k]: (ds.replace(" [65]", "").replace(" [24]", "").replace(" [43]", ""), *rest)
           for k, (ds, *rest) in rows.items()}
    assert got == TABLE_10


def test_paper_config_parses_with_table_10() -> None:
    cfg = load()
    cad, af = cfg.cad, cfg.af
    for m in ("tactile", "thermal", "event"):
        _, batch, lr, epochs = TABLE_10[m]
        assert cad.student_batch_size(m) == batch, m
        assert cad.lr[m] == lr, m
        assert cad.loop.epochs == epochs
        assert cfg.data.sources[cfg.data.cad[m].source].reader == TABLE_10_READERS[m]
    assert cad.schedule == "per_student"  # 20 epochs of each student's own data set
    assert set(cad.students) == {"tactile", "thermal", "event", "audio", "point_cloud"}
    # students Table 10 does not list: the global defaults
    assert cad.student_batch_size("audio") == cad.loop.batch_size
    assert "audio" not in cad.lr
    _, batch, lr, epochs = TABLE_10["all"]
    assert (af.loop.batch_size, af.optim.lr, af.loop.epochs) == (batch, lr, epochs)
    assert cad.weighting == "paper_eq7" and cad.terms == ["in", "cr", "se"]
    assert af.negatives
    mf = cfg.data.modality_free
    assert mf is not None and mf.train.num_items == 50_080
    assert {k: round(v, 2) for k, v in mf.proportions.items() if k >= 2} == {
        2: 0.46, 3: 0.15, 4: 0.16, 5: 0.17}
    assert len({cfg.data.sources[k].reader for k in mf.train.sources}) == 9
    # the existing trainers' configs carry it (no checkpoint needed without encoders)
    pipeline = cfg.pipeline_config(resolve_encoders=False)
    assert pipeline.cad.batch_size == cad.batch_size and pipeline.af.loop.batch_size == 512


CHOICE_KEYS = ("weight_decay", "betas", "warmup_frac", "schedule", "grad_clip", "temperature",
               "learn_temperature", "kd_temperature", "steps_per_visit", "point_subsample",
               "random_subset_prob", "precision", "num_heads", "text_encoder")


def test_every_value_the_paper_does_not_give_is_marked() -> None:
    lines = CONFIG.read_text().splitlines()
    unmarked = []
    for n, line in enumerate(lines):
        body = line.split("#", 1)[0]
        key = re.match(r"\s*([a-z_]+):\s*\S", body)
        if key and key.group(1) in CHOICE_KEYS and "num_heads" not in body:
            comment = line.split("#", 1)[1] if "#" in line else ""
            nxt = lines[n + 1] if n + 1 < len(lines) else ""
            if not re.search(r"\b(CHOICE|PAPER)\b", comment + nxt):
                unmarked.append(line.strip())
    assert not unmarked, f"values without a CHOICE/PAPER mark: {unmarked}"
    text = CONFIG.read_text()
    assert re.search(r"fusion: \{.*num_heads.*\}.*\n.*heads CHOICE", text)
    assert text.count("CHOICE") >= 25


# --- per-student values reach the CAD trainer ---------------------------------------------------


def _cad_data(n: int) -> tuple[dict, dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    from _tiny import clustered

    _, labels, centres = clustered(n, C, F_DIM)
    text = centres_to_text(centres)[labels]
    image = torch.nn.functional.normalize(text + 0.1 * torch.randn(n, D), dim=-1)
    ones = torch.ones(n, dtype=torch.bool)
    students, data = {}, {}
    for i, m in enumerate(("tactile", "thermal", "event", "audio")):
        feats, _, _ = clustered(n, C, F_DIM, noise=0.5, seed=i + 1, centres=centres)
        students[m] = small_encoder(m)
        data[m] = StudentData(feats.unsqueeze(0), ones)
    return students, data, text, image, labels


def test_per_student_batch_sizes_and_lrs_reach_the_cad_trainer(monkeypatch) -> None:
    cfg = load().cad
    # the paper's values, one epoch, feature students (no point cloud: its trunk trains)
    cfg = cfg.replace(students=["tactile", "thermal", "event", "audio"],
                      loop=cfg.loop.replace(epochs=1, ckpt_every=0, amp=False))
    n = 1024
    students, data, text, image, labels = _cad_data(n)
    part_of = {id(enc.head): m for m, enc in students.items()}
    drawn: list[tuple[str, int]] = []
    forward = cad_module.StudentLoss.forward

    def spy(self, x, text, image):
        drawn.append((part_of[id(self.part)], x.shape[0]))
        return forward(self, x, text, image)

    groups: dict[str, float] = {}
    make_optimizer = cad_module.make_optimizer

    def spy_optimizer(param_groups, optim, total):
        for g in param_groups:
            groups[g["name"]] = g["lr"]
        return make_optimizer(param_groups, optim, total)

    monkeypatch.setattr(cad_module.StudentLoss, "forward", spy)
    monkeypatch.setattr(cad_module, "make_optimizer", spy_optimizer)
    res = train_cad(students, data, text, image, torch.ones(n, dtype=torch.bool), labels, cfg,
                    progress=False)
    sizes = {m: {b for s, b in drawn if s == m} for m in students}
    assert sizes == {"tactile": {512}, "thermal": {256}, "event": {128}, "audio": {256}}
    # one pass over each student's own samples: n // batch steps each
    assert Counter(s for s, _ in drawn) == {"tactile": 2, "thermal": 4, "event": 8, "audio": 4}
    assert res.steps == len(drawn) == 18
    assert groups == {"tactile": 5e-4, "thermal": 1e-3, "event": 5e-4, "audio": 1e-3}
    # the visits interleave (random order per round), not one student after the other
    order = [s for s, _ in drawn]
    assert order[:4] != sorted(order[:4]) or len(set(order[:4])) == 4


def test_rounds_schedule_keeps_every_student_in_every_round(monkeypatch) -> None:
    cfg = load().cad
    cfg = cfg.replace(students=["tactile", "event"], schedule="rounds",
                      batch_size={"tactile": 64, "event": 16},
                      loop=cfg.loop.replace(epochs=1, ckpt_every=0, amp=False))
    students, data, text, image, labels = _cad_data(128)
    students = {m: students[m] for m in cfg.students}
    res = train_cad(students, data, text, image, torch.ones(128, dtype=torch.bool), labels, cfg,
                    progress=False)
    # rounds = the largest number of batches per epoch (event: 8), every student each round
    assert res.steps == 2 * 8


def test_batch_size_errors_name_the_student() -> None:
    with pytest.raises(ValueError, match=r"unknown student\(s\) \['touch'\]"):
        load("cad.batch_size.touch=512")
    with pytest.raises(ValueError, match="cad.batch_size.event must be a positive integer"):
        load("cad.batch_size.event=0")
    with pytest.raises(ValueError, match="cad.schedule"):
        load("cad.schedule=each")


# --- data roots ---------------------------------------------------------------------------------


def _esc50(root: Path) -> Path:
    rows = []
    for target, cat in enumerate(["dog", "rooster"]):
        for k in range(5):
            fname = f"{k + 1}-{100 * target + k}-A-{target}.wav"
            write_wav(root / "audio" / fname, tone(0.05, 8000, 300 + 50 * target), 8000)
            rows.append((fname, k + 1, target, cat, False, f"{k}.ogg", "A"))
    write_csv(root / "meta" / "esc50.csv",
              ("filename", "fold", "target", "category", "esc10", "src_file", "take"), rows)
    return root


def test_config_validates_without_data_and_names_what_a_stage_lacks(tmp_path,
                                                                     monkeypatch) -> None:
    cfg = load()  # no DATA_ROOT, no data: loads
    with pytest.raises(DataRootError, match=r"DATA_ROOT is not set .*data\.sources\."
                                            r"touchandgo_train\.root"):
        cfg.require_stage("cad")
    with pytest.raises(DataRootError, match="DATA_ROOT is not set"):
        cfg.open_source("esc50_train")
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    problems = cfg.check_stage("cad")
    assert any(f"{tmp_path}/LLVIP does not exist" in p and "llvip_train" in p for p in problems)
    assert len(problems) == 6  # touchandgo, llvip, ncaltech101, caltech101, esc50, shapenetpart
    with pytest.raises(DataRootError, match=r"data\.sources\.esc50_train\.root: .*ESC-50 does "
                                            "not exist"):
        cfg.open_source("esc50_train")
    _esc50(tmp_path / "ESC-50")
    train, test = cfg.open_source("esc50_train"), cfg.open_source("esc50_test")
    assert (len(train), len(test)) == (8, 2) and train.folds == (1, 2, 3, 4)
    assert not any("esc50" in p for p in cfg.check_stage("cad"))
    # the config's value wins over the environment
    cfg2 = load(f"paths.DATA_ROOT={tmp_path / 'elsewhere'}")
    assert cfg2.source_root("esc50_train") == tmp_path / "elsewhere" / "ESC-50"
    # af also needs the built indices
    assert any("MF_DIR is not set" in p for p in cfg.check_stage("af"))


@pytest.mark.parametrize("override, message", [
    ("data.sources.esc50_train.options={split: train}", r"ESC50 has no option\(s\) \['split'\]"),
    ("data.sources.esc50_train.root=${DATAROOT}/ESC-50", r"\$\{DATAROOT\} is not declared"),
    ("data.sources.esc50_train.reader=esc-51", "unknown reader 'esc-51'"),
    ("data.cad.thermal.source=esc50_train", "'esc50_train' is audio data, not thermal"),
    ("data.cad.event.image=caltech_train", "'caltech_train' is not a key of data.sources"),
    ("data.modality_free.test.sources=[esc50_tset]", "'esc50_tset' is not a key"),
    ("encoders.thermal=thermal_resnet", "unknown registry name 'thermal_resnet'"),
    ("encoders.image.tower=audio", "tower must be vision or text"),
    ("family=binding", "family must be 'omnibind_paper'"),
])
def test_config_errors_are_named_at_load(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load(override)


def test_a_student_without_data_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"cad.students \['audio'\] have no data.cad entry"):
        load("data.cad={thermal: {source: llvip_train, image: paired}, "
             "event: {source: ncaltech101_train}, tactile: {source: touchandgo_train}, "
             "point_cloud: {source: shapenetpart_train}}")


# --- a real teacher from a local open_clip checkpoint -------------------------------------------


def _tiny_open_clip(path: Path) -> tuple[Any, Any]:
    """A random tiny CLIP in open_clip's published key layout (root text tower + visual.*)."""
    from safetensors.torch import save_file

    from omnibind_train.models.vit import TextTransformer, VisionTransformer

    torch.manual_seed(3)
    visual = VisionTransformer(image_size=32, patch_size=8, width=64, layers=2, heads=1,
                               embed_dim=16, act="gelu").eval()
    text = TextTransformer(context_length=12, vocab_size=100, width=64, layers=2, heads=1,
                           embed_dim=16, act="gelu").eval()
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    state.update(text.state_dict())
    state["logit_scale"] = torch.tensor(4.6052)
    path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return visual, text


def test_open_clip_teacher_through_the_registry(tmp_path, monkeypatch) -> None:
    from omnibind_train.models import build_encoder
    from omnibind_train.pipeline import Workspace

    small = [f"data.preprocess.{m}.size=32" for m in ("image", "thermal", "event", "tactile")]
    cfg = load("af.fusion.dim=16", "encoders.text.tokenizer=null", *small)
    with pytest.raises(DataRootError, match=r"encoders\.\w+\.open_clip = .*CKPT_DIR is not set"):
        cfg.encoder_configs()
    monkeypatch.setenv("CKPT_DIR", str(tmp_path))
    with pytest.raises(DataRootError, match=r"checkpoint .*open_clip_model.safetensors does "
                                            "not exist"):
        cfg.encoder_configs()
    visual, text = _tiny_open_clip(tmp_path / "ViT-L-14" / "open_clip_model.safetensors")
    configs = cfg.encoder_configs()
    assert {m: c.embed_dim for m, c in configs.items()} == {m: 16 for m in configs}
    assert configs["image"].trunk.kind == "open_clip_vision" and configs["image"].trunk.frozen
    assert configs["image"].head.kind == "identity" and configs["text"].trunk.kind == \
        "open_clip_text"
    assert configs["thermal"].modality == "thermal" and configs["thermal"].head.kind == "mlp"
    assert configs["image"].trunk.act == "gelu" and configs["image"].trunk.layers == 2

    # the pipeline's workspace builds the same encoders from pipeline_config()
    ws = Workspace(cfg.pipeline_config())
    assert ws.encoder_configs["image"].to_dict() == configs["image"].to_dict()
    assert ws.embed_dim == 16
    pixels = torch.randn(2, 3, 32, 32)
    image = build_encoder(ws.encoder_configs["image"]).eval()
    thermal = build_encoder(ws.encoder_configs["thermal"]).eval()
    txt = build_encoder(ws.encoder_configs["text"]).eval()
    ids = torch.tensor([[5, 17, 99, 0], [8, 99, 0, 0]])
    with torch.no_grad():
        want = torch.nn.functional.normalize(visual(pixels), dim=-1)
        torch.testing.assert_close(image(pixels), want)  # CLIP's own space: identity head
        torch.testing.assert_close(thermal.encode_trunk(pixels), visual(pixels))
        assert thermal(pixels).shape == (2, 16)
        torch.testing.assert_close(txt(ids), torch.nn.functional.normalize(text(ids), dim=-1))
    assert not any(p.requires_grad for p in thermal.trunk.parameters())
    assert all(p.requires_grad for p in thermal.head.parameters())
    # the preprocessing makes the ViT's input size
    assert ws.preprocess_configs["thermal"]["size"] == 32
    assert load().pipeline_config(resolve_encoders=False).data.preprocess["event"] == {
        "size": 224}
    with pytest.raises(ValueError, match=r"the ViT takes 32 px inputs but thermal's "
                                         r"preprocessing makes 224 px"):
        load("af.fusion.dim=16", "encoders.text.tokenizer=null",
             *[s for s in small if "thermal" not in s]).encoder_configs()
    # the fusion head must live in the teacher space
    with pytest.raises(ValueError, match="af.fusion.dim is 768 but the shared space"):
        load("encoders.text.tokenizer=null", *small).encoder_configs()


def test_omnibind_train_stage_commands_name_the_paper_config(capsys) -> None:
    from omnibind_train.cli import main

    # the stages run on the real data (test_paper_wiring.py); without DATA_ROOT: one line
    assert main(["cad", "--config", str(CONFIG)]) == 2
    err = capsys.readouterr().err
    assert "paper-scale OmniBind config" in err and "DATA_ROOT is not set" in err
    assert err.count("\n") == 1
