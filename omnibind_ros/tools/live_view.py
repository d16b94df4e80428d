"""The terminal view of ``omnibind-bringup``: live screen, plain status lines, end summary.

Pure presentation (rich, no ROS): :mod:`omnibind_ros.tools.bringup` fills a :class:`LiveState`
snapshot from the ROS topics and hands it here; the summary is the dict bringup returns (also
what ``--summary-json`` writes). The live screen shows no log lines (they go to a file, see
:mod:`omnibind_ros.tools.log_capture`): sensor state changes appear in its recent-events panel.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["LiveState", "RecognitionView", "SensorRow", "StateEvent", "render_events",
           "render_live", "render_summary", "status_line"]

#: Colour of each SensorStatus state name (msg/SensorStatus.msg) in the live table.
STATE_STYLE = {"LIVE": "bold green", "UNKNOWN": "dim", "STALE": "yellow", "LOST": "bold red",
               "DISABLED": "dim", "DEGRADED": "magenta"}
#: Verdict of the current answer against the ground truth -> (mark, style).
VERDICT_MARK = {"correct": ("✓", "bold green"), "wrong": ("✗", "bold red"),
                "transition": ("~", "yellow"), "no_answer": ("-", "dim"), "": ("?", "dim")}


@dataclass(frozen=True)
class SensorRow:
    """One line of the sensor table (a SensorStatus, plus what that sensor alone says)."""

    name: str
    modality: str
    state: str
    rate_hz: float
    expected_hz: float
    age_s: float
    publishers: int
    in_fusion: bool
    reason: str
    alone: str = ""  # "label score" from Recognition.per_modality, when it was fused
    quality: float = 1.0  # SensorStatus.quality: the input judged from the signal
    quality_issue: str = ""  # e.g. "dark", "wind"; "" when quality is 1


@dataclass(frozen=True)
class RecognitionView:
    """The newest Recognition, reduced to what the screen shows."""

    best_label: str
    best_score: float
    top: tuple[tuple[str, float], ...]
    sensors: tuple[str, ...]
    modalities: tuple[str, ...]
    confidence: float = 0.0
    unsure: bool = False


#: Below this input quality the live view names the problem (as /diagnostics warns).
POOR_QUALITY = 0.5


def _quality(row: SensorRow) -> str:
    if row.quality >= POOR_QUALITY or not row.quality_issue:
        return ""
    return f"{row.quality_issue} {row.quality:.2f}"


@dataclass(frozen=True)
class StateEvent:
    """A sensor's state changed (from ``~/sensor_status``) at ``t_s`` of the run's clock."""

    t_s: float
    sensor: str
    old: str
    new: str
    reason: str = ""


@dataclass
class LiveState:
    """Everything one frame of the live view shows (a snapshot; bringup builds a new one)."""

    t_s: float
    duration_s: float | None
    phase: str
    phase_range: tuple[float, float] | None
    sensors: Sequence[SensorRow] = ()
    recognition: RecognitionView | None = None
    truth: str = ""
    verdict: str = ""
    recognitions: int = 0
    per_s: float = 0.0
    answered_fraction: float | None = None
    accuracy: float | None = None
    scored: int = 0
    title: str = ""
    events: Sequence[StateEvent] = field(default_factory=tuple)
    events_total: int = 0
    log_file: str = ""


def _fmt(value: float | None, spec: str = ".2f", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _range(r: tuple[float, float] | None) -> str:
    if r is None:
        return ""
    end = "…" if math.isinf(r[1]) else f"{r[1]:.1f}"
    return f"{r[0]:.1f}–{end} s"


def _clock(state: LiveState) -> str:
    total = f" / {state.duration_s:.0f} s" if state.duration_s else " (Ctrl-C stops)"
    return f"t = {state.t_s:5.1f} s{total}"


# ---------------------------------------------------------------------------------------------
# live screen

def _sensor_table(rows: Sequence[SensorRow], width: int) -> Any:
    from rich.table import Table

    table = Table(title="sensors", title_justify="left", expand=False, pad_edge=False)
    # One line per sensor: the reason (the long column) gets what the others leave of the
    # terminal (~100 columns) and is cut with an ellipsis rather than wrapped.
    for col, justify in (("sensor", "left"), ("modality", "left"), ("state", "left"),
                         ("rate Hz", "right"), ("age s", "right"), ("pubs", "right"),
                         ("fused", "center"), ("input", "left"), ("alone says", "left"),
                         ("reason", "left")):
        table.add_column(col, justify=justify, no_wrap=True, overflow="ellipsis",
                         max_width=max(12, width - 100) if col == "reason" else None)
    for r in rows:
        rate = f"{_fmt(r.rate_hz, '.1f')}/{_fmt(r.expected_hz, '.3g')}"
        table.add_row(r.name, r.modality, f"[{STATE_STYLE.get(r.state, '')}]{r.state}[/]",
                      rate, _fmt(r.age_s), str(r.publishers),
                      "[green]●[/]" if r.in_fusion else "[dim]·[/]",
                      f"[yellow]{_quality(r)}[/]" if _quality(r) else "[dim]ok[/]", r.alone,
                      f"[dim]{r.reason}[/]")
    if not rows:
        table.add_row("[dim]waiting for ~/sensor_status…[/]", *[""] * 9)
    return table


def _recognition_panel(state: LiveState) -> Any:
    from rich.panel import Panel
    from rich.table import Table

    rec = state.recognition
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    mark, style = VERDICT_MARK.get(state.verdict, VERDICT_MARK[""])
    if rec is None:
        grid.add_row("recognised", "[dim]waiting for ~/recognition…[/]")
    elif not rec.best_label:
        grid.add_row("recognised", "[dim]no answer (no usable sensor)[/]")
    else:
        sure = "[yellow]unsure[/]" if rec.unsure else "sure"
        grid.add_row("recognised", f"[bold]{rec.best_label}[/]  {rec.best_score:.2f}  "
                                   f"[{style}]{mark}[/]  [dim]confidence[/] "
                                   f"{rec.confidence:.2f} ({sure})")
        grid.add_row("top-k", "  ".join(f"{lbl} [dim]{s:.2f}[/]" for lbl, s in rec.top[1:]))
        pairs = zip(rec.sensors, rec.modalities, strict=False)
        fused = ", ".join(f"{s} [dim]({m})[/]" for s, m in pairs)
        grid.add_row("fused", fused or "-")
    grid.add_row("ground truth", state.truth or "[dim]none received[/]")
    grid.add_row("so far", f"{state.recognitions} recognitions ({state.per_s:.1f}/s), "
                           f"answered {_pct(state.answered_fraction)}, accuracy "
                           f"{_pct(state.accuracy)} of {state.scored} scored")
    return Panel(grid, title="recognition", title_align="left", border_style="cyan")


def render_events(events: Sequence[StateEvent], total: int | None = None) -> Any:
    """The recent-events panel: one line per sensor state change, newest last."""
    from rich.panel import Panel
    from rich.table import Table

    # Time, sensor and change keep their width; the reason gets the rest and is cut short.
    grid = Table.grid(padding=(0, 2), expand=True)
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    for e in events:
        old, new = (f"[{STATE_STYLE.get(x, '')}]{x or '?'}[/]" for x in (e.old, e.new))
        grid.add_row(f"{e.t_s:6.1f} s", e.sensor, f"{old} → {new}", f"[dim]{e.reason}[/]")
    if not events:
        grid.add_row("", "[dim]no sensor state change yet[/]", "", "")
    total = len(events) if total is None else total
    more = f" (last {len(events)} of {total})" if total > len(events) else ""
    return Panel(grid, title=f"recent events{more}", title_align="left", border_style="blue")


def render_live(state: LiveState, width: int = 120) -> Any:
    """One frame for a terminal ``width`` columns wide: header line, sensor table, recognition
    panel, recent events, where the full log goes."""
    from rich.console import Group
    from rich.text import Text

    header = Text.assemble((state.title + "  ", "bold"), _clock(state), "   phase: ",
                           (state.phase or "-", "bold cyan"), f"  {_range(state.phase_range)}")
    parts: list[Any] = [header, _sensor_table(state.sensors, width),
                        _recognition_panel(state),
                        render_events(state.events, state.events_total)]
    if state.log_file:
        parts.append(Text(f"full log: {state.log_file}", style="dim", overflow="ellipsis",
                          no_wrap=True))
    return Group(*parts)


def status_line(state: LiveState) -> str:
    """One plain line for ``--no-ui``: time, phase, answer vs truth, sensors that are not LIVE."""
    rec = state.recognition
    if rec is None:
        answer = "no recognition yet"
    elif not rec.best_label:
        answer = "no answer"
    else:
        mark = VERDICT_MARK.get(state.verdict, VERDICT_MARK[""])[0]
        n = len(rec.sensors)
        unsure = ", unsure" if rec.unsure else ""
        answer = (f"{rec.best_label} {rec.best_score:.2f} {mark} ({n} sensor{'s' * (n != 1)}"
                  f"{unsure})")
    live = sum(r.state == "LIVE" for r in state.sensors)
    others = ", ".join(f"{r.name} {r.state}" for r in state.sensors if r.state != "LIVE")
    poor = ", ".join(f"{r.name} {_quality(r)}" for r in state.sensors if _quality(r))
    sensors = f"live {live}/{len(state.sensors)}" + (f" ({others})" if others else "") + (
        f" | poor input: {poor}" if poor else "")
    return (f"[{state.t_s:6.1f} s] {state.phase or '-'} | truth {state.truth or '-'} | "
            f"{answer} | {sensors} | acc {_pct(state.accuracy)}")


# ---------------------------------------------------------------------------------------------
# summary

def _phase_table(phases: Sequence[dict[str, Any]], top_k: int | None) -> Any:
    from rich.table import Table

    table = Table(title="per scenario phase", title_justify="left", pad_edge=False)
    cols = ["phase", "t (s)", "recs", "rec/s", "answered", "accuracy",
            f"top-{top_k or 'k'}", "transition"]
    for col in cols:
        table.add_column(col, justify="left" if col == "phase" else "right", no_wrap=True)
    for p in phases:
        table.add_row(p["label"], _range((p["start_s"], p["end_s"])).removesuffix(" s"),
                      str(p["recognitions"]), _fmt(p["recognitions_per_s"], ".1f"),
                      _pct(p["answered_fraction"]), _pct(p["accuracy"]),
                      _pct(p["top_k_accuracy"]), str(p["transition"]))
    return table


def render_summary(summary: dict[str, Any]) -> list[Any]:
    """Renderables of the end-of-run summary (print each with a rich Console)."""
    from rich.text import Text

    s = summary
    head = Text.assemble(
        ("omnibind-bringup summary: ", "bold"),
        f"{s['duration_s']:.1f} s of stream ({s['wall_s']:.1f} s wall), "
        f"scenario {s['scenario'] or 'none'}\n",
        f"recognitions: {s['recognitions']} ({s['recognitions_per_s']:.1f}/s), "
        f"ticks answered {_pct(s['answered_fraction'])}\n",
        "accuracy vs ground truth: ", (_pct(s["accuracy"]), "bold"),
        f" of {s['scored']} scored, top-{s['top_k'] or 'k'} {_pct(s['top_k_accuracy'])}\n",
        f"not scored: {s['transition']} in transition (< {s['transition_s']:g} s after an "
        f"object change), {s['unscored']} without ground truth")
    parts: list[Any] = [head]
    if s.get("models"):
        parts.append(Text("answered by: " + ", ".join(
            f"{m} ({n})" for m, n in sorted(s["models"].items()))))
    if s["phases"]:
        parts.append(_phase_table(s["phases"], s["top_k"]))
    sim = s.get("sim") or {}
    if sim:
        parts.append(Text(f"simulated sensors: {sim['published']} messages published, "
                          f"{sim['dropped']} dropped late, {sim['unplugged']} discarded while "
                          "unplugged", style="dim"))
    if s.get("log_file"):
        parts.append(Text(f"full log (nodes, libraries): {s['log_file']}", style="dim"))
    return parts
