"""The world that renders a data set's samples: the factory protocol and the real world, the
fingerprint of the simulator code that renders, and rendering one shard in a worker."""
from __future__ import annotations

import ast
import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from omnibind_ros.core.modalities import Modality
from omnibind_ros.sim.dataset.config import KIND_MODALITIES
from omnibind_ros.sim.dataset.shards import pack_samples, write_shard
from omnibind_ros.sim.types import Sample

__all__ = ["ShardTask", "WorldFactory", "WorldLike", "code_fingerprint", "default_world_factory",
           "init_worker", "render_shard", "render_shard_star", "resolved_world_config"]

#: The simulator's modules (this package, a directory, is not among the ``*.py`` hashed).
_SIM_DIR = Path(__file__).resolve().parents[1]


class WorldLike(Protocol):
    """What the writer needs from a world: ``omnibind_ros.sim.world.World`` satisfies it."""

    def sample(self, seed: int, modalities: Sequence[Modality] | None = None,
               class_index: int | None = None) -> Sample: ...


WorldFactory = Callable[[Mapping[str, Any]], WorldLike]


def default_world_factory(overrides: Mapping[str, Any]) -> WorldLike:
    """Build the real :class:`omnibind_ros.sim.world.World` from ``WorldConfig`` overrides."""
    from omnibind_ros.sim.world import World, WorldConfig

    return World(WorldConfig.from_dict(dict(overrides)))


def resolved_world_config(overrides: Mapping[str, Any]) -> dict[str, Any] | None:
    """The full world config the overrides produce (raises ``ValueError`` on bad overrides)."""
    try:
        from omnibind_ros.sim.world import WorldConfig
    except ImportError:
        return None
    cfg = WorldConfig.from_dict(dict(overrides))
    to_dict = getattr(cfg, "to_dict", None)
    return to_dict() if callable(to_dict) else dataclasses.asdict(cfg)


def code_fingerprint() -> str:
    """Hash of the simulator's code: data from different simulator code must not mix.

    Each module counts by its syntax tree without docstrings (:func:`code_of`), so editing
    documentation or comments keeps every rendered data set valid.
    """
    h = hashlib.sha256()
    for path in sorted(_SIM_DIR.glob("*.py")):
        if path.name in ("cli.py", "preview.py", "stream.py"):
            continue  # these do not change what a sample looks like
        h.update(path.name.encode() + b"\0" + code_of(path).encode())
    return h.hexdigest()[:16]


def code_of(path: Path) -> str:
    """A module's code as its syntax tree with docstrings removed (comments are not in it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


@dataclass(frozen=True)
class ShardTask:
    """One shard to render: its samples' seeds and classes, and where it goes in the root."""

    kind: str
    split: str
    file: str
    start: int
    seeds: tuple[int, ...]
    classes: tuple[int, ...]


#: The world of this process, built by :func:`init_worker`.
_WORLD: WorldLike | None = None


def init_worker(factory: WorldFactory, overrides: Mapping[str, Any]) -> None:
    """Build this process's world (in each worker, or once in the generating process)."""
    global _WORLD
    _WORLD = factory(dict(overrides))


def render_shard_star(args: tuple[Path, ShardTask]) -> int:
    """:func:`render_shard` of ``(root, task)`` (for ``Pool.imap_unordered``)."""
    return render_shard(*args)


def render_shard(root: Path, task: ShardTask) -> int:
    """Render ``task``'s samples with this process's world and write its shard; the count."""
    assert _WORLD is not None, "worker not initialised"
    modalities = KIND_MODALITIES[task.kind]
    samples = []
    for seed, cls in zip(task.seeds, task.classes, strict=True):
        sample = _WORLD.sample(seed, modalities=modalities, class_index=cls)
        if sample.class_index != cls or sample.seed != seed:
            raise RuntimeError(f"world returned class {sample.class_index} seed {sample.seed} "
                               f"for requested class {cls} seed {seed}")
        samples.append(sample)
    write_shard(root / task.file, pack_samples(samples))
    return len(samples)

