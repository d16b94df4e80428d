"""Pre-training the specialist spaces (:mod:`.specialists`) on their own data, and storing them.

Each space trains phase by phase on cached tower inputs: per batch every tower named in a pair
runs once, the space's own loss (InfoNCE or sigmoid) is summed over its pairs, and anchors (a
frozen tower of another space) are embedded once up front. A space is stored as
``<run>/spaces/<name>/{weights.safetensors, space.json}`` and reused when its spec, its anchors
and the data set are unchanged (a killed run resumes at the first space not stored).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data import hash_json
from .data import BindingData
from .specialists import PhaseSpec, SimSpace, SpecialistSpec

__all__ = ["load_space", "occlude_points", "space_dir", "train_specialist", "train_spaces"]

#: points per training sample of a PointNet tower (the CAD stage's subsample; all at export).
POINT_SUBSAMPLE = 256


def space_dir(run_dir: Path, name: str) -> Path:
    return run_dir / "spaces" / name


def _space_key(spec: SpecialistSpec, data: BindingData, anchors: Mapping[str, str]) -> str:
    return hash_json({"spec": spec.to_dict(), "data": data.ws.dataset_fp, "anchors": dict(anchors),
                      "version": 1})


def load_space(run_dir: Path, name: str) -> SimSpace:
    """A stored specialist space (eval mode, frozen)."""
    from safetensors.torch import load_file

    d = space_dir(run_dir, name)
    meta = json.loads((d / "space.json").read_text())
    space = SimSpace(SpecialistSpec.from_dict(meta["spec"]))
    space.load_state_dict(load_file(str(d / "weights.safetensors")), strict=True)
    return space.eval().requires_grad_(False)


def _save_space(run_dir: Path, space: SimSpace, key: str, info: Mapping[str, Any]) -> None:
    from safetensors.torch import save_file

    d = space_dir(run_dir, space.name)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in space.state_dict().items()},
              str(d / "weights.safetensors"))
    (d / "space.json").write_text(json.dumps({"spec": space.spec.to_dict(), "key": key,
                                              **info}, indent=1, default=str))


def stored_key(run_dir: Path, name: str) -> str | None:
    path = space_dir(run_dir, name) / "space.json"
    if not path.exists() or not (path.parent / "weights.safetensors").exists():
        return None
    return json.loads(path.read_text()).get("key")


def occlude_points(points: torch.Tensor, fraction: torch.Tensor, generator: torch.Generator
                   ) -> torch.Tensor:
    """Remove the points beyond a random plane (an occluder), ``fraction`` of each cloud, and
    refill by repeating kept points so the shape stays ``[B, P, 3]`` (max-pooling PointNet is
    invariant to duplicates)."""
    b, p, _ = points.shape
    normal = torch.nn.functional.normalize(torch.randn(b, 1, 3, generator=generator), dim=-1)
    depth = (points * normal).sum(-1)                                   # [B, P]
    order = depth.argsort(dim=1)
    keep = (p * (1 - fraction)).long().clamp(min=8)                     # [B]
    pick = (torch.rand(b, p, generator=generator) * keep[:, None]).long()
    idx = order.gather(1, pick)
    return points.gather(1, idx[..., None].expand(-1, -1, 3))


def _subsample_points(points: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    b, p, _ = points.shape
    if p <= POINT_SUBSAMPLE:
        return points
    idx = torch.rand(b, p, generator=generator).argsort(dim=1)[:, :POINT_SUBSAMPLE]
    return points.gather(1, idx[..., None].expand(-1, -1, 3))


def phase_instances(data: BindingData, phase: PhaseSpec) -> np.ndarray:
    """The instances of the phase's split it trains on: a fraction of a permutation seeded by
    the data set alone, so equal fractions of different specialists are the same instances."""
    n = len(data.ws.dataset(phase.data, "train"))
    order = np.random.default_rng([data.seed, 77, 0 if phase.data == "teacher" else 1]
                                  ).permutation(n)
    lo, hi = (int(round(f * n)) for f in phase.subset)
    return np.sort(order[lo:hi])


def _member_inputs(spec: SpecialistSpec, data: BindingData, phase: PhaseSpec, modality: str,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    if modality == "text":
        caps = data.captions(phase.data, "train", spec.corpus, variant=spec.seed)
        feats = data.caption_features(caps)
        return feats, torch.ones(len(caps), dtype=torch.bool)
    return data.inputs(phase.data, "train", modality, spec.input_kind(modality))


@torch.no_grad()
def embed_inputs(space: SimSpace, modality: str, values: torch.Tensor, *,
                 batch_size: int = 512) -> torch.Tensor:
    """Unit embeddings of cached inputs in batches (eval mode)."""
    space.eval()
    out = [space.encode(modality, values[i:i + batch_size].float())
           for i in range(0, values.shape[0], batch_size)]
    return torch.cat(out) if out else values.new_zeros(0, space.embed_dim)


def _run_phase(space: SimSpace, spec: SpecialistSpec, phase: PhaseSpec, data: BindingData,
               anchors: Mapping[str, SimSpace], seed: int, progress: bool) -> list[float]:
    from tqdm import tqdm

    inst = torch.from_numpy(phase_instances(data, phase))
    members = sorted({ref for pair in phase.pairs for ref in pair})
    values: dict[str, torch.Tensor] = {}
    valid = torch.ones(len(inst), dtype=torch.bool)
    for ref in members:
        m, _, other = ref.partition("@")
        if other:
            anchor = anchors[other]
            x, ok = data.inputs(phase.data, "train", m,
                                anchor.spec.input_kind(m))
            values[ref] = embed_inputs(anchor, m, x[inst])
        else:
            x, ok = _member_inputs(spec, data, phase, m)
            values[ref] = x[inst]
        valid &= ok[inst]
    keep = valid.nonzero().squeeze(1)
    values = {k: v[keep] for k, v in values.items()}
    n = int(keep.numel())
    if n < 2:
        raise ValueError(f"{spec.name}: phase on {phase.data} {phase.subset} has {n} valid "
                         "samples")
    own = [r for r in members if "@" not in r]
    train = phase.train if phase.train is not None else own
    params = [p for m in train for p in space.towers[m].parameters()] + [space.log_scale]
    if space.bias is not None:
        params.append(space.bias)
    for m in space.towers:
        space.towers[m].requires_grad_(m in train)
    opt = torch.optim.AdamW(params, lr=phase.lr, weight_decay=0.05)
    bs = min(phase.batch_size, n)
    steps = phase.epochs * max(1, n // bs)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps // 20))
        * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(seed)
    occl = spec.point_occlusion
    losses: list[float] = []
    space.train()
    for m in space.towers:
        if m not in train:
            space.towers[m].eval()
    with tqdm(total=steps, desc=f"space {spec.name}", disable=not progress, unit="step",
              mininterval=1.0, leave=False) as bar:
        for _ in range(phase.epochs):
            order = torch.randperm(n, generator=gen)
            for s in range(max(1, n // bs)):
                idx = order[s * bs:(s + 1) * bs]
                emb: dict[str, torch.Tensor] = {}
                for ref in members:
                    x = values[ref][idx]
                    if "@" in ref:
                        emb[ref] = x.float()
                        continue
                    if ref == "point_cloud":
                        x = x.float()
                        if occl is not None:
                            frac = torch.empty(x.shape[0]).uniform_(occl[0], occl[1],
                                                                    generator=gen)
                            x = occlude_points(x, frac, gen)
                        x = _subsample_points(x, gen)
                    emb[ref] = space.encode(ref, x.float())
                loss = sum(space.pair_loss(emb[a], emb[b]) for a, b in phase.pairs)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    space.eval()
    return losses


def train_specialist(spec: SpecialistSpec, data: BindingData, *,
                     anchors: Mapping[str, SimSpace], init: SimSpace | None = None,
                     seed: int = 0, progress: bool = True) -> tuple[SimSpace, dict[str, Any]]:
    """Train one space through its phases; returns it (eval, frozen) and a training record."""
    torch.manual_seed(seed + 1009 * spec.seed)
    space = SimSpace(spec)
    if init is not None:
        shared = {k: v for k, v in init.state_dict().items()
                  if k in space.state_dict() and v.shape == space.state_dict()[k].shape}
        space.load_state_dict(shared, strict=False)
    t0 = time.perf_counter()
    history = [_run_phase(space, spec, phase, data, anchors, seed + 31 * spec.seed + i, progress)
               for i, phase in enumerate(spec.phases)]
    record = {"seconds": round(time.perf_counter() - t0, 2),
              "final_loss": [h[-1] if h else None for h in history],
              "steps": [len(h) for h in history],
              "parameters": sum(p.numel() for p in space.parameters())}
    return space.eval().requires_grad_(False), record


def train_spaces(specs: list[SpecialistSpec], data: BindingData, *, seed: int = 0,
                 progress: bool = True, log: Any = print) -> dict[str, SimSpace]:
    """Train (or load, when stored with the same key) every space, anchors first."""
    run_dir = data.run_dir
    by_name = {s.name: s for s in specs}
    done: dict[str, SimSpace] = {}
    keys: dict[str, str] = {}

    def visit(name: str, stack: tuple[str, ...] = ()) -> SimSpace:
        if name in done:
            return done[name]
        if name in stack:
            raise ValueError(f"specialist anchors form a cycle: {' -> '.join(stack + (name,))}")
        if name not in by_name:
            raise ValueError(f"a specialist depends on {name!r}, which is not in the config's "
                             f"spaces {sorted(by_name)}")
        spec = by_name[name]
        deps = sorted(set(spec.anchors.values()) | ({spec.init_from} if spec.init_from else set()))
        anchors = {d: visit(d, stack + (name,)) for d in deps}
        for m, other in spec.anchors.items():
            if anchors[other].embed_dim != spec.dim:
                raise ValueError(f"{name}: anchored to {m}@{other} (dim "
                                 f"{anchors[other].embed_dim}) but its dim is {spec.dim}; an "
                                 "anchored space lives in its anchor's geometry")
        key = _space_key(spec, data, {d: keys[d] for d in deps})
        keys[name] = key
        if stored_key(run_dir, name) == key:
            done[name] = load_space(run_dir, name)
            log(f"[spaces] {name}: stored ({spec.analogue})")
            return done[name]
        space, record = train_specialist(spec, data, anchors=anchors,
                                         init=anchors.get(spec.init_from or ""), seed=seed,
                                         progress=progress)
        _save_space(run_dir, space, key, {"record": record})
        log(f"[spaces] {name}: trained in {record['seconds']:.1f} s, "
            f"{record['parameters']:,} parameters, final loss {record['final_loss']} "
            f"({spec.analogue})")
        done[name] = space
        return space

    for spec in specs:
        visit(spec.name)
    return {s.name: done[s.name] for s in specs}


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
