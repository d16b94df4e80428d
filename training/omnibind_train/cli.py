"""``omnibind-train``: train and export the OmniBind model on the simulated world.

Examples
--------
::

    omnibind-train all --config training/configs/sim_default.yaml     # data -> ... -> bundle
    omnibind-train data --config training/configs/tiny.yaml
    omnibind-train stage0 --config training/configs/tiny.yaml --set stage0.loop.epochs=5
    omnibind-train cad --resume auto                                   # continue a CAD run
    omnibind-train cad --terms in,se                                   # a Table 7 variant
    omnibind-train af --no-negatives                                   # robustness ablation
    torchrun --nproc_per_node 2 -m omnibind_train.cli cad --config ...  # DDP (gloo / nccl)
    omnibind-train all --config training/configs/sim_binding.yaml     # the binding family
    omnibind-train all --config training/configs/sim_unialign.yaml    # the UniAlign family
    omnibind-train ablate --config training/configs/sim_unialign.yaml # its Tables 8-11
    omnibind-train teach my.bag --modality thermal --out ~/bundles/with_thermal  # new sensor
    omnibind-train modality-free --source esc50=/data/ESC-50:folds=1,2,3,4 ... \
        --label-map labelmap.yaml --out train_index.jsonl     # seed 000's modality-free index

A config with ``family: binding`` (seeds 001/003, :mod:`omnibind_train.binding`) runs its own
stages: ``data``, ``spaces``, ``pairs``, ``bind``, ``af``, ``eval``, ``export``; one with
``family: unialign`` (seed 002, :mod:`omnibind_train.unialign`): ``data``, ``backbone``,
``teachers``, ``train``, ``af``, ``eval``, ``export`` and ``ablate`` (``all`` runs a family's
stages in order, ``ablate`` excepted).

``teach`` (:mod:`omnibind_train.teach`) distils a new sensor from one bag (camera + the sensor,
no labels needed) into a copy of a bundle; it reads its own YAML (``training/configs/
teach.yaml``, ``TeachConfig``).

Every other subcommand reads the same pipeline YAML (``PipelineConfig``); ``--set key.sub=value``
overrides any field. Outputs go under the cache directory (see :mod:`omnibind_train.pipeline`).
A bad config is reported in one line with exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_USAGE = 2
DEFAULT_CONFIG = "training/configs/sim_default.yaml"
TEACH_CONFIG = "training/configs/teach.yaml"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"pipeline config YAML (default {DEFAULT_CONFIG})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set cad.loop.epochs=5 (repeatable)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="cache directory (default: the config's, else $OMNIBIND_CACHE_DIR, "
                        "$XDG_CACHE_HOME/omnibind_ros or ~/.cache/omnibind_ros)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default: the config's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _resumable(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", default=None, metavar="CKPT|auto",
                   help="resume from a checkpoint directory, or 'auto' for the newest one")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="omnibind-train",
        description="OmniBind training on the simulated world: stage 0 (LiT teacher space), "
                    "stage I (CAD), stage II (AF), evaluation and bundle export; a config with "
                    "`family: binding` (training/configs/sim_binding.yaml) or `family: unialign` "
                    "(training/configs/sim_unialign.yaml) runs that family's stages instead.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {"data": "generate the simulated data set if it is absent",
             "stage0": "stage 0: LiT image head against the frozen text encoder",
             "cad": "stage I: cross-modal alignment distillation of the students",
             "af": "stage II: adaptive fusion head (+ mean/linear/concat baselines)",
             "eval": "evaluation report (combinations, zero-shot, CAD ablation, robustness)",
             "export": "export the model bundle the runtime reads",
             "all": "data -> stage0 -> cad -> af -> eval -> export (binding: data -> spaces "
                    "-> pairs -> bind -> af -> eval -> export)",
             "spaces": "binding family: pre-train the specialist spaces",
             "pairs": "binding family: pseudo item pairs from the unpaired pools",
             "bind": "binding family: projectors and routers (every variant and ablation)",
             "backbone": "UniAlign family: pre-train (or load) the frozen CLIP ViT",
             "teachers": "UniAlign family: cache the partial-modal teachers' features",
             "train": "UniAlign family: train MoE-LoRA, tokenizers, heads, KD connectors",
             "ablate": "UniAlign family: train the ablation models (Tables 8-11)",
             "features": "paper config (family omnibind_paper): compute and cache the frozen "
                         "trunk features and teacher embeddings CAD and AF read"}
    cmds = {name: sub.add_parser(name, help=text, description=text)
            for name, text in helps.items()}
    for p in cmds.values():
        _common(p)
    from .byo.cli import add_import_arguments

    imports = sub.add_parser(
        "import", help="a bundle from an open_clip or ImageBind checkpoint (no training)",
        description="Build a model bundle from a checkpoint you already have: open_clip CLIP "
                    "(camera + text) or ImageBind (camera, microphone, thermal camera + text), "
                    "with the model's own preprocessing carried in the bundle.")
    add_import_arguments(imports)
    from .datasets.modality_free.cli import add_modality_free_arguments

    add_modality_free_arguments(sub.add_parser(
        "modality-free", help="build the modality-free combination index from the real readers",
        description="Seed 000's modality-free data set (Sec. 3.4): a reviewed label map and the "
                    "seeded combination index (JSON lines) from the nine data sets' readers."))
    for name in ("stage0", "cad", "af"):
        _resumable(cmds[name])
    cmds["features"].set_defaults(config="training/configs/paper_omnibind.yaml")
    cmds["cad"].add_argument("--terms", default=None,
                             help="comma-separated CAD loss terms (in,cr,se; default: config)")
    cmds["af"].add_argument("--no-negatives", action="store_true",
                            help="train without negative labels (robustness ablation)")
    cmds["af"].add_argument("--heads", default=None,
                            help="comma-separated heads to train (af,linear,concat; default all)")
    cmds["export"].add_argument("--out", type=Path, default=None,
                                help="bundle directory (default <cache>/bundles/<bundle>)")
    cmds["all"].add_argument("--skip", default="",
                             help="comma-separated stages to skip (e.g. export)")
    for name in ("data", "all"):
        cmds[name].add_argument("--overwrite-data", action="store_true",
                                help="regenerate the data set if the one in the cache was made "
                                     "from another config or simulator version")
    _teach_parser(sub)
    return parser


def _teach_parser(sub: argparse._SubParsersAction) -> None:
    text = ("teach a bundle a new sensor from one bag: pair its messages with the camera, CAD "
            "with the bundle's image encoder as teacher, retrain AF, export a new bundle")
    p = sub.add_parser("teach", help=text, description=text)
    p.add_argument("bag", type=Path, help="rosbag2 directory (or .mcap/.db3) with the camera "
                   "and the new sensor")
    p.add_argument("--modality", default=None,
                   help="the new sensor's modality: thermal, event, tactile, audio, point_cloud")
    p.add_argument("--bundle", type=Path, default=None,
                   help="bundle to teach (default <cache>/bundles/default); never written")
    p.add_argument("--out", type=Path, required=True, help="new bundle directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing bundle at --out (never the input bundle)")
    p.add_argument("--topic", default=None, help="the new sensor's topic (default: the bag's "
                   "only topic of a type the modality reads)")
    p.add_argument("--camera-topic", default=None, help="the camera's topic (default: likewise)")
    p.add_argument("--tolerance", type=float, default=None, metavar="S",
                   help="largest sensor-to-camera stamp difference in seconds (default 0.05)")
    p.add_argument("--labels", default=None, metavar="none|topic|CSV",
                   help="none (pseudo-labels from the image teacher), topic (the bag's ground "
                        "truth topic) or a CSV of start_s,end_s,label intervals")
    p.add_argument("--init", choices=("registry", "bundle"), default=None,
                   help="start the student from the registry's default encoder (default) or "
                        "from the bundle's encoder of that modality")
    p.add_argument("--no-run-data", action="store_true",
                   help="stage II from the bag only (not the bundle's training run data)")
    p.add_argument("--config", default=TEACH_CONFIG,
                   help=f"teach config YAML (default {TEACH_CONFIG})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set cad.loop.epochs=10 (repeatable)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache directory")
    p.add_argument("--device", default=None, help="cpu | cuda (default: the config's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _teach_config(args: argparse.Namespace):  # -> TeachConfig
    from .teach import TeachConfig

    overrides = list(args.overrides)
    for key, value in (("modality", args.modality), ("topic", args.topic),
                       ("camera_topic", args.camera_topic), ("tolerance_s", args.tolerance),
                       ("labels", args.labels), ("init", args.init),
                       ("cache_dir", args.cache_dir), ("device", args.device),
                       ("threads", args.threads)):
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.no_run_data:
        overrides.append("run_data=none")
    if args.no_progress:
        overrides.append("progress=false")
    return TeachConfig.from_yaml(args.config, overrides)


def _run_teach(args: argparse.Namespace) -> int:
    """``omnibind-train teach``: one-line errors (exit 2) for what the user can fix."""
    import os

    try:
        cfg = _teach_config(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"omnibind-train: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    import torch

    from omnibind_ros.bag.truth import TruthError
    from omnibind_ros.core.bundle import default_bundle_dir
    from omnibind_ros.core.errors import BundleError

    from .teach import TeachError, teach
    from .teach.report import summary

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        result = teach(args.bag, args.bundle or default_bundle_dir(), args.out, cfg,
                       overwrite=args.overwrite)
    except (TeachError, BundleError, TruthError, FileNotFoundError) as exc:
        print(f"omnibind-train teach: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(summary(result))
    return 0


BINDING_COMMANDS = ("data", "spaces", "pairs", "bind", "af", "eval", "export", "all")
UNIALIGN_COMMANDS = ("data", "backbone", "teachers", "train", "ablate", "af", "eval", "export",
                     "all")
FAMILY_COMMANDS = {"binding": BINDING_COMMANDS, "unialign": UNIALIGN_COMMANDS}


def _shared_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` plus the options every family's config has (cache, device, progress, out)."""
    overrides = list(args.overrides)
    if args.cache_dir is not None:
        overrides.append(f"cache_dir={args.cache_dir}")
    if args.device is not None:
        overrides.append(f"device={args.device}")
    if args.no_progress:
        overrides.append("progress=false")
    if getattr(args, "out", None) is not None:
        overrides.append(f"export.out={args.out}")
    return overrides


def _family(path: str) -> str | None:
    import yaml

    from .data import resolve_path

    raw = yaml.safe_load(resolve_path(path).read_text()) or {}
    family = raw.get("family") if isinstance(raw, dict) else None
    return family if family in FAMILY_COMMANDS else None


def _is_paper_omnibind(path: str) -> bool:
    import yaml

    from .data import resolve_path

    raw = yaml.safe_load(resolve_path(path).read_text()) or {}
    return isinstance(raw, dict) and raw.get("family") == "omnibind_paper"


def _config(args: argparse.Namespace):  # -> PipelineConfig | BindingConfig | UniAlignConfig
    from .pipeline import PipelineConfig

    overrides = _shared_overrides(args)
    family = _family(args.config)
    if args.command == "features":
        raise ValueError("`features` is the paper-scale OmniBind config's step (family: "
                         "omnibind_paper, training/configs/paper_omnibind.yaml); the simulated "
                         "pipeline caches its features inside each stage")
    if family is not None:
        if args.command not in FAMILY_COMMANDS[family]:
            raise ValueError(f"{args.config} is a {family}-family config: its commands are "
                             f"{', '.join(FAMILY_COMMANDS[family])}")
        if family == "binding":
            from .binding.pipeline import BindingConfig

            return BindingConfig.from_yaml(args.config, overrides)
        from .unialign.pipeline import UniAlignConfig

        return UniAlignConfig.from_yaml(args.config, overrides)
    for fam, cmds in FAMILY_COMMANDS.items():
        if args.command not in cmds:
            continue
        if args.command in ("spaces", "pairs", "bind", "backbone", "teachers", "train",
                            "ablate"):
            raise ValueError(f"`{args.command}` belongs to the {fam} family; pass a config "
                             f"with `family: {fam}` (e.g. training/configs/sim_{fam}.yaml)")
    if getattr(args, "terms", None):
        overrides.append(f"cad.terms=[{args.terms}]")
    if getattr(args, "no_negatives", False):
        overrides.append("af.negatives=false")
    return PipelineConfig.from_yaml(args.config, overrides)


def _dispatch_family(args: argparse.Namespace, cfg, dist) -> None:
    if cfg.family == "binding":
        from .binding.pipeline import STAGES
        from .binding.pipeline import BindingRun as Run
        from .binding.stages import run_all, run_stage
    else:
        from .unialign.pipeline import STAGES
        from .unialign.pipeline import UniAlignRun as Run
        from .unialign.stages import run_all, run_stage

    run = Run(cfg, dist)
    if args.command == "all":
        skip = {s for s in args.skip.split(",") if s}
        run_all(run, [s for s in STAGES if s not in skip], overwrite_data=args.overwrite_data)
    else:
        run_stage(run, args.command, overwrite_data=getattr(args, "overwrite_data", False))


def _dispatch(args: argparse.Namespace, ws) -> None:
    from . import pipeline as pl

    cmd = args.command
    resume = getattr(args, "resume", None)
    if cmd == "data":
        print(pl.run_data(ws, overwrite=args.overwrite_data))
    elif cmd == "stage0":
        pl.run_stage0(ws, resume=resume)
    elif cmd == "cad":
        pl.run_cad(ws, resume=resume)
    elif cmd == "af":
        kinds = args.heads.split(",") if args.heads else None
        pl.run_af(ws, resume=resume, kinds=kinds)
    elif cmd == "eval":
        pl.run_eval(ws)
    elif cmd == "export":
        pl.run_export(ws)
    elif cmd == "all":
        skip = {s for s in args.skip.split(",") if s}
        pl.run_all(ws, stages=[s for s in pl.STAGES if s not in skip],
                   overwrite_data=args.overwrite_data)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``omnibind-train`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "teach":  # its own config (TeachConfig): a bag and a bundle in
        return _run_teach(args)
    if args.command == "import":  # no config, no workspace: a checkpoint in, a bundle out
        from .byo.cli import run_import

        return run_import(args)
    if args.command == "modality-free":  # readers in, a label map and an index out
        from .datasets.modality_free.cli import run_modality_free

        return run_modality_free(args)
    try:
        paper = _is_paper_omnibind(args.config)
    except Exception:  # noqa: BLE001 - _config names the unreadable or malformed file
        paper = False
    if paper:  # the real data sets: omnibind_train.pipeline.paper_run
        from .pipeline.paper_cli import run_paper_command

        return run_paper_command(args)
    try:
        cfg = _config(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"omnibind-train: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    import os

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    threads = args.threads or cfg.threads
    if threads:
        torch.set_num_threads(threads)
    from .pipeline import Workspace
    from .trainers.distributed import cleanup, init_distributed

    dist = init_distributed(cfg.device)
    try:
        if getattr(cfg, "family", None) in FAMILY_COMMANDS:
            _dispatch_family(args, cfg, dist)
        else:
            _dispatch(args, Workspace(cfg, dist))
    finally:
        cleanup(dist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
