"""Running stages in order with their wall times (``omnibind-train all``)."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from .eval_stage import run_eval
from .export_stage import run_export
from .train_stages import run_af, run_cad, run_data, run_stage0
from .workspace import Workspace, _say, _timed

STAGES = ("data", "stage0", "cad", "af", "eval", "export")


def run_all(ws: Workspace, *, stages: Sequence[str] = STAGES,
            overwrite_data: bool = False) -> dict[str, float]:
    """Run ``stages`` in order with timings; returns the per-stage wall times (s)."""
    t0 = time.perf_counter()
    runners: dict[str, Callable[[], Any]] = {
        "data": lambda: run_data(ws, overwrite=overwrite_data), "stage0": lambda: run_stage0(ws),
        "cad": lambda: run_cad(ws), "af": lambda: run_af(ws), "eval": lambda: run_eval(ws),
        "export": lambda: run_export(ws)}
    for stage in stages:
        _say(ws, f"[{stage}] starting")
        _timed(ws, stage, runners[stage])
    ws.timings["total"] = round(time.perf_counter() - t0, 2)
    _say(ws, "timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in ws.timings.items()))
    if ws.dist.is_main:
        ws.run_dir.mkdir(parents=True, exist_ok=True)
        (ws.run_dir / "timings.json").write_text(json.dumps(ws.timings, indent=1))
    return ws.timings
