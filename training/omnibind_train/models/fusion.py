"""Stage II fusion: the Adaptive Fusion head (seed 000 Eq. 8), its classification helpers
(Fig. 3b), the mean / linear / concat baselines (Tables 2, 3, 8, 9) and the Table 8/9 ablation
heads (a learnable CLS token, outer-product fusion).

Every head maps ``tokens [B, N, D]`` + ``mask [B, N]`` (bool, True = a live modality) to a unit
``[B, D]`` embedding; this is the ONNX contract the runtime's fusion tick feeds (padded tokens +
mask). The token-set heads (:data:`TOKEN_SET_KINDS`: AF, mean, CLS token, outer product) are
token-order free and take any N; the slot baselines need fixed modality *slots*
(``N == num_slots``, one per modality in ``MODALITY_SLOTS`` order).

How the paper's ablation rows map onto heads:

* Table 8 "CLS(·) + SA(·)" and Table 9 "SA(·) (Ours)": ``af``.
* Table 8 "CLS(·)": the paper's CLS(·) is the classification operation of Fig. 3b (cosine of
  each modality's embedding with the label embeddings), which gives the per-modality predictions
  whose wrong ones are the negative labels. Without SA, Eq. 8 is the mean of the embeddings and
  nothing is left to train; classifying by the summed per-modality cosines ranks the labels
  exactly as the mean embedding does (the norm of the mean is a per-sample constant), so that
  reading *is* the ``mean`` head. The trainable reading, a learnable classification token that
  alone makes the fused embedding (no self-attention among the modality tokens, no token
  residual, no mean over tokens), is ``cls_token`` (:class:`ClsTokenFusion`).
* Table 8 "Cat": ``concat``.
* Table 9 "Linear" (SA replaced by a linear layer): ``linear``; with uniform slot weights it is
  exactly ``mean(Linear(tokens))``; its learned per-slot weights make it a superset.
* Table 9 "Outer Product" (SA replaced by an outer-product operation): ``outer``
  (:class:`OuterProductFusion`).
"""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnibind_ros.core.modalities import ALL_MODALITIES

#: Slot order for the slot-based baselines and :func:`stack_modalities`.
MODALITY_SLOTS: tuple[str, ...] = tuple(m.value for m in ALL_MODALITIES)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens`` ``[B, N, D]`` over valid positions of ``mask`` ``[B, N]``; 0 if none."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _clean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Padding slots may hold stale or NaN embeddings; NaN * 0 is NaN, so zero them explicitly.
    return torch.where(mask.unsqueeze(-1), tokens, torch.zeros_like(tokens))


class AdaptiveFusion(nn.Module):
    """AF head, Eq. 8: ``E_m = normalise(mean(SA(E_v, ..., E_t)))`` over the valid tokens.

    ``SA`` is one multi-head self-attention layer in which padded tokens are masked out as keys
    and excluded from the mean, so the output depends only on the live modalities and not on
    their order (no positional or modality embedding: Eq. 8 has none). The paper does not
    detail ``SA`` (its code calls ``Adapter(dim, head_num)``); choices made here: pre-LayerNorm
    and a residual connection, with the output projection zero-initialised (``zero_init``) so an
    untrained head equals the mean baseline over already-aligned embeddings.

    Two options make the head weigh its evidence when a live sensor is degraded (a dark camera,
    a microphone in wind still publish, and their embeddings land far from the object's); both
    keep Eq. 8 as the core and both are off by default (the paper's head):

    * ``evidence_gate``: Eq. 8's uniform mean becomes a weighted mean, ``E_m = normalise(
      sum_i w_i SA(E)_i)`` with ``w = softmax_i(g_i)`` over the live tokens and
      ``g_i = MLP([LN(SA(E)_i), a_i])``: each token's gate sees the token after self-attention
      (which mixed in the other modalities) and its *agreement* ``a_i = cos(E_i, mean_j E_j)``
      with the live tokens' mean. A degraded token both looks like one (its embedding carries
      the darkness, the wind) and disagrees with the others; the MLP's last layer starts at zero,
      so an untrained gate is the uniform mean, i.e. exactly Eq. 8. Chosen over per-token quality
      cues computed from the raw input because it needs nothing but the tokens: the ONNX contract
      ``(tokens, mask) -> fused`` and the runtime stay as they are, for every model family.
    * ``single_passthrough``: with one live token there is nothing to fuse; the head returns that
      token unchanged instead of its self-attended version. Self-attention of a token with
      itself is a learned per-token map that can only move an already-aligned student
      embedding off its label (the measured single-modality loss of the paper's head).

    Parameters
    ----------
    dim : D.
    num_heads : attention heads (``dim % num_heads == 0``).
    zero_init : zero the output projection (start as the mean baseline).
    evidence_gate : weighted instead of uniform mean over the tokens (see above).
    single_passthrough : one live token is returned as it is (see above).
    """

    def __init__(self, *, dim: int = 384, num_heads: int = 8, zero_init: bool = True,
                 evidence_gate: bool = False, single_passthrough: bool = False) -> None:
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} is not divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if zero_init:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)
        self.single_passthrough = single_passthrough
        self.gate: nn.Module | None = None
        if evidence_gate:
            hidden = max(8, dim // 4)
            self.gate_norm = nn.LayerNorm(dim)
            self.gate = nn.Sequential(nn.Linear(dim + 1, hidden), nn.GELU(),
                                      nn.Linear(hidden, 1))
            nn.init.zeros_(self.gate[-1].weight)  # uniform weights: Eq. 8 at initialisation
            nn.init.zeros_(self.gate[-1].bias)

    def attend(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``SA``: ``[B, N, D]`` -> ``[B, N, D]``; padded positions are not attended to."""
        # [B, N, 3*D] -> three [B, heads, N, D/heads]
        q, k, v = self.qkv(self.norm(tokens)).unflatten(-1, (3, self.num_heads, -1)).permute(
            2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        # finfo.min instead of -inf: a sample with no live token must not produce NaN.
        scores = torch.where(mask[:, None, None, :], scores, torch.finfo(scores.dtype).min)
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)  # [B, N, D]
        return tokens + self.proj(out)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[B, N, D]``, ``mask`` ``[B, N]`` bool -> fused ``[B, D]`` (unit norm)."""
        mask = mask.bool()
        tokens = _clean(tokens, mask)
        attended = self.attend(tokens, mask)
        if self.single_passthrough:
            several = (mask.sum(dim=1) > 1)[:, None, None]
            attended = torch.where(several, attended, tokens)
        if self.gate is None:
            return F.normalize(masked_mean(attended, mask), dim=-1)
        return F.normalize((self.evidence_weights(tokens, attended, mask).unsqueeze(-1)
                            * attended).sum(dim=1), dim=-1)

    def evidence_weights(self, tokens: torch.Tensor, attended: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
        """``w [B, N]``: softmax of the gate over the live tokens (0 on padding)."""
        centre = F.normalize(masked_mean(tokens, mask), dim=-1)
        agreement = F.cosine_similarity(tokens, centre.unsqueeze(1), dim=-1, eps=1e-6)
        logits = self.gate(torch.cat([self.gate_norm(attended), agreement.unsqueeze(-1)],
                                     dim=-1)).squeeze(-1)
        logits = torch.where(mask, logits, torch.finfo(logits.dtype).min)
        return logits.softmax(dim=-1) * mask


class MeanFusion(nn.Module):
    """Baseline: normalised mean of the valid embeddings (no parameters)."""

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.bool()
        return F.normalize(masked_mean(_clean(tokens, mask), mask), dim=-1)


class LinearFusion(nn.Module):
    """Baseline: learned per-slot weights (softmax over the live slots), then a linear map.

    Parameters
    ----------
    num_slots : number of modality slots S (tokens must be ``[B, S, D]`` in slot order).
    dim : D. The linear map starts as the identity and the weights as uniform (= mean).
    """

    def __init__(self, *, num_slots: int = len(MODALITY_SLOTS), dim: int = 384) -> None:
        super().__init__()
        self.slot_logits = nn.Parameter(torch.zeros(num_slots))
        self.linear = nn.Linear(dim, dim)
        nn.init.eye_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.bool()
        logits = self.slot_logits.expand_as(mask)
        weights = torch.where(mask, logits, torch.finfo(logits.dtype).min).softmax(dim=-1)
        weights = weights * mask  # a sample with no live slot gets zeros, not a uniform mix
        fused = torch.einsum("bs,bsd->bd", weights, _clean(tokens, mask))
        return F.normalize(self.linear(fused), dim=-1)


class ConcatFusion(nn.Module):
    """Baseline: concatenate the S slots (zeros for missing ones) and map linearly to D.

    The map starts as stacked identities / S, i.e. the sum of the live slots (= mean after
    normalisation), so all three baselines start from the same point.
    """

    def __init__(self, *, num_slots: int = len(MODALITY_SLOTS), dim: int = 384) -> None:
        super().__init__()
        self.num_slots = num_slots
        self.linear = nn.Linear(num_slots * dim, dim)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(dim).repeat(1, num_slots) / num_slots)
            self.linear.bias.zero_()

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        assert tokens.shape[1] == self.num_slots, (
            f"concat fusion needs {self.num_slots} slots, got {tokens.shape[1]}")
        flat = _clean(tokens, mask.bool()).flatten(1)  # [B, S*D]
        return F.normalize(self.linear(flat), dim=-1)


class ClsTokenFusion(nn.Module):
    """Table 8's CLS-only row read as a learnable classification token (see the module
    docstring for the paper's own reading, which is the mean head).

    One learned query attends over the live modality tokens (multi-head, padded tokens masked
    out as keys) and its attended value, projected, is the fused embedding:
    ``E_m = normalise(W_o concat_h(softmax_i(q_h . k_hi / sqrt(d)) v_hi))`` with
    ``k = W_k LN(x)``, ``v = W_v x``. Unlike AF there is no self-attention among the modality
    tokens, no residual of the tokens and no mean over them: the token alone decides.

    Initialisation: ``q = 0`` (uniform attention over the live tokens), ``W_v`` and ``W_o`` the
    identity, so an untrained head equals the mean baseline, like every other head here.

    Parameters
    ----------
    dim : D.
    num_heads : attention heads (``dim % num_heads == 0``).
    """

    def __init__(self, *, dim: int = 384, num_heads: int = 8) -> None:
        super().__init__()
        assert dim % num_heads == 0, f"dim {dim} is not divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(dim))
        self.norm = nn.LayerNorm(dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        for layer in (self.value, self.proj):
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[B, N, D]``, ``mask`` ``[B, N]`` bool -> fused ``[B, D]`` (unit norm;
        zeros for a sample without live tokens)."""
        mask = mask.bool()
        tokens = _clean(tokens, mask)
        h = self.num_heads
        k = self.key(self.norm(tokens)).unflatten(-1, (h, -1)).transpose(1, 2)  # [B, h, N, d]
        v = self.value(tokens).unflatten(-1, (h, -1)).transpose(1, 2)
        q = self.query.unflatten(0, (h, -1))  # [h, d]
        scores = torch.einsum("hd,bhnd->bhn", q, k) * k.shape[-1] ** -0.5
        scores = torch.where(mask[:, None, :], scores, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=-1) * mask[:, None, :].to(scores.dtype)
        out = torch.einsum("bhn,bhnd->bhd", weights, v).flatten(1)  # [B, D]
        out = self.proj(out) * mask.any(dim=1, keepdim=True).to(out.dtype)
        return F.normalize(out, dim=-1)


class OuterProductFusion(nn.Module):
    """Table 9's outer-product row: Eq. 8 with ``SA(·)`` replaced by an outer-product operation.

    Each live token is reduced to ``z_i = [A LN(x_i); 1]`` (``rank + 1`` values; the appended 1
    keeps the first-order terms, as in Tensor Fusion Networks); its outer product with the mean
    ``z`` of the *other* live tokens is flattened and projected back to D:
    ``OP(X)_i = x_i + P vec(z_i (x) mean_{j != i} z_j)``, ``E_m = normalise(mean_i OP(X)_i)``.
    So every output carries the pairwise (bilinear) cross-modal terms, where SA carries
    attention-weighted values. A lone token has no partner and passes through unchanged.

    The paper gives no size; the full ``D x D`` outer product would need a ``D^2 x D``
    projection (56 M weights at D = 384), hence the reduction to ``rank``. ``P`` starts at zero
    (an untrained head is the mean baseline, like AF with ``zero_init``).

    Parameters
    ----------
    dim : D.
    rank : r, the reduced size of each factor of the outer product.
    """

    def __init__(self, *, dim: int = 384, rank: int = 32) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.reduce = nn.Linear(dim, rank, bias=False)
        self.proj = nn.Linear((rank + 1) ** 2, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def interact(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``OP``: ``[B, N, D]`` -> ``[B, N, D]`` (padded positions carry garbage-free zeros
        in ``z`` and are excluded by the caller's masked mean)."""
        live = mask.to(tokens.dtype).unsqueeze(-1)
        z = self.reduce(self.norm(tokens))
        z = torch.cat([z, torch.ones_like(z[..., :1])], dim=-1) * live
        count = live.sum(dim=1, keepdim=True)
        others = (z.sum(dim=1, keepdim=True) - z) / (count - 1).clamp_min(1.0)
        pair = (z.unsqueeze(-1) * others.unsqueeze(-2)).flatten(2)  # [B, N, (r+1)^2]
        has_partner = (count >= 2).to(tokens.dtype)
        return tokens + self.proj(pair) * has_partner

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[B, N, D]``, ``mask`` ``[B, N]`` bool -> fused ``[B, D]`` (unit norm)."""
        mask = mask.bool()
        tokens = _clean(tokens, mask)
        return F.normalize(masked_mean(self.interact(tokens, mask), mask), dim=-1)


FUSION_KINDS: dict[str, type[nn.Module]] = {
    "af": AdaptiveFusion, "mean": MeanFusion, "linear": LinearFusion, "concat": ConcatFusion,
    "cls_token": ClsTokenFusion, "outer": OuterProductFusion}
#: Heads that take any number of tokens in any order (dynamic N at export); the others are
#: slot-based (``N == len(slots)``).
TOKEN_SET_KINDS: tuple[str, ...] = ("af", "mean", "cls_token", "outer")


@dataclass
class FusionConfig:
    """Config of a fusion head; ``to_dict``/``from_dict`` for checkpoints and bundles.

    Attributes
    ----------
    kind : ``"af"``, ``"mean"``, ``"linear"``, ``"concat"``, ``"cls_token"`` or ``"outer"``.
    dim : D.
    num_heads : AF / CLS-token attention heads.
    zero_init : AF output projection starts at zero.
    evidence_gate, single_passthrough : AF options that weigh degraded tokens down and pass a
        lone token through (:class:`AdaptiveFusion`); off = the paper's head.
    slots : modality slot order (slot-based baselines; also recorded for the bundle).
    rank : factor size of the outer-product head.
    """

    kind: str = "af"
    dim: int = 384
    num_heads: int = 8
    zero_init: bool = True
    evidence_gate: bool = False
    single_passthrough: bool = False
    slots: tuple[str, ...] = MODALITY_SLOTS
    rank: int = 32

    def __post_init__(self) -> None:
        if self.kind not in FUSION_KINDS:
            raise ValueError(f"unknown fusion kind {self.kind!r}; expected {list(FUSION_KINDS)}")
        self.slots = tuple(self.slots)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FusionConfig:
        return cls(**data)

    def build(self) -> nn.Module:
        if self.kind == "af":
            return AdaptiveFusion(dim=self.dim, num_heads=self.num_heads,
                                  zero_init=self.zero_init, evidence_gate=self.evidence_gate,
                                  single_passthrough=self.single_passthrough)
        if self.kind == "mean":
            return MeanFusion()
        if self.kind == "cls_token":
            return ClsTokenFusion(dim=self.dim, num_heads=self.num_heads)
        if self.kind == "outer":
            return OuterProductFusion(dim=self.dim, rank=self.rank)
        return FUSION_KINDS[self.kind](num_slots=len(self.slots), dim=self.dim)


def stack_modalities(embeddings: Mapping[str, torch.Tensor], *,
                     slots: Sequence[str] = MODALITY_SLOTS,
                     present: Mapping[str, torch.Tensor] | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay per-modality embeddings out in fixed slots.

    Parameters
    ----------
    embeddings : modality -> ``[B, D]``; absent modalities are missing from the dict.
    slots : slot order.
    present : optional modality -> ``[B]`` bool, for per-sample availability.

    Returns
    -------
    tokens ``[B, S, D]`` (zeros in empty slots) and mask ``[B, S]`` bool.
    """
    unknown = set(embeddings) - set(slots)
    if unknown:
        raise ValueError(f"modalities {sorted(unknown)} have no slot in {list(slots)}")
    ref = next(iter(embeddings.values()))
    tokens = ref.new_zeros(ref.shape[0], len(slots), ref.shape[1])
    mask = torch.zeros(ref.shape[0], len(slots), dtype=torch.bool, device=ref.device)
    for i, name in enumerate(slots):
        if name in embeddings:
            tokens[:, i] = embeddings[name]
            mask[:, i] = present[name] if present is not None and name in present else True
    return tokens, mask


def classify(embeddings: torch.Tensor, label_embeddings: torch.Tensor) -> torch.Tensor:
    """CLS of Fig. 3b: index of the label with the highest cosine similarity.

    ``embeddings`` ``[..., D]``, ``label_embeddings`` ``[C, D]`` -> ``[...]`` int64.
    """
    sims = F.normalize(embeddings, dim=-1) @ F.normalize(label_embeddings, dim=-1).T
    return sims.argmax(dim=-1)


def select_negative_labels(predictions: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor,
                           num_classes: int, *,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Negative labels for Eq. 9 from the per-modality predictions (Sec. 3.3).

    Every wrong prediction of a live modality is a negative; a sample whose live modalities are
    all right gets one random wrong label instead, as the paper does.

    Parameters
    ----------
    predictions : ``[B, N]`` int64 per-token predicted classes (:func:`classify`).
    mask : ``[B, N]`` bool, live tokens.
    targets : ``[B]`` int64 true classes.
    num_classes : C (>= 2).
    generator : for the random negatives (reproducibility).

    Returns
    -------
    ``[B, C]`` bool, never True at the target.
    """
    if num_classes < 2:
        raise ValueError("negative labels need at least 2 classes")
    wrong = mask.bool() & (predictions != targets.unsqueeze(1))
    negatives = (F.one_hot(predictions, num_classes).bool() & wrong.unsqueeze(-1)).any(dim=1)
    # Draw from the C - 1 wrong labels: shift draws at or above the target up by one.
    draw = torch.randint(0, num_classes - 1, targets.shape, generator=generator,
                         device=targets.device)
    draw = draw + (draw >= targets).long()
    fallback = F.one_hot(draw, num_classes).bool() & ~negatives.any(dim=1, keepdim=True)
    return negatives | fallback


def export_fusion_onnx(head: nn.Module, path: str | Path, *, dim: int,
                       example_batch: int = 2, example_tokens: int = 3,
                       dynamic_tokens: bool = True, opset: int = 18) -> Path:
    """Export a fusion head to ONNX: inputs ``tokens [B, N, D]`` float32, ``mask [B, N]`` bool,
    output ``fused [B, D]``; B (and N if ``dynamic_tokens``) dynamic.

    The example batch and token count must be >= 2: the dynamo exporter specialises size-1
    dimensions to constants. Slot-based baselines need ``dynamic_tokens=False`` and
    ``example_tokens = num_slots``.
    """
    if example_batch < 2 or (dynamic_tokens and example_tokens < 2):
        raise ValueError("export with example_batch >= 2 and example_tokens >= 2")
    path = Path(path)
    tokens = torch.randn(example_batch, example_tokens, dim)
    mask = torch.ones(example_batch, example_tokens, dtype=torch.bool)
    mask[0, -1] = False
    batch = torch.export.Dim("batch")
    dims: dict[int, Any] = {0: batch}
    if dynamic_tokens:
        dims[1] = torch.export.Dim("tokens")
    with warnings.catch_warnings():
        # tokens and mask share their Dims on purpose; torch warns that it merges the names
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
        warnings.filterwarnings("ignore", category=FutureWarning, module="copyreg")
        torch.onnx.export(head.eval(), (tokens, mask), str(path),
                          input_names=["tokens", "mask"], output_names=["fused"],
                          dynamic_shapes={"tokens": dims, "mask": dims}, dynamo=True,
                          opset_version=opset, verbose=False)
    return path
