"""``omnibind-train features | cad | af | eval | export | all --config <paper config>``: the
command line of the paper-scale run (:class:`.paper_run.PaperRun` does the work)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .paper import DataRootError, PaperOmniBindConfig

__all__ = ["PAPER_COMMANDS", "add_paper_arguments", "paper_overrides", "run_paper_command"]

#: ``omnibind-train`` commands the paper config runs.
PAPER_COMMANDS = ("features", "cad", "af", "eval", "export", "all")


def add_paper_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the paper commands (the ones ``omnibind-train``'s stage commands have)."""
    p.add_argument("--config", default="training/configs/paper_omnibind.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--resume", default=None)
    p.add_argument("--terms", default=None)
    p.add_argument("--heads", default=None)
    p.add_argument("--no-negatives", action="store_true")
    p.add_argument("--out", type=Path, default=None)


def paper_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` plus the flags as config overrides."""
    out = list(getattr(args, "overrides", []) or [])
    if getattr(args, "cache_dir", None) is not None:
        out.append(f"cache_dir={args.cache_dir}")
    if getattr(args, "device", None) is not None:
        out.append(f"device={args.device}")
    if getattr(args, "no_progress", False):
        out.append("progress=false")
    if getattr(args, "terms", None):
        out.append(f"cad.terms=[{args.terms}]")
    if getattr(args, "no_negatives", False):
        out.append("af.negatives=false")
    return out


def _stage_problems(cfg: PaperOmniBindConfig, stage: str) -> list[str]:
    """:meth:`PaperOmniBindConfig.check_stage`, where AF's test index is optional: without it
    (not built yet) neither it nor the roots only the test split reads are required."""
    if stage in ("eval", "export"):
        from .paper_eval import eval_problems

        return eval_problems(cfg)
    problems = cfg.check_stage(stage)
    mf = cfg.data.modality_free
    if stage != "af" or mf is None:
        return problems
    try:
        built = Path(cfg.expand(mf.test.index, "data.modality_free.test.index")).is_file()
    except DataRootError:
        built = False
    if built:
        return problems
    test_only = set(mf.test.sources) - set(mf.train.sources)
    return [p for p in problems if "test.index" not in p
            and not any(p.startswith(f"data.sources.{k}.root") for k in test_only)]


def run_paper_command(args: argparse.Namespace) -> int:
    """``omnibind-train features | cad | af | eval | export | all --config <paper config>``
    (``all``: cad, af, eval, export): exit 0, or 2 with one line naming what is wrong (unset
    placeholder, missing root / checkpoint / index)."""
    import os

    command = args.command
    if command not in PAPER_COMMANDS:
        print(f"omnibind-train: error: {args.config} is the paper-scale OmniBind config: its "
              f"commands are {', '.join(PAPER_COMMANDS)} (and modality-free); `{command}` is "
              "not one", file=sys.stderr)
        return 2
    try:
        cfg = PaperOmniBindConfig.from_yaml(args.config, paper_overrides(args))
        stages = {"features": ["cad"], "cad": ["cad"], "af": ["af"], "eval": ["eval"],
                  "export": ["export"], "all": ["cad", "af", "eval"]}[command]
        for stage in stages:
            problems = _stage_problems(cfg, stage)
            if problems:
                raise DataRootError(f"paper-scale OmniBind config {args.config}: stage {stage} "
                                    "cannot run: " + "; ".join(problems))
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"omnibind-train: error: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    threads = getattr(args, "threads", None) or cfg.threads
    if threads:
        torch.set_num_threads(threads)
    from ..trainers.distributed import cleanup, init_distributed

    dist = init_distributed(cfg.device)
    try:
        from .paper_run import PaperRun

        run = PaperRun(cfg, dist)
        t0 = time.perf_counter()
        resume = getattr(args, "resume", None)
        if command == "features":
            run.features()
        if command in ("cad", "all"):
            run.run_cad(resume=resume)
        if command in ("af", "all"):
            heads = getattr(args, "heads", None)
            run.run_af(resume=resume if command == "af" else None,
                       kinds=heads.split(",") if heads else None)
        if command in ("eval", "all"):
            from .paper_eval import run_paper_eval

            run_paper_eval(run)
        if command in ("export", "all"):
            from .paper_export import run_paper_export

            run_paper_export(run, getattr(args, "out", None))
        run._say(f"[{command}] done in {time.perf_counter() - t0:.1f} s")
    except (ValueError, FileNotFoundError) as exc:
        print(f"omnibind-train: error: {exc}".replace("\n", " "), file=sys.stderr)
        return 2
    finally:
        cleanup(dist)
    return 0
