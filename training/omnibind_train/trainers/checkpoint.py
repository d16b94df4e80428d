"""Checkpoints: safetensors weights + JSON configs + a weights-only-loadable trainer state.

A checkpoint is a directory::

    weights.safetensors   trainable weights, keys "<part>/<parameter name>" (e.g.
                          "image/head.1.weight", "loss/logit_scale.log_scale")
    config.json           format tag, stage, step, and the configs that rebuild the model:
                          "model" (EncoderConfig / FusionConfig dicts), "preprocess" (the core
                          preprocessing config of every modality), "train" (the trainer config),
                          plus provenance (data set hash, upstream checkpoints)
    trainer_state.pt      optimiser, scheduler, step, RNG states: plain tensors and containers,
                          loaded with ``torch.load(weights_only=True)``; absent in weights-only
                          checkpoints

Frozen pretrained trunks are not stored (they are rebuilt from their pretrained weights, named by
the encoder config); trainable trunks (PointNet) are. Nothing is unpickled from a checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "omnibind_train.checkpoint/1"
WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "trainer_state.pt"


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``weights[part]`` is a state dict, ``state`` the trainer state."""

    path: Path
    weights: dict[str, dict[str, torch.Tensor]]
    config: dict[str, Any]
    state: dict[str, Any] | None


def _frozen_prefixes(module: nn.Module) -> list[str]:
    from omnibind_train.models.encoders import ModalityEncoder

    return [f"{name}.trunk." if name else "trunk." for name, m in module.named_modules()
            if isinstance(m, ModalityEncoder) and m.trunk_frozen]


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` without the frozen trunks of the encoders inside it."""
    skip = _frozen_prefixes(module)
    return {k: v for k, v in module.state_dict().items()
            if not any(k.startswith(p) for p in skip)}


def load_trainable_state(module: nn.Module, state: Mapping[str, torch.Tensor], *,
                         what: str = "checkpoint") -> None:
    """Load :func:`trainable_state` output; every non-frozen key must be present and known."""
    expected = set(trainable_state(module))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(f"{what}: missing keys {missing[:8]}, unexpected keys {unexpected[:8]}")
    module.load_state_dict(dict(state), strict=False)


def save_checkpoint(directory: str | os.PathLike[str],
                    weights: Mapping[str, Mapping[str, torch.Tensor]], config: Mapping[str, Any],
                    state: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint directory atomically (a temporary sibling, then a rename).

    Parameters
    ----------
    directory : the checkpoint directory (replaced if it exists).
    weights : part name -> state dict.
    config : JSON-serialisable configs (see the module docstring).
    state : trainer state (optional).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    flat = {f"{part}/{name}": t.detach().cpu().contiguous().clone()
            for part, sd in weights.items() for name, t in sd.items()}
    save_file(flat, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
    payload = {"format": FORMAT, **config}
    (tmp / CONFIG_FILE).write_text(json.dumps(payload, indent=1, sort_keys=True, default=str))
    if state is not None:
        torch.save(dict(state), tmp / STATE_FILE)
    old = directory.with_name(f".{directory.name}.old.{os.getpid()}")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


class UnreadableCheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, not the format, damaged)."""


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Re-raise a loader's error naming ``path``, on one line. A refused pickle stays an
    ``UnpicklingError`` (torch's weights-only refusal, which says why); everything else
    becomes :class:`UnreadableCheckpointError`."""
    try:
        yield
    except pickle.UnpicklingError as exc:
        raise pickle.UnpicklingError(f"{path}: {_one_line(exc)}") from exc
    except (OSError, EOFError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, UnreadableCheckpointError):
            raise
        raise UnreadableCheckpointError(
            f"{path}: not a loadable checkpoint ({type(exc).__name__}: {_one_line(exc)})"
        ) from exc
    except Exception as exc:  # safetensors' SafetensorError and other loaders' own types
        raise UnreadableCheckpointError(
            f"{path}: not a loadable checkpoint ({type(exc).__name__}: {_one_line(exc)})"
        ) from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def load_checkpoint(directory: str | os.PathLike[str], *,
                    map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint directory (safetensors + JSON + weights-only torch state).

    Raises :class:`UnreadableCheckpointError` (or ``pickle.UnpicklingError`` for a state file
    holding more than tensors) naming the file that failed."""
    from safetensors.torch import load_file

    directory = Path(directory)
    with reading(directory / CONFIG_FILE):
        config = json.loads((directory / CONFIG_FILE).read_text())
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise UnreadableCheckpointError(f"{directory}: not an {FORMAT} checkpoint ({found!r})")
    weights: dict[str, dict[str, torch.Tensor]] = {}
    with reading(directory / WEIGHTS_FILE):
        for key, tensor in load_file(str(directory / WEIGHTS_FILE)).items():
            part, name = key.split("/", 1)
            weights.setdefault(part, {})[name] = tensor
    state_path = directory / STATE_FILE
    with reading(state_path):
        state = (torch.load(state_path, map_location=map_location, weights_only=True)
                 if state_path.exists() else None)
    return Checkpoint(directory, weights, config, state)


def checkpoint_step(directory: Path) -> int:
    """The step a checkpoint directory was written at (-1 if unreadable)."""
    try:
        return int(json.loads((directory / CONFIG_FILE).read_text())["step"])
    except (OSError, KeyError, ValueError):
        return -1


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint with the highest step in ``run_dir/checkpoints/*`` and ``run_dir/final``."""
    run_dir = Path(run_dir)
    candidates = [p for p in (run_dir / "checkpoints").glob("step_*") if p.is_dir()]
    if (run_dir / "final").is_dir():
        candidates.append(run_dir / "final")
    scored = [(checkpoint_step(p), p) for p in candidates]
    scored = [s for s in scored if s[0] >= 0]
    return max(scored, key=lambda s: s[0])[1] if scored else None
