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

__all__ = ["COMPATIBLE_FINGERPRINTS", "ShardTask", "WorldFactory", "WorldLike",
           "code_fingerprint", "default_world_factory", "fingerprint_matches", "init_worker",
           "render_shard", "render_shard_star", "resolved_world_config"]

#: The simulator's modules (this package, a directory, is not among the ``*.py`` hashed).
_SIM_DIR = Path(__file__).resolve().parents[1]
#: Modules that do not change what a clean sample looks like: not hashed.
_NOT_RENDERING = ("cli.py", "preview.py", "stream.py", "scenario.py")
#: Fingerprints of earlier simulator code whose clean samples are bit-identical to this
#: code's, so data sets (and training runs keyed on them) it rendered stay valid. An entry
#: needs proof: ``test_default_samples_unchanged`` holds golden digests of samples rendered by
#: that code. Empty this set whenever a change alters what a clean sample looks like.
#: 16659ef9996836cf: before sensor degradations (world.py gained the degradation hook and
#: scenario.py its degrade actions, then left the hash; no clean sample changed).
COMPATIBLE_FINGERPRINTS = frozenset({"16659ef9996836cf"})


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


def code_fingerprint(degraded: bool = False) -> str:
    """Hash of the simulator's code: data from different simulator code must not mix.

    Each module counts by its syntax tree without docstrings (:func:`code_of`), so editing
    documentation or comments keeps every rendered data set valid. The degradation package
    (``sim/degrade/``) counts only for a data set with degradations (``degraded``): a clean
    data set does not depend on it.
    """
    h = hashlib.sha256()
    for path in sorted(_SIM_DIR.glob("*.py")):
        if path.name in _NOT_RENDERING:
            continue
        h.update(path.name.encode() + b"\0" + code_of(path).encode())
    if degraded:
        for path in sorted((_SIM_DIR / "degrade").glob("*.py")):
            h.update(b"degrade/" + path.name.encode() + b"\0" + code_of(path).encode())
    return h.hexdigest()[:16]


def fingerprint_matches(stored: str | None, degraded: bool = False) -> bool:
    """A data set rendered by code ``stored`` holds what this code renders (same fingerprint,
    or, for a clean data set, one of :data:`COMPATIBLE_FINGERPRINTS`)."""
    current = code_fingerprint(degraded)
    return stored == current or (not degraded and stored in COMPATIBLE_FINGERPRINTS)


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


#: The world of this process, built by :func:`init_worker`, and the degradations of its
#: student samples.
_WORLD: WorldLike | None = None
_DEGRADE: Any = None


def init_worker(factory: WorldFactory, overrides: Mapping[str, Any],
                degradations: Mapping[str, Any] | None = None) -> None:
    """Build this process's world (in each worker, or once in the generating process);
    ``degradations`` is a :class:`~omnibind_ros.sim.degrade.DegradationSpec` as a mapping."""
    global _WORLD, _DEGRADE
    _WORLD = factory(dict(overrides))
    _DEGRADE = None
    if degradations:
        from omnibind_ros.sim.degrade import DegradationSpec

        _DEGRADE = DegradationSpec.from_dict(degradations)


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
        samples.append(_degraded(sample) if task.kind == "student" else sample)
    write_shard(root / task.file, pack_samples(samples))
    return len(samples)


def _degraded(sample: Sample) -> Sample:
    """``sample`` with this process's degradations applied (drawn from its seed), as
    ``World.sample`` of a world with that spec would give it."""
    if _DEGRADE is None:
        return sample
    from omnibind_ros.sim.world import STREAM_DEGRADE

    window = getattr(getattr(_WORLD, "config", None), "event_window_s", None)
    context = {} if window is None else {"window_s": window}
    return _DEGRADE.apply(sample, sample.seed, STREAM_DEGRADE, **context)

