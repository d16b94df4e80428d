"""Generating a data set: :func:`generate` writes the manifest and index, then renders the
missing shards (resuming an interrupted run), in this process or in worker processes."""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from omnibind_ros.sim.dataset.config import (
    FORMAT_VERSION,
    KINDS,
    DatasetConfig,
    _check_int,
    _hash_json,
    dataset_dir,
)
from omnibind_ros.sim.dataset.index import build_index
from omnibind_ros.sim.dataset.rendering import (
    ShardTask,
    WorldFactory,
    code_fingerprint,
    default_world_factory,
    fingerprint_matches,
    init_worker,
    render_shard,
    render_shard_star,
    resolved_world_config,
)
from omnibind_ros.sim.dataset.shards import _json_default, read_npz_member

__all__ = ["generate"]

#: Thread limits set to 1 in the worker processes (their parallelism is the processes).
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def generate(config: DatasetConfig, cache_dir: str | os.PathLike[str] | None = None, *,
             root: str | os.PathLike[str] | None = None, workers: int | None = None,
             progress: bool = True, overwrite: bool = False,
             world_factory: WorldFactory | None = None) -> Path:
    """Render the data set described by ``config`` (resuming a partial one) and return its root.

    Parameters
    ----------
    config : what to generate.
    cache_dir : cache directory; the data set goes to ``<cache_dir>/datasets/<config.name>``
        (default :func:`omnibind_ros.core.paths.default_cache_dir`).
    root : write exactly here instead (the CLI's ``--out``).
    workers : processes (default ``config.workers``); 1 renders in this process.
    progress : show a tqdm bar on stderr.
    overwrite : delete whatever is at the root first.
    world_factory : builds a world from ``config.world`` in each worker (default: the real
        ``World``); must be picklable (a module-level function) when ``workers > 1``.

    Returns
    -------
    Path
        The data set root (holding ``manifest.json``, ``index.json`` and the shards).

    Raises
    ------
    ValueError
        The root holds a data set of a different config, or a partial one from different
        simulator code (resuming would mix them); or ``config.world`` is invalid.
    """
    root = Path(root) if root is not None else dataset_dir(config, cache_dir)
    workers = config.workers if workers is None else workers
    _check_int("workers", workers, 1)
    factory = world_factory or default_world_factory
    world_cfg = resolved_world_config(config.world) if world_factory is None else None
    config_hash = _hash_json({"config": config.content_hash(), "world": world_cfg,
                              "format": FORMAT_VERSION})
    fingerprint = (code_fingerprint(config.degraded) if world_factory is None
                   else "custom-world")
    if overwrite and root.exists():
        shutil.rmtree(root)
    manifest, stale_code = _open_manifest(root, config, config_hash, fingerprint, world_cfg)
    index = build_index(config)
    _write_json(root / "index.json", index)
    _remove_stale_tmp(root)
    tasks = _pending_tasks(root, index)
    if stale_code:
        if tasks or not manifest.get("complete"):
            raise ValueError(
                f"{root} holds a partial data set rendered by other simulator code "
                f"({manifest.get('code_fingerprint')} vs {fingerprint}); resuming would mix "
                "them: overwrite it")
        warnings.warn(f"{root} was rendered by other simulator code "
                      f"({manifest.get('code_fingerprint')} vs {fingerprint}); overwrite to "
                      "regenerate it", stacklevel=2)
        return root
    total = sum(e["size"] for e in index["splits"].values())
    todo = sum(len(t.seeds) for t in tasks)
    t0 = time.perf_counter()
    rendered = _run_tasks(root, tasks, factory, config.world, workers, progress,
                          total - todo, total, config.degradations)
    elapsed = time.perf_counter() - t0
    manifest.update(complete=True,
                    last_run={"samples": rendered, "elapsed_s": round(elapsed, 3),
                              "workers": workers, "finished": time.strftime("%FT%T%z")})
    _write_json(root / "manifest.json", manifest)
    return root


def _open_manifest(root: Path, config: DatasetConfig, config_hash: str, fingerprint: str,
                   world_cfg: dict[str, Any] | None) -> tuple[dict[str, Any], bool]:
    """Read the root's manifest (or start one); return it and whether its code is stale."""
    path = root / "manifest.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("config_hash") != config_hash:
            changed = _changed_keys(old, config.to_dict(), world_cfg)
            raise ValueError(
                f"{root} holds a data set of another config (hash {old.get('config_hash')}, "
                f"this config {config_hash}; differs in: {', '.join(changed) or 'format'}); "
                "use another output directory or overwrite")
        stored = old.get("code_fingerprint")
        same = stored == fingerprint or (fingerprint != "custom-world" and fingerprint_matches(
            stored, config.degraded))
        return old, not same
    manifest = {"format_version": FORMAT_VERSION, "config": config.to_dict(),
                "config_hash": config_hash, "world_config": world_cfg,
                "code_fingerprint": fingerprint, "complete": False,
                "created": time.strftime("%FT%T%z")}
    root.mkdir(parents=True, exist_ok=True)
    _write_json(path, manifest)
    return manifest, False


def _changed_keys(manifest: Mapping[str, Any], config: Mapping[str, Any],
                  world_cfg: Mapping[str, Any] | None) -> list[str]:
    """Names of the config and world-config entries that differ from a manifest's."""
    def diff(prefix: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
        a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))  # same key/tuple types
        return [f"{prefix}{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]

    keys = [k for k in diff("", manifest.get("config") or {}, config)
            if k not in ("name", "workers")]
    return keys + diff("world.", manifest.get("world_config") or {}, world_cfg or {})


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default))
    os.replace(tmp, path)


def _remove_stale_tmp(root: Path) -> None:
    """Temporary files of an interrupted run are never complete shards: delete them."""
    for kind in KINDS:
        for tmp in (root / kind).glob("*/.shard_*.tmp.*"):
            tmp.unlink(missing_ok=True)


def _pending_tasks(root: Path, index: Mapping[str, Any]) -> list[ShardTask]:
    """Shards still to render: missing, or present with seeds that do not match the index."""
    tasks = []
    for entry in index["splits"].values():
        for shard in entry["shards"]:
            seeds = tuple(entry["seeds"][shard["start"]:shard["stop"]])
            path = root / shard["file"]
            if path.exists() and _shard_matches(path, seeds):
                continue
            tasks.append(ShardTask(entry["kind"], entry["split"], shard["file"], shard["start"],
                               seeds, tuple(entry["class_index"][shard["start"]:shard["stop"]])))
    # Slowest (student) shards first so the parallel tail is short.
    return sorted(tasks, key=lambda t: t.kind != "student")


def _shard_matches(path: Path, seeds: Sequence[int]) -> bool:
    try:
        stored = read_npz_member(path, "seed", mmap=False)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    return stored.tolist() == list(seeds)


def _run_tasks(root: Path, tasks: list[ShardTask], factory: WorldFactory,
               overrides: Mapping[str, Any], workers: int, progress: bool, done: int,
               total: int, degradations: Mapping[str, Any] | None = None) -> int:
    from tqdm import tqdm

    bar = tqdm(total=total, initial=done, unit="sample", disable=not progress, smoothing=0.1,
               desc=root.name, dynamic_ncols=True)
    rendered = 0
    try:
        for n in _execute(root, tasks, factory, overrides, workers, degradations):
            rendered += n
            bar.update(n)
    finally:
        bar.close()
    return rendered


def _execute(root: Path, tasks: list[ShardTask], factory: WorldFactory,
             overrides: Mapping[str, Any], workers: int,
             degradations: Mapping[str, Any] | None = None) -> Iterator[int]:
    """Yield the sample count of each finished shard, rendering in ``workers`` processes."""
    if not tasks:
        return
    if workers == 1 or len(tasks) == 1:
        init_worker(factory, overrides, degradations)
        for task in tasks:
            yield render_shard(root, task)
        return
    import multiprocessing as mp

    # 'spawn': pybullet and open3d hold process-global state that must not be forked; each
    # worker builds its own world. One BLAS/OpenMP thread per worker: the parallelism is the
    # processes, and more threads than cores only add contention.
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        pool = mp.get_context("spawn").Pool(min(workers, len(tasks)), initializer=init_worker,
                                            initargs=(factory, dict(overrides), degradations))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    with pool:
        yield from pool.imap_unordered(render_shard_star, [(root, t) for t in tasks])
