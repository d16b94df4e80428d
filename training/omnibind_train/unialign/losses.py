"""UniAlign's losses (seed 002, Eq. 10-16), written as the paper writes them.

Choices where the paper is vague or the third-party code differs (``binding_unialign_spec.md``
B.6):

* **Similarity** S (Eq. 10) is a softmax over the second argument's rows of dot products
  divided by ``tau``; the paper shows no temperature, so ``tau = 1`` by default. For Eq. 12 and
  14 the normaliser runs over the batch (each sample against every sample of the other side),
  the paper leaving it open.
* **KL direction**: the paper writes ``KL(student || teacher)`` (``direction="paper"``, the
  default); the code computes ``F.kl_div(log p_s, p_t)`` = ``KL(teacher || student)``
  (``direction="code"``).
* **Eq. 13** ``||F_hat - F||^2``: summed over features, averaged over the batch.
* Rows are averaged over the batch everywhere (the paper shows per-sample terms).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["anchor_distillation_loss", "clip_loss", "feature_alignment_loss", "kl_rows",
           "modal_alignment_loss", "model_distillation_loss", "similarity",
           "soft_binding_loss", "unialign_loss"]

DIRECTIONS = ("paper", "code")


def similarity(a: torch.Tensor, b: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Eq. 10: ``S(a_i, b_j) = exp(a_i.b_j / tau) / sum_n exp(a_i.b_n / tau)``, ``[Na, Nb]``."""
    return torch.softmax(a @ b.T / tau, dim=-1)


def kl_rows(student: torch.Tensor, teacher: torch.Tensor, direction: str = "paper"
            ) -> torch.Tensor:
    """Mean over rows of ``KL(student || teacher)`` ("paper") or ``KL(teacher || student)``
    ("code") between row-stochastic matrices."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    p, q = (student, teacher) if direction == "paper" else (teacher, student)
    p = p.clamp_min(1e-12)
    return (p * (p.log() - q.clamp_min(1e-12).log())).sum(-1).mean()


def soft_binding_loss(x1: torch.Tensor, labels1: torch.Tensor, y1: torch.Tensor,
                      x2: torch.Tensor, labels2: torch.Tensor, y2: torch.Tensor, *,
                      tau: float = 1.0, direction: str = "paper") -> torch.Tensor:
    """Eq. 11: soft modality binding between two datasets with different label vocabularies.

    Parameters
    ----------
    x1, labels1, y1 : samples of dataset 1 ``[B1, D]``, their label indices ``[B1]`` and the
        text embeddings of dataset 1's labels ``[N1, D]``.
    x2, labels2, y2 : the same for dataset 2.

    A dataset-1 sample's similarity to dataset 2's labels is pulled towards its own label
    text's similarity to them (the teacher), and vice versa.
    """
    term1 = kl_rows(similarity(x1, y2, tau), similarity(y1[labels1], y2, tau), direction)
    term2 = kl_rows(similarity(x2, y1, tau), similarity(y2[labels2], y1, tau), direction)
    return term1 + term2


def anchor_distillation_loss(p: torch.Tensor, t: torch.Tensor, i: torch.Tensor, *,
                             tau: float = 1.0, direction: str = "paper") -> torch.Tensor:
    """Eq. 12: ``KL(S(P, T) || S(I, T)) + KL(S(P, I) || S(T, I))`` over a batch: the
    extended-modality samples P learn the anchor images' I relations to the label texts T."""
    return (kl_rows(similarity(p, t, tau), similarity(i, t, tau), direction)
            + kl_rows(similarity(p, i, tau), similarity(t, i, tau), direction))


def feature_alignment_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Eq. 13: ``||F_hat - F||_2^2`` per sample (summed over features), batch mean."""
    return (teacher - student).pow(2).sum(-1).mean()


def modal_alignment_loss(s_ext: torch.Tensor, s_anchor: torch.Tensor, t_ext: torch.Tensor,
                         t_anchor: torch.Tensor, *, tau: float = 1.0,
                         direction: str = "paper") -> torch.Tensor:
    """Eq. 14: the student's cross-modal similarity structure (extended vs anchor modality)
    follows the partial-modal teacher's, in both directions."""
    return (kl_rows(similarity(s_ext, s_anchor, tau), similarity(t_ext, t_anchor, tau),
                    direction)
            + kl_rows(similarity(s_anchor, s_ext, tau), similarity(t_anchor, t_ext, tau),
                      direction))


def model_distillation_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor,
                            s_ext: torch.Tensor, s_anchor: torch.Tensor, t_ext: torch.Tensor,
                            t_anchor: torch.Tensor, *, lam: float = 2000.0, tau: float = 1.0,
                            direction: str = "paper") -> torch.Tensor:
    """Eq. 15: ``lambda * L_feat_align + L_modal_align`` (lambda = 2000, after CLIP-KD)."""
    return lam * feature_alignment_loss(student_feat, teacher_feat) + modal_alignment_loss(
        s_ext, s_anchor, t_ext, t_anchor, tau=tau, direction=direction)


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float
              ) -> torch.Tensor:
    """L_NCE: CLIP's symmetric cross-entropy on paired rows (mean of both directions)."""
    logits = logit_scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def unialign_loss(nce: torch.Tensor, soft_bind: torch.Tensor | None = None,
                  anchor: torch.Tensor | None = None, model: torch.Tensor | None = None, *,
                  alphas: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Eq. 16: ``L_NCE + a1 L_soft_bind + a2 L_anch_distil + a3 L_model_distil`` (absent terms
    skipped: not every batch has every kind of pair)."""
    total = nce
    for alpha, term in zip(alphas, (soft_bind, anchor, model), strict=True):
        if term is not None:
            total = total + alpha * term
    return total
