"""Training objectives: stage-0 LiT InfoNCE, CAD (seed 000 Eq. 2-7) and AF (Eq. 9).

Every loss module returns a dict of named terms, like open_clip's ``output_dict=True``: ``"loss"``
is the total to back-propagate, the other entries are its (unweighted) parts for logging.
All embeddings are expected L2-normalised, so ``a @ b.T`` is the cosine similarity.

Where the paper is ambiguous the choice made here is stated in the docstring. The main ones:

* Eq. 3 prints ``D_t^r = E_l . E_t^T`` (text x *student*), which would make Eq. 4 compare the
  student with itself; the sentence introducing it says the cross-correspondence is computed
  "of the teacher modalities, i.e. using text and image embeddings", so ``D_t^r = E_l . E_v^T``.
* Eq. 4 and 6 write a KL divergence over raw similarity matrices, whose entries can be negative
  (the log is undefined). Both matrices are turned into row-wise distributions with a softmax at
  temperature ``kd_temperature`` (default 1: the appendix code feeds raw ``a @ b.t()`` "logits"
  to its ``kldivloss``), i.e. ``KL(softmax(D / T) || softmax(S / T))`` per row.
* The bare sum in Eq. 4/6 is reduced per ``kl_reduction``: ``"batchmean"`` (default: the sum of
  the row KLs divided by the batch size k, the true mean KL, which does not grow with k),
  ``"sum"`` (the literal sum) or ``"mean"`` (sum / k^2, ``torch.nn.KLDivLoss()``'s default).
* Eq. 7 is ``L_in + L_cr + L_se``, but the appendix code (DemoKDAL.py) trains with
  ``(cl_loss + kl_loss * 100 + self_kl_loss * 100) / 3``. :class:`CADLoss` defaults to the code's
  weighting (the one the reported numbers came from); ``CADLoss.as_printed()`` gives Eq. 7.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

KL_REDUCTIONS = ("batchmean", "sum", "mean")


class LogitScale(nn.Module):
    """Inverse temperature ``1 / tau`` stored as a log (CLIP), clamped to ``max_scale``.

    Parameters
    ----------
    temperature : initial tau (CLIP: 0.07).
    learnable : make it a trainable parameter (else a buffer).
    max_scale : upper clamp of ``1 / tau`` (CLIP: 100), which keeps training stable.
    """

    def __init__(self, *, temperature: float = 0.07, learnable: bool = True,
                 max_scale: float = 100.0) -> None:
        super().__init__()
        value = torch.tensor(math.log(1.0 / temperature))
        if learnable:
            self.log_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_scale", value)
        self.max_scale = max_scale

    def forward(self) -> torch.Tensor:
        """The current ``1 / tau`` (0-d tensor)."""
        return self.log_scale.exp().clamp(max=self.max_scale)


# --- stage 0: the teacher space (LiT) --------------------------------------------------------


def symmetric_infonce(a: torch.Tensor, b: torch.Tensor,
                      logit_scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP's symmetric InfoNCE between paired rows of ``a`` and ``b``.

    Parameters
    ----------
    a, b : ``[B, D]`` L2-normalised embeddings; row i of ``a`` pairs with row i of ``b``.
    logit_scale : ``1 / tau``.

    Returns
    -------
    0-d tensor: the mean of the a->b and b->a cross-entropies.
    """
    logits = logit_scale * a @ b.T
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class ContrastiveLoss(nn.Module):
    """Stage 0 (LiT): symmetric InfoNCE between image and (frozen) text embeddings.

    The temperature is learnable by default (CLIP/LiT: init 0.07, ``1/tau`` clamped at 100).
    """

    def __init__(self, *, temperature: float = 0.07, learn_temperature: bool = True) -> None:
        super().__init__()
        self.logit_scale = LogitScale(temperature=temperature, learnable=learn_temperature)

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image``, ``text``: ``[B, D]`` -> ``{"loss", "contrastive_loss"}``."""
        loss = symmetric_infonce(image, text, self.logit_scale())
        return {"loss": loss, "contrastive_loss": loss}


# --- stage I: Cross-modal Alignment Distillation (CAD) ---------------------------------------


def cad_in_loss(student: torch.Tensor, text: torch.Tensor,
                logit_scale: torch.Tensor | float) -> torch.Tensor:
    """L_in, Eq. 2: InfoNCE from each student embedding to the text embeddings.

    ``-log exp(E_ti . E_li / tau) / sum_j exp(E_ti . E_lj / tau)``, one direction only (student ->
    text) as written; averaged over the batch (the paper does not say sum or mean).

    Parameters
    ----------
    student, text : ``[k, D]`` paired embeddings (E_t, E_l).
    logit_scale : ``1 / tau``.
    """
    logits = logit_scale * student @ text.T
    return F.cross_entropy(logits, torch.arange(student.shape[0], device=student.device))


def correspondence_kl(teacher: torch.Tensor, student: torch.Tensor, *,
                      temperature: float = 1.0, reduction: str = "batchmean") -> torch.Tensor:
    """``sum D log(D / S)`` of Eq. 4/6 with D, S made row distributions by a softmax.

    Parameters
    ----------
    teacher, student : ``[k, k]`` similarity matrices (D and S); each row is one distribution.
    temperature : softmax temperature applied to both.
    reduction : ``"batchmean"`` (sum / k), ``"sum"`` or ``"mean"`` (sum / k^2).
    """
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {KL_REDUCTIONS}")
    log_p = F.log_softmax(teacher / temperature, dim=-1)
    log_q = F.log_softmax(student / temperature, dim=-1)
    total = (log_p.exp() * (log_p - log_q)).sum()
    if reduction == "sum":
        return total
    rows = teacher.shape[0]
    return total / rows if reduction == "batchmean" else total / (rows * teacher.shape[1])


def cad_cr_loss(student: torch.Tensor, text: torch.Tensor, image: torch.Tensor, *,
                temperature: float = 1.0, reduction: str = "batchmean") -> torch.Tensor:
    """L_cr, Eq. 3-4: the student-text correspondence learns the teachers' cross-correspondence.

    Teacher ``D_t^r = E_l . E_v^T`` (text x image; Eq. 3's ``E_t`` read as ``E_v``, see module
    docstring), student ``E_l . E_t^T`` (text x student), ``KL(D_t^r || E_l . E_t^T)`` row-wise.
    Teachers are not detached here (:class:`CADLoss` detaches them): gradients reach a teacher
    embedding that requires grad.

    Parameters
    ----------
    student, text, image : ``[k, D]`` paired embeddings (E_t, E_l, E_v).
    """
    return correspondence_kl(text @ image.T, text @ student.T, temperature=temperature,
                             reduction=reduction)


def cad_se_loss(student: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None, *,
                temperature: float = 1.0, reduction: str = "batchmean") -> torch.Tensor:
    """L_se, Eq. 5-6: match the student's self-correspondence to the teachers' (averaged) one.

    Teacher ``D_t^l = (E_v . E_v^T + E_l . E_l^T) / 2`` (Eq. 5; the two similarity matrices are
    averaged before the softmax, as written), student ``E_t . E_t^T``,
    ``KL(D_t^l || E_t . E_t^T)``.
    With ``image=None`` the teacher is ``E_l . E_l^T`` alone, which is what the appendix code
    computes (``self_t_logic = t_embeddings @ t_embeddings.t()``).

    Parameters
    ----------
    student, text : ``[k, D]``; image : ``[k, D]`` or None.
    """
    teacher = text @ text.T
    if image is not None:
        teacher = (image @ image.T + teacher) / 2
    return correspondence_kl(teacher, student @ student.T, temperature=temperature,
                             reduction=reduction)


class CADLoss(nn.Module):
    """Stage I total (Eq. 7): ``(w_in L_in + w_cr L_cr + w_se L_se) / divisor``.

    Defaults follow the appendix code, ``(L_in + 100 L_cr + 100 L_se) / 3``; Eq. 7 as printed is
    ``CADLoss.as_printed()`` (weights 1, 1, 1, divisor 1).

    Parameters
    ----------
    temperature : tau of L_in (Eq. 2). The paper gives none; 0.07 (CLIP's init) by default.
    learn_temperature : make tau of L_in learnable.
    kd_temperature : softmax temperature of the correspondence KLs (Eq. 4, 6); 1 as in the code.
    kl_reduction : see :func:`correspondence_kl`.
    weights : ``(w_in, w_cr, w_se)``.
    divisor : the total is divided by it.
    """

    def __init__(self, *, temperature: float = 0.07, learn_temperature: bool = False,
                 kd_temperature: float = 1.0, kl_reduction: str = "batchmean",
                 weights: tuple[float, float, float] = (1.0, 100.0, 100.0),
                 divisor: float = 3.0) -> None:
        super().__init__()
        if kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"unknown kl_reduction {kl_reduction!r}")
        self.logit_scale = LogitScale(temperature=temperature, learnable=learn_temperature)
        self.kd_temperature = kd_temperature
        self.kl_reduction = kl_reduction
        self.weights = tuple(float(w) for w in weights)
        self.divisor = float(divisor)

    @classmethod
    def as_printed(cls, **kwargs: float | str | bool) -> CADLoss:
        """Eq. 7 exactly as printed: ``L_in + L_cr + L_se``."""
        return cls(weights=(1.0, 1.0, 1.0), divisor=1.0, **kwargs)

    def forward(self, student: torch.Tensor, text: torch.Tensor,
                image: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``[k, D]`` student, text and image embeddings of the same k samples.

        Returns ``{"loss", "in_loss", "cr_loss", "se_loss"}``; without ``image`` there is no
        teacher cross-correspondence, so ``cr_loss`` is 0 and L_se uses text only. The teachers
        are frozen: ``text`` and ``image`` are detached, so gradients reach only the student
        (and the loss's own logit scale).
        """
        text = text.detach()
        image = image.detach() if image is not None else None
        kd = {"temperature": self.kd_temperature, "reduction": self.kl_reduction}
        in_loss = cad_in_loss(student, text, self.logit_scale())
        cr_loss = (cad_cr_loss(student, text, image, **kd) if image is not None
                   else student.new_zeros(()))
        se_loss = cad_se_loss(student, text, image, **kd)
        w_in, w_cr, w_se = self.weights
        total = (w_in * in_loss + w_cr * cr_loss + w_se * se_loss) / self.divisor
        return {"loss": total, "in_loss": in_loss, "cr_loss": cr_loss, "se_loss": se_loss}


# --- stage II: Adaptive Fusion (AF) -----------------------------------------------------------


def _eq9(pos: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor) -> torch.Tensor:
    """``-log e^pos / (e^pos + sum_valid e^neg)`` per row, averaged; logits already scaled."""
    neg = neg.masked_fill(~neg_mask, float("-inf"))
    denom = torch.logsumexp(torch.cat([pos.unsqueeze(1), neg], dim=1), dim=1)
    return (denom - pos).mean()


def af_contrastive_loss(fused: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                        negative_mask: torch.Tensor | None = None, *,
                        logit_scale: torch.Tensor | float) -> torch.Tensor:
    """L_stage2, Eq. 9, from explicit label embeddings.

    ``-log exp(E_m . E_pos / tau) / (exp(E_m . E_pos / tau) + sum_neg exp(E_m . E_neg / tau))``:
    the denominator holds the positive and only the selected negative labels (not every class),
    as written. A row without negatives contributes ``-log 1 = 0``. Batch mean.

    Parameters
    ----------
    fused : ``[B, D]`` fused embeddings E_m.
    positive : ``[B, D]`` embedding of each sample's label prompt (E_pos).
    negatives : ``[B, M, D]`` negative label embeddings (E_neg), padded to M.
    negative_mask : ``[B, M]`` bool, True where ``negatives`` is real (default: all).
    logit_scale : ``1 / tau``.
    """
    pos = logit_scale * (fused * positive).sum(-1)
    neg = logit_scale * torch.einsum("bd,bmd->bm", fused, negatives)
    if negative_mask is None:
        negative_mask = torch.ones_like(neg, dtype=torch.bool)
    return _eq9(pos, neg, negative_mask.bool())


class AFLoss(nn.Module):
    """Stage II loss (Eq. 9) against a table of label embeddings.

    Parameters
    ----------
    temperature : tau; the paper gives none, 0.07 (CLIP's init) by default.
    learn_temperature : make tau learnable.
    """

    def __init__(self, *, temperature: float = 0.07, learn_temperature: bool = False) -> None:
        super().__init__()
        self.logit_scale = LogitScale(temperature=temperature, learnable=learn_temperature)

    def forward(self, fused: torch.Tensor, label_embeddings: torch.Tensor,
                targets: torch.Tensor, negative_labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eq. 9 with E_pos/E_neg taken from the label table.

        Parameters
        ----------
        fused : ``[B, D]`` fused embeddings.
        label_embeddings : ``[C, D]`` text embeddings of the label prompts (E_s).
        targets : ``[B]`` int64 true class indices.
        negative_labels : ``[B, C]`` bool, the negative labels of each sample (see
            :func:`omnibind_train.models.fusion.select_negative_labels`); the target is ignored.

        Returns
        -------
        ``{"loss", "af_loss"}``.
        """
        logits = self.logit_scale() * fused @ label_embeddings.T
        pos = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
        not_target = ~F.one_hot(targets, logits.shape[1]).bool()
        loss = _eq9(pos, logits, negative_labels.bool() & not_target)
        return {"loss": loss, "af_loss": loss}
