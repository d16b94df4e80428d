"""A100 time of the paper config (``training/configs/paper_omnibind.yaml``), estimated from FLOP
counts on the CPU (no GPU needed).

Method
------
1. **FLOPs per sample per stage** are counted with ``torch.utils.flop_counter.FlopCounterMode``
   (2 FLOPs per multiply-add; matmuls, convolutions and attention batched matmuls; element-wise
   ops are not counted) on the config's encoders built at paper size:

   * the big towers (open_clip ViT-L/14 image / thermal / event / tactile trunks at 224 px, the
     CLIP ViT-L/14 text tower at its 77-token context, the audio EfficientNet-Lite0, the
     PointNet) run on the ``meta`` device: shapes only, nothing is computed or allocated. When
     the config's checkpoint resolves (``paths.CKPT_DIR`` / ``$CKPT_DIR``) its architecture is
     used; otherwise open_clip's published ViT-L-14 architecture (documented below);
   * a CAD optimiser step (``train_cad``, head forward + backward + the CAD loss over the
     student's global batch, i.e. its ``k x k`` matrices) and an AF step (``train_fusion``,
     attention head + Eq. 9 + the per-modality label predictions for the negatives, over the
     global batch of 512) run for real on small CPU tensors at the paper's batch sizes and
     embedding width; per-sample FLOPs = step FLOPs / batch.

2. **Samples per stage** from the config: each CAD student's data set (``data.cad``) at the
   scale Table 1 of the paper gives (upper bounds: the training splits are smaller), its
   ``loop.epochs`` (20, Table 10) with ``schedule: per_student``; the modality-free index's
   ``num_items`` (train 50,080 + test) with its size shares, every item member embedded once;
   AF ``loop.epochs`` (10). Members per modality assume modality sets uniform over the seven
   modalities (a k-modality item holds a given modality with probability k/7).

3. **Time** = FLOPs / (peak x utilisation): an A100's dense bf16 tensor-core peak is 312 TFLOPS;
   the default assumed sustained utilisation is 40 % (``--utilisation``), i.e. 124.8 TFLOPS.
   Two schedules are reported: *cached* (this pipeline: frozen trunks and teachers run once per
   sample, the heads train on cached features) and *uncached* (the frozen towers re-run every
   epoch, as the paper's appendix code does: ``embeddings = self.backbone(inputs)`` each step).

What it does not count: data loading and decoding (JPEG, event files, audio), the modality-free
builder's text embeddings (label-template descriptions dedupe to at most a few thousand texts),
evaluation, element-wise ops; small heads run far below 40 % utilisation (they are
latency/memory bound), so their rows are lower bounds -- they are also negligible.

Usage::

    .venv/bin/python benchmarks/bench_train_scale.py [--utilisation 0.4] [--gpus 8]
        [--json benchmarks/results/train_scale_a100_estimate.json] [--audio-point-as-vit]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "training")]

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

A100_BF16_PEAK = 312e12
#: Table 1 of seed 000: each source data set's scale (samples).
TABLE1_SCALE = {"imagenet": 1_280_000, "caltech101": 8_000, "shapenetpart": 16_000,
                "esc50": 2_000, "urbansound8k": 8_000, "llvip": 15_000,
                "nimagenet": 1_280_000, "ncaltech101": 8_000, "touchandgo": 13_900}
#: Classes of each data set (label prompts embedded once per class).
CLASSES = {"imagenet": 1000, "caltech101": 101, "shapenetpart": 16, "esc50": 50,
           "urbansound8k": 10, "llvip": 2, "nimagenet": 1000, "ncaltech101": 101,
           "touchandgo": 20}
#: open_clip's published ViT-L-14 architecture (model_configs/ViT-L-14.json).
VIT_L14_VISION = {"image_size": 224, "patch_size": 14, "width": 1024, "layers": 24,
                  "heads": 16, "mlp_ratio": 4.0, "embed_dim": 768}
VIT_L14_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 768, "layers": 12,
                "heads": 12, "mlp_ratio": 4.0, "embed_dim": 768}
MODALITIES = ("image", "text", "thermal", "event", "tactile", "audio", "point_cloud")


def count(fn) -> float:
    """FLOPs of ``fn()`` (forward and any backward it runs)."""
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


# --- encoders at paper size -----------------------------------------------------------------


def encoder_configs(cfg: Any, audio_point_as_vit: bool) -> tuple[dict[str, Any], str]:
    """The config's encoders; open_clip specs without a resolvable checkpoint get open_clip's
    published ViT-L-14 architecture."""
    from omnibind_train.models.registry import (
        EncoderConfig,
        HeadConfig,
        OpenClipTextTrunk,
        OpenClipVisionTrunk,
    )

    try:
        out, source = cfg.encoder_configs(), "the config's checkpoint"
    except (FileNotFoundError, ValueError):
        out, source = {}, "open_clip ViT-L-14 architecture (no checkpoint resolved)"
        dim = VIT_L14_TEXT["embed_dim"]
        for m, spec in cfg.encoders.items():
            if isinstance(spec, dict) and "open_clip" in spec:
                act = spec.get("act", "quick_gelu")
                if spec.get("tower", "text" if m == "text" else "vision") == "text":
                    out[m] = EncoderConfig(m, OpenClipTextTrunk(act=act, **VIT_L14_TEXT),
                                           HeadConfig(kind="identity"), dim)
                else:
                    head = spec.get("head", "mlp")
                    head = HeadConfig(kind=head) if isinstance(head, str) else HeadConfig(**head)
                    out[m] = EncoderConfig(m, OpenClipVisionTrunk(act=act, **VIT_L14_VISION),
                                           head, dim)
            else:
                out[m] = EncoderConfig.from_dict({"modality": m, "embed_dim": dim, **spec})
    if audio_point_as_vit:  # UniBind-size audio / point towers: a ViT-L/14-class forward
        from copy import deepcopy

        for m in ("audio", "point_cloud"):
            c = deepcopy(out["thermal"])
            c.modality = m
            out[m] = c
            out[m].trunk.frozen = True
        source += "; audio and point cloud counted as ViT-L/14 towers (--audio-point-as-vit)"
    return out, source


def input_shape(m: str, enc_cfg: Any, preprocess: dict[str, dict[str, Any]]) -> tuple:
    from omnibind_ros.core.preprocess import build_config, build_preprocessor

    if m == "text":
        return (int(enc_cfg.trunk.context_length),)
    if enc_cfg.trunk.kind == "open_clip_vision":
        size = int(enc_cfg.trunk.image_size)
        return (3, size, size)
    return tuple(build_preprocessor(m, build_config(m, preprocess.get(m) or None).to_dict())
                 .output_shape)


def tower_flops(enc_cfg: Any, shape: tuple, *, backward: bool) -> float:
    """FLOPs per sample of the whole encoder (trunk + head) on the meta device."""
    from omnibind_train.models import build_encoder

    with torch.device("meta"):
        enc = build_encoder(enc_cfg, load_weights=False)
        if shape and len(shape) == 1:  # token ids
            x = torch.zeros((2, *shape), dtype=torch.long)
        else:
            x = torch.zeros((2, *shape))

        def run() -> None:
            if backward:
                enc(x).sum().backward()
            else:
                with torch.no_grad():
                    enc(x)

        return count(run) / 2


def head_flops(enc_cfg: Any) -> float:
    """Forward FLOPs per sample of the head alone (on cached trunk features)."""
    from omnibind_train.models.heads import projection_head

    h = enc_cfg.head
    with torch.device("meta"):
        head = projection_head(kind=h.kind, in_dim=enc_cfg.trunk.output_dim,
                               out_dim=enc_cfg.embed_dim, hidden_dim=h.hidden_dim,
                               layer_norm=h.layer_norm, dropout=0.0)
        x = torch.zeros(2, enc_cfg.trunk.output_dim)
        with torch.no_grad():
            return count(lambda: head(x)) / 2


# --- training steps, for real on small CPU tensors --------------------------------------------


def cad_step_flops(cad: Any, student: str, enc_cfg: Any, batch: int) -> float:
    """FLOPs of one CAD optimiser step on cached features (head fwd + bwd + CAD loss over the
    global batch), per sample."""
    from omnibind_train.models import build_encoder
    from omnibind_train.models.registry import EncoderConfig, PointNetTrunk
    from omnibind_train.trainers import StudentData, train_cad

    feat = enc_cfg.trunk.output_dim
    cfg = EncoderConfig(student, PointNetTrunk(widths=(feat,), frozen=True), enc_cfg.head,
                        enc_cfg.embed_dim)  # a stand-in trunk: only the head runs on features
    enc = build_encoder(cfg, load_weights=False)
    d = enc_cfg.embed_dim
    gen = torch.Generator().manual_seed(0)
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=gen), dim=-1)  # noqa
    data = {student: StudentData(torch.randn(1, batch, feat, generator=gen),
                                 torch.ones(batch, dtype=torch.bool))}
    step_cfg = cad.replace(students=[student], batch_size={student: batch},
                           loop=cad.loop.replace(epochs=1, amp=False, ckpt_every=0))
    flops = count(lambda: train_cad({student: enc}, data, unit(batch, d), unit(batch, d),
                                     torch.ones(batch, dtype=torch.bool),
                                     torch.arange(batch) % 10, step_cfg, progress=False))
    return flops / batch


def af_step_flops(af: Any, num_labels: int, batch: int, members: float) -> float:
    """FLOPs of one AF optimiser step (attention head fwd + bwd, Eq. 9, the per-modality label
    predictions for the negatives) over the global batch, per item."""
    from omnibind_train.models.fusion import MODALITY_SLOTS
    from omnibind_train.trainers import FusionData, train_fusion

    d = af.fusion.dim
    gen = torch.Generator().manual_seed(0)
    k = max(1, round(members))
    emb = {m: torch.nn.functional.normalize(torch.randn(batch, d, generator=gen), dim=-1)
           for m in MODALITY_SLOTS}
    present = {m: torch.ones(batch, dtype=torch.bool) for m in MODALITY_SLOTS}
    labels = torch.arange(batch) % num_labels
    records = [(i, list(MODALITY_SLOTS[(i + j) % len(MODALITY_SLOTS)] for j in range(k)))
               for i in range(batch)]
    data = FusionData.build(emb, present, labels, records)
    label_emb = torch.nn.functional.normalize(torch.randn(num_labels, d, generator=gen), dim=-1)
    cfg = af.replace(loop=af.loop.replace(epochs=1, amp=False, ckpt_every=0))
    head = cfg.fusion.build()
    return count(lambda: train_fusion(head, data, label_emb, cfg, progress=False)) / batch


# --- the estimate -------------------------------------------------------------------------------


def estimate(cfg: Any, *, utilisation: float, audio_point_as_vit: bool) -> dict[str, Any]:
    from omnibind_train.datasets import READERS

    t0 = time.perf_counter()
    encs, arch_source = encoder_configs(cfg, audio_point_as_vit)
    pre = cfg.data.preprocess
    fwd = {m: tower_flops(c, input_shape(m, c, pre), backward=False) for m, c in encs.items()}
    heads = {m: head_flops(c) for m, c in encs.items()}
    rows: list[dict[str, Any]] = []

    def row(stage: str, what: str, samples: float, passes: int, per_sample: float,
            cached_passes: int | None = None) -> None:
        rows.append({"stage": stage, "what": what, "samples": int(round(samples)),
                     "passes": passes, "gflop_per_sample": per_sample / 1e9,
                     "passes_cached": passes if cached_passes is None else cached_passes})

    cad, af = cfg.cad, cfg.af
    image_fwd = fwd["image"]
    text_fwd = fwd["text"]
    for m in cad.students:
        src = cfg.data.cad[m]
        reader = cfg.data.sources[src.source].reader_class()
        key = next(k for k, v in READERS.items() if v is reader)
        n = TABLE1_SCALE[key]
        epochs = cad.loop.epochs
        batch = cad.student_batch_size(m)
        steps_epoch = n // batch
        trainable_trunk = not encs[m].trunk.frozen
        if trainable_trunk:
            per = tower_flops(encs[m], input_shape(m, encs[m], pre), backward=True)
            row("CAD", f"{m}: trunk+head fwd+bwd ({key}, batch {batch})", n, epochs, per)
        else:
            trunk = fwd[m] - heads[m]
            row("CAD", f"{m}: frozen trunk fwd ({key})", n, epochs, trunk, cached_passes=1)
        step = cad_step_flops(cad, m, encs[m], batch)
        row("CAD", f"{m}: head fwd+bwd + CAD loss (global batch {batch}, "
                   f"{steps_epoch} steps/epoch)", n, epochs, step)
        if src.image is not None:
            row("CAD", f"{m}: image teacher fwd (paired images)", n, epochs, image_fwd,
                cached_passes=1)
        row("CAD", f"{m}: text teacher fwd (label prompts, {CLASSES[key]} classes)",
            CLASSES[key], 1, text_fwd)
    mf = cfg.data.modality_free
    props = {int(k): float(v) for k, v in mf.proportions.items()}
    total = sum(props.values())
    mods = 7 if mf.include_text else 6
    for split in ("train", "test"):
        items = mf.split(split).num_items
        for m in MODALITIES:
            if m == "text" and not mf.include_text:
                continue
            members = sum(items * w / total * k / mods for k, w in props.items())
            row("AF", f"embed {split} index members: {m}", members, af.loop.epochs
                if split == "train" else 1, fwd[m], cached_passes=1)
    avg_members = sum(w / total * k for k, w in props.items())
    num_labels = 1200  # order of the modality-free label set (ImageNet's 1000 + the rest)
    step = af_step_flops(af, num_labels, af.loop.batch_size, avg_members)
    row("AF", f"AF head fwd+bwd + Eq. 9 (global batch {af.loop.batch_size}, "
              f"~{num_labels} labels, {avg_members:.2f} members/item)",
        mf.train.num_items, af.loop.epochs, step)

    eff = A100_BF16_PEAK * utilisation
    for r in rows:
        per = r["gflop_per_sample"] * 1e9
        r["pflop_cached"] = per * r["samples"] * r["passes_cached"] / 1e15
        r["pflop_uncached"] = per * r["samples"] * r["passes"] / 1e15
        r["a100_hours_cached"] = r["pflop_cached"] * 1e15 / eff / 3600
        r["a100_hours_uncached"] = r["pflop_uncached"] * 1e15 / eff / 3600
    totals = {}
    for key in ("cached", "uncached"):
        for stage in ("CAD", "AF"):
            totals[f"{stage}_{key}_pflop"] = sum(r[f"pflop_{key}"] for r in rows
                                                 if r["stage"] == stage)
        totals[f"{key}_pflop"] = totals[f"CAD_{key}_pflop"] + totals[f"AF_{key}_pflop"]
        totals[f"{key}_a100_hours"] = totals[f"{key}_pflop"] * 1e15 / eff / 3600
    return {"config": "training/configs/paper_omnibind.yaml", "architecture": arch_source,
            "tower_forward_gflop": {m: v / 1e9 for m, v in fwd.items()},
            "a100_bf16_peak_tflops": A100_BF16_PEAK / 1e12, "utilisation": utilisation,
            "sustained_tflops": eff / 1e12, "rows": rows, "totals": totals,
            "sizes": "Table 1 scales (upper bounds of the training splits)",
            "counting_seconds": round(time.perf_counter() - t0, 1)}


def print_table(res: dict[str, Any], gpus: int) -> None:
    print(f"A100 estimate of {res['config']} ({res['architecture']})")
    print(f"  A100 bf16 peak {res['a100_bf16_peak_tflops']:.0f} TFLOPS x utilisation "
          f"{res['utilisation']:.0%} = {res['sustained_tflops']:.1f} TFLOPS sustained; "
          f"sizes: {res['sizes']}")
    print("  forward GFLOP/sample: " + ", ".join(
        f"{m} {v:.2f}" for m, v in res["tower_forward_gflop"].items()))
    head = (f"{'stage':5} {'what':78} {'samples':>9} {'ep':>3} {'GFLOP/smp':>9} "
            f"{'PFLOP':>9} {'A100 h':>8} {'PFLOP*':>9} {'A100 h*':>8}")
    print(head)
    print("-" * len(head))
    for r in res["rows"]:
        print(f"{r['stage']:5} {r['what'][:78]:78} {r['samples']:>9} {r['passes']:>3} "
              f"{r['gflop_per_sample']:>9.3f} {r['pflop_cached']:>9.3f} "
              f"{r['a100_hours_cached']:>8.3f} {r['pflop_uncached']:>9.3f} "
              f"{r['a100_hours_uncached']:>8.3f}")
    t = res["totals"]
    print("-" * len(head))
    hours = 1e3 / res["sustained_tflops"] / 3600  # A100 hours per PFLOP
    for stage in ("CAD", "AF"):
        cached, uncached = t[f"{stage}_cached_pflop"], t[f"{stage}_uncached_pflop"]
        print(f"{stage:5} {'total':78} {'':>9} {'':>3} {'':>9} {cached:>9.2f} "
              f"{cached * hours:>8.2f} {uncached:>9.2f} {uncached * hours:>8.2f}")
    print(f"{'all':5} {'total':78} {'':>9} {'':>3} {'':>9} {t['cached_pflop']:>9.2f} "
          f"{t['cached_a100_hours']:>8.2f} {t['uncached_pflop']:>9.2f} "
          f"{t['uncached_a100_hours']:>8.2f}")
    print("  PFLOP/A100 h: cached schedule (frozen towers run once per sample, as this "
          "pipeline does); PFLOP*/A100 h*: frozen towers re-run every epoch (the paper's "
          "appendix code)")
    print(f"  on {gpus} A100s (linear scaling): {t['cached_a100_hours'] / gpus * 60:.1f} min "
          f"cached, {t['uncached_a100_hours'] / gpus * 60:.1f} min uncached; data loading "
          "not counted")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "training/configs/paper_omnibind.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--utilisation", type=float, default=0.40,
                        help="assumed sustained fraction of the 312 TFLOPS bf16 peak")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--audio-point-as-vit", action="store_true",
                        help="count audio and point cloud as ViT-L/14 towers (UniBind-size)")
    parser.add_argument("--json", type=Path,
                        default=REPO / "benchmarks/results/train_scale_a100_estimate.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from omnibind_train.pipeline.paper import PaperOmniBindConfig

    cfg = PaperOmniBindConfig.from_yaml(args.config, args.overrides)
    res = estimate(cfg, utilisation=args.utilisation, audio_point_as_vit=args.audio_point_as_vit)
    res["gpus"] = args.gpus
    print_table(res, args.gpus)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
        print(f"wrote {args.json}")
    assert all(math.isfinite(r["pflop_cached"]) for r in res["rows"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
