"""Trainable-parameter accounting in the paper's "trainable params" sense, with the arithmetic.

Per block and per modality, an MoE-LoRA over a map ``d_in -> d_out`` has ``n`` experts of
``r (d_in + d_out)`` parameters (A and B) and a bias-free router of ``d_in * fan_out`` (fan_out
= n with expert grouping, n * M with global routing over M modalities). So one modality costs

* placement ``parallel`` (Eq. 7 as written, one ``D -> D`` MoE beside the FFN):
  ``L * (n * 2rD + D * fan_out)``, i.e. ``L * n * D * (2r + 1)`` with grouping;
* placement ``fc`` (the code: MoEs inside fc1 ``D -> H`` and fc2 ``H -> D``):
  ``L * (n * 2r(D + H) + (D + H) * fan_out)``, i.e. ``L * n * 5D * (2r + 1)`` for H = 4D.

:func:`paper_accounting` applies this to ViT-B/16 (D 768, 12 blocks, H 3072, r 4, n 2) and adds
the tokenizers, heads and logit scale of the code's trainable set, to see which counting gives
the paper's 7.8M (Table 1).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .model import UniAlignModel

__all__ = ["lora_moe_params", "paper_accounting", "parameter_report"]


def lora_moe_params(*, width: int, layers: int, ffn: int, r: int, experts: int,
                    placement: str = "parallel", routing: str = "grouped",
                    routed_modalities: int = 1) -> int:
    """LoRA-MoE parameters of ONE modality (see the module docstring)."""
    fan_out = experts * (routed_modalities if routing == "global" else 1)
    if placement == "parallel":
        maps = [(width, width)]
    elif placement == "fc":
        maps = [(width, ffn), (ffn, width)]
    else:
        raise ValueError(f"unknown placement {placement!r}")
    per_block = sum(experts * r * (d_in + d_out) + d_in * fan_out for d_in, d_out in maps)
    return layers * per_block


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_report(model: UniAlignModel) -> dict[str, Any]:
    """The built model's trainable groups, and the formula's count next to the LoRA-MoE's."""
    cfg = model.cfg
    b, moe = cfg.backbone, cfg.moe
    groups = {k: sum(p.numel() for p in v) for k, v in model.trainable_parameters().items()}
    per_mod = lora_moe_params(width=b.width, layers=b.layers, ffn=int(b.width * b.mlp_ratio),
                              r=moe.r, experts=moe.experts, placement=moe.placement,
                              routing=moe.routing, routed_modalities=len(cfg.routed))
    return {"groups": groups, "total_trainable": sum(groups.values()),
            "lora_moe_formula_per_modality": per_mod,
            "lora_moe_formula_total": per_mod * len(cfg.routed),
            "routed_modalities": list(cfg.routed),
            "frozen_backbone": _count(model.backbone.visual) - groups.get("lora_moe", 0),
            "config": {"width": b.width, "layers": b.layers, "ffn": int(b.width * b.mlp_ratio),
                       "r": moe.r, "experts": moe.experts, "placement": moe.placement,
                       "routing": moe.routing}}


def paper_accounting() -> dict[str, Any]:
    """ViT-B/16 (D 768, L 12, H 3072, r 4, n 2): LoRA-MoE per modality for both placements,
    and totals with the code's tokenizers/heads for 4 (code: no image experts) or 5 modalities.

    The tokenizer figures are the code's modules counted by hand (``binding_unialign_spec.md``
    B.2): audio 1,054,209, point 1,187,841, depth 742,401, video 1,146,369, with their norms,
    text projectors (393,728 each) and the trainable logit scale included.
    """
    d, layers, ffn, r, n = 768, 12, 3072, 4, 2
    fc = lora_moe_params(width=d, layers=layers, ffn=ffn, r=r, experts=n, placement="fc")
    par = lora_moe_params(width=d, layers=layers, ffn=ffn, r=r, experts=n,
                          placement="parallel")
    tokenizers_heads = 1_054_209 + 1_187_841 + 742_401 + 1_146_369
    rows = {}
    for placement, per in (("fc", fc), ("parallel", par)):
        for mods in (4, 5):
            rows[f"{placement}, {mods} modalities"] = per * mods + tokenizers_heads
    closest = min(rows, key=lambda k: abs(rows[k] - 7_800_000))
    return {"lora_moe_per_modality": {"fc": fc, "parallel": par},
            "arithmetic": {"fc": f"{layers} x {n} x (2x{r}x({d}+{ffn}) + ({d}+{ffn})) = {fc}",
                           "parallel": f"{layers} x {n} x (2x{r}x{d} + {d}) = {par}"},
            "tokenizers_heads_norms_scale": tokenizers_heads, "totals": rows,
            "paper": 7_800_000, "closest": closest,
            "closest_gap": rows[closest] - 7_800_000}
