"""Trainable projection heads that map trunk features into the shared D-dim space."""
from __future__ import annotations

from torch import nn

HEAD_KINDS = ("mlp", "linear", "identity")


def projection_head(*, kind: str, in_dim: int, out_dim: int, hidden_dim: int = 512,
                    layer_norm: bool = True, dropout: float = 0.0) -> nn.Module:
    """Build a head ``[B, in_dim] -> [B, out_dim]`` (L2 normalisation is the encoder's job).

    Parameters
    ----------
    kind : ``"mlp"`` (LayerNorm -> Linear(in, hidden) -> GELU -> Linear(hidden, out), the LiT-style
        projection), ``"linear"`` ([LayerNorm ->] Linear) or
        ``"identity"`` (the trunk already lives in the shared space, e.g. the text teacher).
    in_dim, out_dim : feature sizes.
    hidden_dim : width of the MLP's hidden layer.
    layer_norm : normalise the (frozen, un-normalised) trunk features first; they are pooled
        activations whose scale differs per modality, so a LayerNorm makes one learning rate fit.
    dropout : dropout after the activation (MLP only).
    """
    if kind == "identity":
        if in_dim != out_dim:
            raise ValueError(f"identity head needs in_dim == out_dim, got {in_dim} != {out_dim}")
        return nn.Identity()
    norm = [nn.LayerNorm(in_dim)] if layer_norm else []
    if kind == "linear":
        return nn.Sequential(*norm, nn.Linear(in_dim, out_dim))
    if kind == "mlp":
        return nn.Sequential(*norm, nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                             nn.Linear(hidden_dim, out_dim))
    raise ValueError(f"unknown head kind {kind!r}; expected one of {HEAD_KINDS}")
