#!/usr/bin/env python3
"""Event-camera decode rate: millions of events per second (Mev/s) per encoding.

Encodes a synthetic stream (a moving edge sweeping a 1280 x 720 sensor plus background noise,
so evt3 gets the vector runs a Prophesee sensor writes), cuts it into packets of the size
metavision_driver publishes, and decodes every packet with
:class:`omnibind_ros.core.event_codecs.EventPacketDecoder`. The baseline in the same run is a
per-word Python decoder (the reference codec's loop, as one would first write it) on the first
packets only.

    python benchmarks/bench_event_decode.py                  # 2 M events, every encoding
    python benchmarks/bench_event_decode.py --events 5000000 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runs from a checkout without pip install -e
    sys.path.insert(0, str(REPO))

from omnibind_ros.core.event_codecs import EventPacketDecoder  # noqa: E402
from omnibind_ros.core.event_encoders import (  # noqa: E402
    encode_evt3,
    encode_libcaer,
    encode_libcaer_cmp,
    encode_mono,
)

WIDTH, HEIGHT = 1280, 720


def synthetic_stream(n: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``n`` events over about a second: 80 % on a vertical edge sweeping right (runs of
    neighbouring pixels firing in the same microsecond), 20 % uniform noise; time-ordered."""
    rng = np.random.default_rng(seed)
    t_us = np.sort(rng.integers(0, 1_000_000, n))
    edge = rng.random(n) < 0.8
    x = np.where(edge, (t_us * WIDTH // 1_000_000 + rng.integers(0, 24, n)) % WIDTH,
                 rng.integers(0, WIDTH, n))
    y = np.where(edge, (t_us // 7) % HEIGHT, rng.integers(0, HEIGHT, n))
    p = rng.integers(0, 2, n)
    order = np.lexsort((x, p, y, t_us))
    return x[order], y[order], t_us[order] * 1000, p[order]


def python_evt3(buf: bytes, width: int, height: int) -> int:
    """Per-word reference loop (the baseline): returns the number of events."""
    y = base = pol = high = low = count = 0
    for w in np.frombuffer(buf, "<u2").tolist():
        code, pay = w >> 12, w & 0xFFF
        if code == 0x8:
            high = pay
        elif code == 0x6:
            low = pay
        elif code == 0x0:
            y = pay & 0x7FF
        elif code == 0x3:
            base, pol = pay & 0x7FF, pay >> 11
        elif code in (0x4, 0x5):
            bits = 12 if code == 0x4 else 8
            for i in range(bits):
                if pay >> i & 1 and base + i < width and y < height:
                    count += 1
            base += bits
        elif code == 0x2 and (pay & 0x7FF) < width and y < height:
            count += 1
    _ = (high, low, pol)
    return count


def packets(buf: bytes, size: int) -> list[bytes]:
    size -= size % 8
    return [buf[i:i + size] for i in range(0, len(buf), size)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--packet-bytes", type=int, default=65536,
                    help="bytes per EventPacket (metavision_driver publishes ~1 ms of data)")
    ap.add_argument("--baseline-packets", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    x, y, t_ns, p = synthetic_stream(args.events)
    t_us = t_ns // 1000
    streams = {"evt3": encode_evt3(x, y, t_ns, p), "mono": encode_mono(x, y, t_ns - t_ns[0], p),
               "libcaer": encode_libcaer(x, y, t_us, p),
               "libcaer_cmp": encode_libcaer_cmp(x, y, t_us - t_us[0], p)}
    rows = []
    for encoding, buf in streams.items():
        parts = packets(buf, args.packet_bytes)
        dec = EventPacketDecoder()
        start = time.perf_counter()
        n = sum(len(dec.decode(encoding, part, WIDTH, HEIGHT, time_base=10**18))
                for part in parts)
        seconds = time.perf_counter() - start
        rows.append({"encoding": encoding, "events": n, "bytes_per_event": len(buf) / n,
                     "packets": len(parts), "seconds": seconds, "mev_s": n / seconds / 1e6})
    base_parts = packets(streams["evt3"], args.packet_bytes)[:args.baseline_packets]
    start = time.perf_counter()
    n_base = sum(python_evt3(part, WIDTH, HEIGHT) for part in base_parts)
    base_s = time.perf_counter() - start
    baseline = {"encoding": "evt3 (per-word Python loop)", "events": n_base,
                "seconds": base_s, "mev_s": n_base / base_s / 1e6}

    print(f"{args.events:,} events, {args.packet_bytes} B packets, {WIDTH}x{HEIGHT}")
    print(f"{'encoding':30s} {'B/event':>8s} {'packets':>8s} {'Mev/s':>8s}")
    for r in rows:
        print(f"{r['encoding']:30s} {r['bytes_per_event']:8.2f} {r['packets']:8d} "
              f"{r['mev_s']:8.2f}")
    print(f"{baseline['encoding']:30s} {'':8s} {len(base_parts):8d} {baseline['mev_s']:8.2f}")
    evt3 = next(r for r in rows if r["encoding"] == "evt3")
    print(f"evt3 vectorised / per-word loop: {evt3['mev_s'] / baseline['mev_s']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "baseline": baseline}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
