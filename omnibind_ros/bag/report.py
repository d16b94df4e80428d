"""The report of a bag evaluation: markdown tables, JSON, a per-tick CSV and PNG plots.

``write_report(result, scores, out_dir)`` writes

* ``report.md``: the tables (overall, per modality combination, per sensor combination, per
  dropout phase, over time, unanswered ticks by reason, sensor states, confidence calibration,
  skipped topics) and links to the plots;
* ``report.json``: the same numbers plus metadata. Everything measured with a wall clock
  (compute latency, evaluation time, stage times) is under the top-level ``"timing"`` key and
  nowhere else, so two runs of a deterministic evaluation give identical JSON apart from it;
  keys are sorted;
* ``ticks.csv``: one row per fusion tick (time, stamp, verdict, answer, truth, fused
  modalities, reason, confidence, unsure) for the user's own analysis;
* ``timeline.png``: sensor states as coloured bands over bag time, the dropout phases, ground
  truth changes, each tick as a mark (correct / wrong / transition / unscored / no answer) and
  the accuracy per time bin;
* ``accuracy_by_combination.png``: accuracy per active-modality combination, with tick counts;
* ``reliability.png``: the reliability diagram of the scored answers' confidence (ECE).

Plots use matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omnibind_ros.bag.scoring import NS, EvalResult

__all__ = ["STATE_COLOURS", "VERDICT_STYLE", "render_markdown", "report_json", "write_report"]

STATE_COLOURS = {"LIVE": "#2ca02c", "DEGRADED": "#ff7f0e", "STALE": "#f2d21b",
                 "LOST": "#d62728", "UNKNOWN": "#b0b0b0", "DISABLED": "#404040"}
#: verdict -> (y offset, marker, colour, legend label)
VERDICT_STYLE = {"correct": (4, "|", "#2ca02c", "correct"),
                 "wrong": (3, "|", "#d62728", "wrong"),
                 "transition": (2, "|", "#9467bd", "transition (not scored)"),
                 "unscored": (1, "|", "#1f77b4", "no truth (not scored)"),
                 "no_answer": (0, "|", "#404040", "no answer")}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1) -> list[str]:
    """A markdown table; the first ``left`` columns are text (left-aligned), the rest numbers."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def _stats_row(s: dict[str, Any]) -> list[Any]:
    return [s["ticks"], s["answered"], s["scored"], s["correct"], _pct(s["accuracy"]),
            _pct(s["top_k_accuracy"]), s["transition"], s["unscored"]]


_STATS_HEADER = ["ticks", "answered", "scored", "correct", "accuracy", "top-k", "transition",
                 "no truth"]


def render_markdown(result: EvalResult, scores: dict[str, Any],
                    files: dict[str, str] | None = None) -> str:
    """The markdown report (``files``: plot name -> file name relative to the report)."""
    files = files or {}
    o = scores["overall"]
    span = (result.end_ns - result.start_ns) / NS
    lines = [f"# Bag evaluation: `{result.bag}`", ""]
    lines += [f"- mode: **{result.mode}**"
              + (" (the infinitely fast machine: every message processed at its log time, "
                 "zero latency)" if result.mode == "offline" else ""),
              f"- span: {span:.2f} s of bag time, {o['ticks']} fusion ticks, "
              f"{len(result.states)} sensor state changes",
              "- sensors: " + ", ".join(f"{n} ({result.modalities.get(n, '?')})"
                                          for n in result.sensors)]
    extra = result.extra
    for key, label in (("bundle", "bundle"), ("model", "model"), ("config", "config"),
                       ("backend", "backend")):
        if extra.get(key):
            lines.append(f"- {label}: `{extra[key]}`")
    lines.append(f"- ground truth: {extra.get('truth_source') or 'none (nothing scored)'}; "
                 f"answers within {scores['transition_s']} s of an object change are "
                 "*transition* (not scored)")
    if result.error:
        lines += ["", f"> **The bag is damaged; the results cover what was read before the "
                  f"damage.** {result.error}"]
    for warning in result.warnings:
        lines += ["", f"> **Warning:** {warning}"]
    if extra.get("unknown_params"):
        lines += ["", "> Unknown parameters in the config (ignored, as the node does): "
                  + ", ".join(f"`{p}`" for p in extra["unknown_params"])]
    lines += ["", "## Overall", ""]
    lines += _table(_STATS_HEADER + ["answered %"],
                    [_stats_row(o) + [_pct(o["answered_fraction"])]])
    lines += ["", f"top-k = the truth is among the {o.get('top_k', 0)} best labels.", ""]

    lines += ["## Accuracy per active-modality combination", ""]
    lines += _table(["modalities"] + _STATS_HEADER,
                    [[s["key"]] + _stats_row(s) for s in scores["by_modalities"]])
    if files.get("accuracy_by_combination"):
        lines += ["", f"![accuracy per combination]({files['accuracy_by_combination']})"]
    lines += ["", "## Accuracy per sensor combination", ""]
    lines += _table(["sensors"] + _STATS_HEADER,
                    [[s["key"]] + _stats_row(s) for s in scores["by_sensors"]])

    lines += ["", "## Accuracy per dropout phase", ""]
    lines += _table(["phase", "from s", "to s"] + _STATS_HEADER,
                    [[p["label"], f"{p['start_s']:.1f}", f"{p['end_s']:.1f}"] + _stats_row(p)
                     for p in scores["by_phase"]])
    lines += ["", "Phases come from the bag's scenario events when it has them, else from the "
              "monitor's verdicts; a tick belongs to the phase its input stamp falls in."]

    lines += ["", "## Timeline", ""]
    if files.get("timeline"):
        lines += [f"![timeline]({files['timeline']})", ""]
    bins = scores["over_time"]
    lines += [f"Accuracy per {bins['bin_s']:g} s of bag time:", ""]
    lines += _table(["from s", "to s", "ticks", "answered", "scored", "accuracy"],
                    [[f"{b['start_s']:g}", f"{b['end_s']:g}", b["ticks"], b["answered"],
                      b["scored"], _pct(b["accuracy"])] for b in bins["bins"]])

    un = scores["unanswered"]
    lines += ["", f"## Ticks without an answer: {un['ticks']}", ""]
    if un["reasons"]:
        lines += _table(["reason (numbers as #)", "example", "ticks"],
                        [[r["reason"], r["example"], r["ticks"]] for r in un["reasons"]], 2)

    lines += ["", "## Sensor states (seconds in each state)", ""]
    states = sorted({s for v in scores["sensor_state_s"].values() for s in v})
    lines += _table(["sensor"] + states,
                    [[name] + [_num(v.get(s), 1) if s in v else "" for s in states]
                     for name, v in scores["sensor_state_s"].items()])
    lines += _sensor_messages(result.mode, extra.get("sensors") or {})

    lines += _confidence_section(scores.get("confidence"), files.get("reliability"))

    age = scores["input_age_s"]
    lines += ["", "## Input age and latency", "",
              f"Input age (tick time − stamp of the newest fused sample, bag clock): "
              f"p50 {_num(age['p50'])} s, p95 {_num(age['p95'])} s, p99 {_num(age['p99'])} s "
              f"over {age['count']} answers."]
    lat = scores["timing"]["latency_s"]
    what = ("compute time of the tick and of its newest input on this machine"
            if result.mode == "offline" else "input stamp to recognition, wall clock")
    lines += ["", f"Latency ({what}): p50 {_num(_ms(lat['p50']), 1)} ms, "
              f"p95 {_num(_ms(lat['p95']), 1)} ms, p99 {_num(_ms(lat['p99']), 1)} ms."]

    if result.skipped_topics:
        lines += ["", "## Skipped topics", ""]
        lines += _table(["topic", "why"],
                        [[f"`{t}`", why] for t, why in sorted(result.skipped_topics.items())], 2)
    timing = scores["timing"]
    lines += ["", "## Timing (wall clock; differs between runs)", "",
              f"{timing['wall_s']:.1f} s, {_num(timing['ticks_per_s'], 1)} fusion ticks/s, "
              f"{_num(span / timing['wall_s'] if timing['wall_s'] else None, 2)} bag s per s."]
    return "\n".join(lines) + "\n"


def _confidence_section(conf: dict[str, Any] | None, plot: str | None) -> list[str]:
    """Calibration of the answers' confidence: ECE, unsure vs sure accuracy, the diagram."""
    if not conf or not conf.get("reliability"):
        return []
    rel = conf["reliability"]
    lines = ["", "## Confidence", "",
             f"Expected calibration error over {rel['n']} scored answers: "
             f"**{100 * rel['ece']:.1f} %** ({rel['bins']} bins; mean confidence "
             f"{_pct(rel['mean_confidence'])} vs accuracy {_pct(rel['accuracy'])}; largest "
             f"bin gap {100 * rel['mce']:.1f} %).", ""]
    lines += _table(["answers", "ticks", "accuracy"],
                    [[name, conf[key]["ticks"], _pct(conf[key]["accuracy"])]
                     for name, key in (("sure", "sure"), ("marked unsure", "unsure"))])
    if plot:
        lines += ["", f"![reliability diagram]({plot})"]
    return lines


def _plot_reliability(path: Path, scores: dict[str, Any]) -> bool:
    """The reliability diagram of the scored answers; False (nothing written) without any."""
    rel = (scores.get("confidence") or {}).get("reliability")
    if not rel:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from omnibind_ros.core.calibration import Reliability, draw_reliability

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    draw_reliability(ax, Reliability.from_dict(rel), "fused answers")
    ax.set_title("Reliability of the answers' confidence")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _sensor_messages(mode: str, sensors: dict[str, Any]) -> list[str]:
    """The per-sensor message table (offline and live alike) and each sensor's first
    undecodable message (named by its index among the bag's messages, the same in both)."""
    if not sensors:
        return []
    received = ("every decodable message reaches the engine at its log time"
                if mode == "offline" else
                "messages the node's callbacks got; fewer than the decodable ones when a "
                "best-effort queue replaced a message while the node was busy")
    lines = ["", "Messages per sensor (messages: in the bag on its topic; received: "
             f"{received}; bad: conversion, preprocessing or encoding failed; undecodable: "
             "not deserializable, dropped as the middleware drops them):", ""]
    lines += _table(["sensor", "topic", "messages", "received", "encoded", "bad",
                     "undecodable"],
                    [[n, f"`{v.get('topic', '')}`", v.get("messages", 0),
                      v.get("received", "–"), v.get("encoded", 0), v.get("bad", "–"),
                      v.get("undecodable", 0)] for n, v in sensors.items()], 2)
    firsts = [(n, v["first_undecodable"]) for n, v in sensors.items()
              if v.get("first_undecodable")]
    if firsts:
        lines += [""] + [f"- first undecodable message of {n}: {text}" for n, text in firsts]
    return lines


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def report_json(result: EvalResult, scores: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: deterministic numbers and metadata, wall-clock ones under "timing"."""
    meta = {k: v for k, v in result.extra.items() if k != "timing"}
    body = {k: v for k, v in scores.items() if k not in ("timing", "verdicts")}
    return {
        "bag": result.bag, "mode": result.mode, "error": result.error,
        "start_ns": result.start_ns, "end_ns": result.end_ns,
        "duration_s": round((result.end_ns - result.start_ns) / NS, 9),
        "sensors": list(result.sensors), "modalities": dict(result.modalities),
        "skipped_topics": dict(result.skipped_topics),
        "warnings": result.warnings,
        "phases": [{"label": p.label, "start_s": round(result.t_s(p.start_ns), 6),
                    "end_s": round(result.t_s(p.end_ns), 6)} for p in result.phases],
        "meta": meta, "scores": body,
        "timing": {**scores.get("timing", {}), **result.extra.get("timing", {})},
    }


def _write_ticks_csv(path: Path, result: EvalResult, verdicts: Sequence[str]) -> None:
    truth = result.truth
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["t_s", "stamp_s", "verdict", "best_label", "best_score", "truth",
                         "modalities", "sensors", "no_answer_reason", "confidence", "unsure"])
        for tick, verdict in zip(result.ticks, verdicts, strict=True):
            label = truth.label_at(tick.when_ns) if truth is not None else None
            writer.writerow([
                f"{result.t_s(tick.t_ns):.6f}",
                "" if tick.stamp_ns is None else f"{result.t_s(tick.stamp_ns):.6f}",
                verdict, tick.best_label, f"{tick.best_score:.6f}", label or "",
                "+".join(tick.modalities), "+".join(tick.sensors), tick.no_answer_reason,
                f"{tick.confidence:.6f}", int(tick.unsure)])


def _plot_timeline(path: Path, result: EvalResult, scores: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    span = max((result.end_ns - result.start_ns) / NS, 1e-3)
    names = list(result.sensors)
    fig, (ax_s, ax_t, ax_a) = plt.subplots(
        3, 1, sharex=True, figsize=(14, 2.2 + 0.45 * len(names) + 3.2),
        gridspec_kw={"height_ratios": [max(1.5, 0.45 * len(names)), 1.6, 1.2]})
    # sensor states as bands
    by_sensor: dict[str, list[tuple[float, str]]] = {n: [] for n in names}
    for change in sorted(result.states, key=lambda s: s.t_ns):
        if change.sensor in by_sensor:
            by_sensor[change.sensor].append((result.t_s(change.t_ns), change.state))
    for row, name in enumerate(names):
        t0, state = 0.0, "UNKNOWN"
        for t, new in by_sensor[name] + [(span, None)]:
            t = min(max(t, 0.0), span)
            if t > t0:
                ax_s.broken_barh([(t0, t - t0)], (row - 0.4, 0.8),
                                 facecolors=STATE_COLOURS.get(state, "#b0b0b0"))
            if new is not None:
                t0, state = t, new
    ax_s.set_yticks(range(len(names)), names)
    ax_s.set_ylim(-0.6, len(names) - 0.4)
    ax_s.invert_yaxis()
    ax_s.set_title("sensor states (monitor) and dropout phases", loc="left", pad=16)
    ax_s.legend(handles=[Patch(color=c, label=s) for s, c in STATE_COLOURS.items()],
                loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    for phase in result.phases[1:]:
        for ax in (ax_s, ax_t, ax_a):
            ax.axvline(result.t_s(phase.start_ns), color="k", ls="--", lw=0.8, alpha=0.6)
    for phase in result.phases:
        width = result.t_s(phase.end_ns) - result.t_s(phase.start_ns)
        if width < 0.06 * span:  # too narrow to label legibly; the table has it
            continue
        mid = result.t_s(phase.start_ns) + width / 2
        ax_s.annotate(phase.label, (mid, 1.0), xycoords=("data", "axes fraction"),
                      ha="center", va="bottom", fontsize=7, annotation_clip=False,
                      xytext=(0, 2), textcoords="offset points")
    # ticks
    verdicts = scores.get("verdicts") or []
    for verdict, (y, marker, colour, label) in VERDICT_STYLE.items():
        xs = [result.t_s(t.t_ns) for t, v in zip(result.ticks, verdicts, strict=False)
              if v == verdict]
        if xs:
            ax_t.scatter(xs, [y] * len(xs), marker=marker, color=colour, s=40, lw=0.8,
                         label=f"{label} ({len(xs)})")
    ax_t.set_yticks([v[0] for v in VERDICT_STYLE.values()], list(VERDICT_STYLE))
    ax_t.set_ylim(-0.8, 4.8)
    ax_t.set_title("fusion ticks (by tick time) and ground-truth changes", loc="left",
                   pad=34 if result.truth is not None else 6)
    if result.truth is not None:
        for interval in result.truth.intervals:
            x = result.t_s(interval.start_ns)
            if 0 <= x <= span:
                ax_t.axvline(x, color="#1f77b4", lw=0.6, alpha=0.5)
                ax_t.annotate(interval.label, (x, 4.8), fontsize=6, rotation=30,
                              ha="left", va="bottom", annotation_clip=False)
    ax_t.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    # accuracy per bin
    bins = scores["over_time"]["bins"]
    xs = [(b["start_s"] + b["end_s"]) / 2 for b in bins]
    acc = [b["accuracy"] if b["accuracy"] is not None else math.nan for b in bins]
    answered = [b["answered_fraction"] if b["answered_fraction"] is not None else math.nan
                for b in bins]
    ax_a.plot(xs, acc, "o-", color="#2ca02c", ms=3, label="accuracy")
    ax_a.plot(xs, answered, "s--", color="#7f7f7f", ms=3, label="answered")
    ax_a.set_ylim(-0.05, 1.05)
    ax_a.set_ylabel("fraction")
    ax_a.set_xlabel("bag time (s since the first message)")
    ax_a.set_title(f"per {scores['over_time']['bin_s']:g} s of bag time", loc="left")
    ax_a.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax_a.set_xlim(0, span)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_combinations(path: Path, scores: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(scores["by_modalities"])[::-1]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.4 * max(1, len(rows))))
    labels = [r["key"] for r in rows]
    acc = [r["accuracy"] if r["accuracy"] is not None else 0.0 for r in rows]
    colours = ["#2ca02c" if r["accuracy"] is not None else "#b0b0b0" for r in rows]
    ax.barh(range(len(rows)), acc, color=colours)
    for i, r in enumerate(rows):
        text = (f"{_pct(r['accuracy'])}  ({r['correct']}/{r['scored']} scored, "
                f"{r['ticks']} ticks)")
        ax.annotate(text, (min(acc[i], 1.0), i), xytext=(4, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), labels)
    if not rows:
        ax.text(0.5, 0.5, "no answered ticks", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlim(0, 1.45)  # room for the annotations
    ax.set_xticks([0.0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("accuracy (correct / scored answers)")
    ax.set_title("accuracy per active-modality combination")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(result: EvalResult, scores: dict[str, Any], out_dir: str | Path, *,
                 plots: bool = True) -> dict[str, Path]:
    """Write the report files into ``out_dir`` (created); return name -> path.

    Names: ``markdown``, ``json``, ``ticks``, and with ``plots`` ``timeline``,
    ``accuracy_by_combination`` and (when any answer was scored) ``reliability``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "json": out / "report.json",
             "ticks": out / "ticks.csv"}
    if plots:
        paths["timeline"] = out / "timeline.png"
        paths["accuracy_by_combination"] = out / "accuracy_by_combination.png"
        _plot_timeline(paths["timeline"], result, scores)
        _plot_combinations(paths["accuracy_by_combination"], scores)
        if _plot_reliability(out / "reliability.png", scores):
            paths["reliability"] = out / "reliability.png"
    verdicts = scores.get("verdicts") or []
    _write_ticks_csv(paths["ticks"], result, verdicts)
    doc = report_json(result, scores)
    paths["json"].write_text(json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n",
                             encoding="utf-8")
    files = {k: p.name for k, p in paths.items()}
    paths["markdown"].write_text(render_markdown(result, scores, files), encoding="utf-8")
    return paths
