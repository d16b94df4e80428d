"""What every model family's pipeline shares: the workspace built from its config, timed stages
and running stages in order (the binding and UniAlign families' ``*Run`` classes use it)."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..trainers.distributed import DistInfo
from .config import ExportConfig, PipelineConfig
from .workspace import Workspace

__all__ = ["FamilyRun", "run_stages"]


class FamilyRun:
    """A family pipeline's shared state: ``cfg`` (name, seed, cache_dir, device, threads,
    progress, data, export.bundle/out/sample_batch/exporter), the :class:`Workspace` and the
    stage timings."""

    def __init__(self, cfg: Any, dist: DistInfo | None = None) -> None:
        self.cfg = cfg
        ex = cfg.export
        base = PipelineConfig(name=cfg.name, seed=cfg.seed, cache_dir=cfg.cache_dir,
                              device=cfg.device, threads=cfg.threads, progress=cfg.progress,
                              data=cfg.data,
                              export=ExportConfig(bundle=ex.bundle, out=ex.out,
                                                  sample_batch=ex.sample_batch,
                                                  exporter=ex.exporter))
        self.ws = Workspace(base, dist)
        self.timings: dict[str, float] = {}
        #: the AF stage's test metrics, once it ran in this process (the report shows them)
        self.af_metrics: dict[str, float] | None = None

    def say(self, msg: str) -> None:
        if self.ws.dist.is_main:
            print(msg, flush=True)

    def timed(self, stage: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        self.timings[stage] = round(time.perf_counter() - t0, 2)
        self.say(f"[{stage}] done in {self.timings[stage]:.1f} s")
        return out


def run_stages(run: FamilyRun, stages: Sequence[str], run_stage: Callable[..., Any], *,
               overwrite_data: bool = False) -> dict[str, float]:
    """Every stage in order; writes ``<run>/timings.json`` and returns the timings."""
    t0 = time.perf_counter()
    for stage in stages:
        run_stage(run, stage, overwrite_data=overwrite_data)
    run.timings["total"] = round(time.perf_counter() - t0, 2)
    path = run.ws.run_dir / "timings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run.timings, indent=1))
    run.say(f"[all] {run.cfg.name} done in {run.timings['total']:.1f} s: " + ", ".join(
        f"{k} {v:.0f} s" for k, v in run.timings.items() if k != "total"))
    return dict(run.timings)
