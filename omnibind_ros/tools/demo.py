"""``omnibind-demo`` (``make demo-world``): the simulated multimodal world through every sensor.

Plays the simulated sensors (:class:`omnibind_ros.sim.stream.WorldStream`) for a few seconds of
simulated time, pushes every message through the shared per-modality preprocessing that training
and the runtime use, and shows a live table: the object in front of the sensors, and per sensor its
message count, measured rate, the raw payload and the model input it becomes. At the end it writes
the PNG grid of every modality (``omnibind-sim preview``) and prints where it is.

No model and no ROS are involved: recognition with hot-plugged sensors is ``omnibind-bringup``
(:mod:`omnibind_ros.tools.bringup`).
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.core.errors import PreprocessError
from omnibind_ros.core.paths import default_cache_dir
from omnibind_ros.core.preprocess import build_preprocessor
from omnibind_ros.core.types import AudioBlock, EventPacket, TactileFrame, ThermalFrame


@dataclass
class SensorTally:
    """What the demo has seen of one sensor."""

    modality: str
    count: int = 0
    first_stamp: float | None = None
    last_stamp: float | None = None
    raw: str = ""
    model_input: str = ""
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    preprocess_ms: list[float] = field(default_factory=list)

    def rate_hz(self) -> float:
        if self.count < 2 or self.last_stamp == self.first_stamp:
            return 0.0
        return (self.count - 1) / (self.last_stamp - self.first_stamp)


def describe_payload(payload: Any) -> str:
    """A one-line human description of a raw sensor payload."""
    if isinstance(payload, str):
        return f'"{payload}"'
    if isinstance(payload, EventPacket):
        on = int(np.count_nonzero(payload.polarity))
        return f"{len(payload)} events ({on} ON) on {payload.width}x{payload.height}"
    if isinstance(payload, AudioBlock):
        rms = float(np.sqrt(np.mean(np.square(payload.samples, dtype=np.float64))))
        return f"{payload.samples.shape[0]} samples @ {payload.sample_rate} Hz, rms {rms:.3f}"
    if isinstance(payload, ThermalFrame):
        kelvin = payload.data.astype(np.float64) * payload.kelvin_per_count
        return (f"{payload.encoding} {payload.data.shape[1]}x{payload.data.shape[0]}, "
                f"{kelvin.min() - 273.15:.1f}..{kelvin.max() - 273.15:.1f} degC")
    if isinstance(payload, TactileFrame):
        return f"rgb {payload.image.shape[1]}x{payload.image.shape[0]} + reference"
    if isinstance(payload, np.ndarray) and payload.ndim == 2 and payload.shape[1] == 3:
        return f"{payload.shape[0]} points"
    if isinstance(payload, np.ndarray):
        return f"{payload.dtype} {'x'.join(map(str, payload.shape))}"
    return type(payload).__name__


def describe_input(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} [{', '.join(map(str, x.shape))}]"
    return repr(x)[:40]


def build_table(tallies: dict[str, SensorTally], truth: str, t_sim: float):
    from rich.table import Table

    table = Table(title=f"simulated world  t={t_sim:5.2f} s   object: [bold]{truth}[/bold]",
                  title_justify="left")
    for col in ("sensor", "modality", "msgs", "rate Hz", "raw payload", "model input",
                "prep ms"):
        table.add_column(col, no_wrap=col != "raw payload")
    for name, t in tallies.items():
        prep = f"{np.median(t.preprocess_ms):.1f}" if t.preprocess_ms else "-"
        errors = ", ".join(f"{k} x{v}" for k, v in t.errors.items())
        table.add_row(name, t.modality, str(t.count), f"{t.rate_hz():.1f}", t.raw,
                      t.model_input + (f" [yellow]({errors})[/yellow]" if errors else ""), prep)
    return table


def run(seconds: float, seed: int, preview: Path | None, refresh_hz: float = 4.0) -> int:
    from rich.console import Console
    from rich.live import Live

    from omnibind_ros.sim.stream import WorldStream

    console = Console()
    if not console.is_terminal:  # piped/CI: rich would squeeze the table into 80 columns
        console = Console(width=150)
    stream = WorldStream(seed=seed)
    preprocessors = {name: build_preprocessor(mod.value, None)
                     for name, (mod, _) in stream.sensors.items()}
    tallies = {name: SensorTally(mod.value) for name, (mod, _) in stream.sensors.items()}
    objects_seen: list[str] = []
    wall0 = time.perf_counter()
    with Live(console=console, refresh_per_second=refresh_hz, transient=False) as live:
        last_draw = 0.0
        for item in stream.until(seconds):
            truth = stream.class_at(item.stamp_s).name
            if not objects_seen or objects_seen[-1] != truth:
                objects_seen.append(truth)
            tally = tallies[item.sensor]
            tally.count += 1
            tally.first_stamp = item.stamp_s if tally.first_stamp is None else tally.first_stamp
            tally.last_stamp = item.stamp_s
            tally.raw = describe_payload(item.payload)
            t0 = time.perf_counter()
            try:
                tally.model_input = describe_input(preprocessors[item.sensor](item.payload))
            except PreprocessError as err:  # e.g. a silent audio window: counted, shown, skipped
                tally.errors[type(err).__name__] += 1
            tally.preprocess_ms.append((time.perf_counter() - t0) * 1e3)
            now = time.perf_counter()
            if now - last_draw > 1.0 / refresh_hz:
                live.update(build_table(tallies, truth, item.stamp_s))
                last_draw = now
        live.update(build_table(tallies, stream.class_at(seconds).name, seconds))
    wall = time.perf_counter() - wall0
    n_msgs = sum(t.count for t in tallies.values())
    console.print(f"\n{n_msgs} messages from {len(tallies)} sensors over {seconds:.0f} s of "
                  f"simulated time in {wall:.1f} s wall ({n_msgs / wall:.0f} msgs/s, rendered, "
                  "simulated and preprocessed on this CPU)")
    console.print("objects shown: " + " -> ".join(objects_seen))
    if preview is not None:
        from omnibind_ros.sim.preview import write_preview

        path = write_preview(preview, n_samples=4, seed=seed)
        console.print(f"preview of every modality (4 samples): [bold]{path}[/bold]")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omnibind-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0,
                        help="simulated seconds to stream (default 12: three objects)")
    parser.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    parser.add_argument("--preview", type=Path,
                        default=default_cache_dir() / "preview" / "demo_preview.png",
                        help="where to write the PNG grid of every modality")
    parser.add_argument("--no-preview", action="store_true", help="skip the PNG grid")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    return run(args.seconds, args.seed, None if args.no_preview else args.preview)


if __name__ == "__main__":
    raise SystemExit(main())
