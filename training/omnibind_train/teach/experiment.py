"""The evidence for ``omnibind-train teach`` on the simulated world: a student taught from one
recording against the data set's.

Two helpers around a training run (``training/configs/sim_default.yaml``)::

    # a bundle that never had thermal: the run's encoders without it, and an AF head retrained
    # with thermal excluded from every combination (the run's own head was trained with it)
    python -m omnibind_train.teach.experiment base --drop thermal \\
        --out ~/.cache/omnibind_ros/bundles/default_no_thermal
    # zero-shot top-1 on the data set's test split: the run's CAD student (trained on the data
    # set) and the student of each bundle given
    python -m omnibind_train.teach.experiment zero-shot --modality thermal \\
        --bundle ~/.cache/omnibind_ros/bundles/taught_thermal

Why a retrained head for the base bundle: the AF head takes any set of tokens, so a head trained
with thermal tokens would carry what it learned from the data-set thermal student into the
"before" bundle; excluding thermal from stage II gives the head a robot that never had one.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..models.fusion import MODALITY_SLOTS
from ..pipeline import PipelineConfig, Workspace, sample_inputs
from ..pipeline.train_stages import student_accuracy
from ..trainers.af import checkpoint_logit_scale, train_fusion
from ..trainers.checkpoint import load_checkpoint
from ..trainers.common import derive_seed

__all__ = ["base_bundle", "main", "zero_shot_table"]


def _workspace(config: str, overrides: Sequence[str]) -> Workspace:
    return Workspace(PipelineConfig.from_yaml(config, list(overrides)))


def base_bundle(ws: Workspace, drop: str, out: Path) -> Path:
    """Export the run's encoders without ``drop`` and an AF head retrained without it."""
    from ..export import export_bundle

    mods = [m for m in MODALITY_SLOTS if m not in ("text", drop)]
    af = ws.fusion_config("af", {"modalities": [m for m in MODALITY_SLOTS if m != drop]})
    torch.manual_seed(derive_seed(ws.cfg.seed, "init-fusion", "af"))
    head = af.fusion.build()
    train, _ = ws.fusion_data("train")
    work = ws.cache_dir / "runs" / "teach" / f"{out.name}-base"
    train_fusion(head, train, ws.label_embeddings, af, seed=derive_seed(ws.cfg.seed, "af")
                 % 2 ** 31, run_dir=work / "af", progress=ws.progress)
    training = ws.cfg.to_dict()
    training["af"]["modalities"] = list(af.modalities)
    provenance = {"family": "cad_af", "pipeline": ws.cfg.name, "seed": ws.cfg.seed,
                  "dataset": ws.dataset_root.name, "dataset_fingerprint": ws.dataset_fp,
                  "derived": {"from_run": ws.cfg.name, "without": [drop],
                              "af_retrained_without": drop}, "training_config": training}
    return export_bundle(
        out, encoders={m: ws.load_encoder(m).cpu() for m in mods}, fusion=head.cpu(),
        fusion_config=af.fusion.to_dict(), text_encoder=ws.text_encoder.cpu(),
        label_names=list(ws.class_names),
        prompt_templates=list(ws.preprocess_configs["text"]["prompt_templates"]),
        label_embeddings=ws.label_embeddings,
        logit_scale=checkpoint_logit_scale(load_checkpoint(work / "af" / "final")),
        preprocess_configs={m: ws.preprocess_configs[m] for m in [*mods, "text"]},
        provenance=provenance, sample_inputs=sample_inputs(ws, mods, 2),
        exporter=ws.cfg.export.exporter, threads=torch.get_num_threads())


def zero_shot_table(ws: Workspace, modality: str, bundles: Sequence[Path], split: str = "test"
                    ) -> list[dict[str, Any]]:
    """Zero-shot top-1 of ``modality`` on the run's ``split``: the run's CAD student, then each
    bundle's student (its torch weights). A bundle student with another trunk than the run's
    gets its own (cached) features."""
    from omnibind_ros.core.bundle import load_bundle

    from .bundle_io import _load

    rows = [{"student": f"run {ws.cfg.name} CAD (data set)",
             "top1": student_accuracy(ws, {modality: ws.load_encoder(modality)}, split)[modality]}]
    for path in bundles:
        bundle = load_bundle(path)
        if modality not in bundle.modalities:
            rows.append({"student": str(path), "top1": None})
            continue
        spec = bundle.modalities[modality]
        enc = _load(bundle, "encoder", spec.config, spec.torch_weights, modality)
        own = ws
        if enc.config.to_dict()["trunk"] != ws.encoder_configs[modality].to_dict()["trunk"]:
            own = Workspace(ws.cfg.replace(encoders={**ws.cfg.encoders,
                                                     modality: enc.config.to_dict()}))
        acc = student_accuracy(own, {modality: enc}, split)[modality]
        taught = (bundle.provenance.get("teach") or [{}])[-1]
        rows.append({"student": str(path), "top1": acc,
                     "taught_from": (taught.get("bag") or {}).get("path")})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omnibind_train.teach.experiment",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="training/configs/sim_default.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    sub = parser.add_subparsers(dest="command", required=True)
    base = sub.add_parser("base", help="bundle without a modality (AF retrained without it)")
    base.add_argument("--drop", required=True)
    base.add_argument("--out", type=Path, required=True)
    zs = sub.add_parser("zero-shot", help="zero-shot top-1 of a modality's students")
    zs.add_argument("--modality", required=True)
    zs.add_argument("--bundle", type=Path, action="append", default=[])
    zs.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    ws = _workspace(args.config, args.overrides)
    if args.command == "base":
        print(f"bundle: {base_bundle(ws, args.drop, args.out)}")
    else:
        for row in zero_shot_table(ws, args.modality, args.bundle, args.split):
            top1 = "n/a" if row["top1"] is None else f"{100 * row['top1']:.2f} %"
            print(f"{top1:>9}  {row['student']}" + (f"  (taught from {row['taught_from']})"
                                                    if row.get("taught_from") else ""))
    print(f"[{args.command}] {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
