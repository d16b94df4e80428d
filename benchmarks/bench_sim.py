"""Simulator throughput: full 7-modality samples/s and image-only samples/s, 1 and 2 processes.

Prints the rates and the projected generation time of a data set config (default
``config/sim_dataset.yaml``): its teacher splits are image+caption samples, its student splits
full samples. Worker start-up (imports, mesh loading) is excluded from the rates and reported
separately. The machine may be shared; run it on an idle one for numbers to quote.

Usage::

    python benchmarks/bench_sim.py [--n-full 200] [--n-image 600] [--processes 1 2]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from omnibind_ros.core.modalities import Modality  # noqa: E402
from omnibind_ros.sim.dataset import KIND_MODALITIES, DatasetConfig  # noqa: E402

IMAGE_ONLY = (Modality.IMAGE,)
_WORLD = None


def _init(overrides: dict) -> None:
    global _WORLD
    from omnibind_ros.sim.world import World, WorldConfig

    _WORLD = World(WorldConfig.from_dict(overrides))
    for c in range(18):  # load every mesh and renderer once: start-up, not throughput
        _WORLD.sample(10 ** 9 + c, None, class_index=c)


def _render(args: tuple[int, int, tuple[Modality, ...] | None]) -> int:
    start, stop, mods = args
    for seed in range(start, stop):
        _WORLD.sample(seed, mods, class_index=seed % 18)
    return stop - start


def _worker(overrides: dict, barrier, results, job: tuple) -> None:
    t0 = time.perf_counter()
    _init(overrides)
    results.put(("startup", time.perf_counter() - t0))
    barrier.wait()  # every process starts rendering at the same moment
    t1 = time.time()
    _render(job)
    results.put(("span", (t1, time.time())))


def rate(n: int, mods: tuple[Modality, ...] | None, processes: int, overrides: dict
         ) -> tuple[float, float]:
    """(samples per second, start-up seconds) rendering ``n`` samples in ``processes``.

    Start-up (imports, meshes, first renders) is excluded: all processes wait at a barrier
    before rendering, and the rate is n over the span from that moment to the last finish.
    """
    if processes == 1:
        t0 = time.perf_counter()
        _init(overrides)
        startup = time.perf_counter() - t0
        t1 = time.perf_counter()
        _render((0, n, mods))
        return n / (time.perf_counter() - t1), startup
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    bounds = np.linspace(0, n, processes + 1).astype(int)
    procs = [ctx.Process(target=_worker, args=(overrides, barrier, results,
                                                (int(a), int(b), mods)))
             for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    for p in procs:
        p.start()
    got = [results.get() for _ in range(2 * processes)]
    for p in procs:
        p.join()
    spans = [v for k, v in got if k == "span"]
    startup = max(v for k, v in got if k == "startup")
    return n / (max(b for _, b in spans) - min(a for a, _ in spans)), startup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-full", type=int, default=200, help="full samples per measurement")
    parser.add_argument("--n-image", type=int, default=600, help="image-only samples")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--config", type=Path, default=REPO / "config" / "sim_dataset.yaml")
    args = parser.parse_args()

    config = DatasetConfig.from_yaml(args.config)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
          f"(other work on the machine lowers these numbers)")
    kinds = {"full (7 modalities)": (None, args.n_full),
             "image only": (IMAGE_ONLY, args.n_image),
             "teacher (image+caption)": (KIND_MODALITIES["teacher"], args.n_image)}
    results: dict[tuple[str, int], float] = {}
    for p in args.processes:
        for label, (mods, n) in kinds.items():
            r, startup = rate(n, mods, p, config.world)
            results[label, p] = r
            print(f"{label:<24} {p} process(es): {r:7.1f} samples/s  "
                  f"(start-up {startup:.1f} s, n={n})")

    sizes = config.split_sizes()
    n_teacher = sum(v for (k, _), v in sizes.items() if k == "teacher")
    n_student = sum(v for (k, _), v in sizes.items() if k == "student")
    for p in args.processes:
        seconds = (n_teacher / results["teacher (image+caption)", p]
                   + n_student / results["full (7 modalities)", p])
        print(f"projected '{config.name}' ({n_teacher} teacher + {n_student} student samples) "
              f"with {p} process(es): {seconds / 60:.1f} min + start-up")


if __name__ == "__main__":
    main()
