"""Training objectives: stage-0 LiT InfoNCE, CAD (seed 000 Eq. 2-7) and AF (Eq. 9).

Every loss module returns a dict of named terms, like open_clip's ``output_dict=True``: ``"loss"``
is the total to back-propagate, the other entries are its (unweighted) parts for logging.
All embeddings are expected L2-normalised, so ``a @ b.T`` is the cosine similarity.

Precision: every loss here runs with autocast disabled and half-precision inputs cast to
float32 (float64 stays float64): under bf16 autocast the similarity matrices would otherwise be
bf16 matmuls (about 3 significant digits) and the KL between two nearly equal row
distributions would be mostly rounding.

Batch: the losses see whatever batch they are given. Under ``torchrun`` the trainers hand them
the *global* batch (every rank's rows, gathered by
:func:`omnibind_train.trainers.distributed.gather_batch`), so the negatives and the ``k x k``
matrices are those of the global batch of ``k`` rows, as in one process.

Where the paper is ambiguous the choice made here is stated in the docstring. The main ones:

* Eq. 3 prints ``D_t^r = E_l . E_t^T`` (text x *student*), which would make Eq. 4 compare the
  student with itself; the sentence introducing it says the cross-correspondence is computed
  "of the teacher modalities, i.e. using text and image embeddings", so ``D_t^r = E_l . E_v^T``.
* Eq. 4 and 6 write a KL divergence over raw similarity matrices, whose entries can be negative
  (the log is undefined). Both matrices are turned into row-wise distributions with a softmax at
  temperature ``kd_temperature`` (1: neither source has one; the appendix code feeds raw
  ``a @ b.t()`` "logits" to its ``kldivloss``), i.e. ``KL(softmax(D / T) || softmax(S / T))``
  per row.

The stage-I weighting follows one source at a time (:data:`CAD_WEIGHTINGS`, see
:class:`CADWeighting`); the two differ in weights, KL reduction, the cross-correspondence's row
orientation and L_se's teacher:

``paper_eq7`` (the default)
    Eq. 7 as printed, ``L_in + L_cr + L_se``. Eq. 2 is a per-sample loss and the ``sum`` of
    Eq. 4/6 runs over the ``k x k`` entries, i.e. over the k rows' KLs; all three are taken per
    sample and averaged over the k rows of the batch (L_in: mean cross-entropy; L_cr, L_se:
    ``sum / k``, ``"batchmean"``, the true mean KL). This is the literal all-sums reading divided
    by the constant k, so the three terms keep Eq. 7's 1 : 1 : 1 balance at any batch size.
    L_cr rows are texts (Eq. 3-4: ``E_l . E_v^T`` vs ``E_l . E_t^T``); L_se's teacher is Eq. 5's
    average of the image and text self-similarities.
``appendix_code``
    The appendix code (DemoKDAL.py): ``(cl_loss + 100 kl_loss + 100 self_kl_loss) / 3`` with
    ``kldivloss`` = ``torch.nn.KLDivLoss()``'s default reduction ``"mean"`` (``sum / k^2``, the
    mean over the ``k x k`` entries), ``s_logic = v_embeddings @ t_embeddings.t()`` (rows are the
    student's samples, columns the texts) against the teacher's ``t_logic`` (taken as the image
    embeddings ``@`` text ``.t()``: the snippet does not print it) and ``self_t_logic =
    t_embeddings @ t_embeddings.t()`` (text only, no image term). ``cl_loss`` is not printed
    either; Eq. 2 is used for it. Per sample, the KL terms weigh ``100 / k`` of what they weigh
    in ``paper_eq7`` relative to L_in, so their balance changes with the batch size.
``custom``
    Explicit ``weights``, ``divisor`` and ``kl_reduction`` with Eq. 3-5's orientation and
    teacher: what configs written before the choice existed recorded (their
    ``(1, 100, 100) / 3`` with ``"batchmean"`` matched neither source).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

KL_REDUCTIONS = ("batchmean", "sum", "mean")
#: Orientation of the L_cr matrices: ``"text"`` rows (Eq. 3-4) or ``"sample"`` rows (the code).
CR_ROWS = ("text", "sample")


@contextmanager
def _full_precision(x: torch.Tensor) -> Iterator[None]:
    """Autocast off on ``x``'s device type (losses are computed in float32 or float64)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        yield


def upcast(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 if it is half precision (bf16/fp16); float32/float64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _fp32(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """:func:`upcast` of each tensor (None passes through)."""
    return [upcast(t) if t is not None else t for t in tensors]


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
    0-d tensor: the mean of the a->b and b->a cross-entropies (float32 at least, autocast off).
    """
    with _full_precision(a):
        a, b = _fp32(a, b)
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
    with _full_precision(student):
        student, text = _fp32(student, text)
        logits = logit_scale * student @ text.T
        return F.cross_entropy(logits, torch.arange(student.shape[0], device=student.device))


def correspondence_kl(teacher: torch.Tensor, student: torch.Tensor, *,
                      temperature: float = 1.0, reduction: str = "batchmean") -> torch.Tensor:
    """``sum D log(D / S)`` of Eq. 4/6 with D, S made row distributions by a softmax.

    Parameters
    ----------
    teacher, student : ``[k, k]`` similarity matrices (D and S); each row is one distribution.
    temperature : softmax temperature applied to both.
    reduction : ``"batchmean"`` (sum / k), ``"sum"`` or ``"mean"`` (sum / k^2, i.e.
        ``torch.nn.KLDivLoss()``'s default).

    Computed in float32 at least, with autocast off.
    """
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {KL_REDUCTIONS}")
    with _full_precision(teacher):
        teacher, student = _fp32(teacher, student)
        log_p = F.log_softmax(teacher / temperature, dim=-1)
        log_q = F.log_softmax(student / temperature, dim=-1)
        total = (log_p.exp() * (log_p - log_q)).sum()
        if reduction == "sum":
            return total
        rows = teacher.shape[0]
        return total / rows if reduction == "batchmean" else total / (rows * teacher.shape[1])


def cad_cr_loss(student: torch.Tensor, text: torch.Tensor, image: torch.Tensor, *,
                temperature: float = 1.0, reduction: str = "batchmean",
                rows: str = "text") -> torch.Tensor:
    """L_cr, Eq. 3-4: the student-text correspondence learns the teachers' cross-correspondence.

    ``rows="text"`` (Eq. 3-4): teacher ``D_t^r = E_l . E_v^T`` (text x image; Eq. 3's ``E_t``
    read as ``E_v``, see module docstring), student ``E_l . E_t^T`` (text x student),
    ``KL(D_t^r || E_l . E_t^T)`` row-wise: each text's distribution over the batch's images vs
    over its student samples. ``rows="sample"`` (the appendix code's ``s_logic = v @ t.t()``):
    the transposes, ``KL(E_v . E_l^T || E_t . E_l^T)``: each sample's distribution over the
    batch's texts, image vs student.
    Teachers are not detached here (:class:`CADLoss` detaches them): gradients reach a teacher
    embedding that requires grad. Computed in float32 at least, with autocast off.

    Parameters
    ----------
    student, text, image : ``[k, D]`` paired embeddings (E_t, E_l, E_v).
    rows : ``"text"`` or ``"sample"``.
    """
    if rows not in CR_ROWS:
        raise ValueError(f"unknown rows {rows!r}; expected one of {CR_ROWS}")
    with _full_precision(student):
        student, text, image = _fp32(student, text, image)
        if rows == "text":
            teacher, learner = text @ image.T, text @ student.T
        else:
            teacher, learner = image @ text.T, student @ text.T
        return correspondence_kl(teacher, learner, temperature=temperature, reduction=reduction)


def cad_se_loss(student: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None, *,
                temperature: float = 1.0, reduction: str = "batchmean") -> torch.Tensor:
    """L_se, Eq. 5-6: match the student's self-correspondence to the teachers' (averaged) one.

    Teacher ``D_t^l = (E_v . E_v^T + E_l . E_l^T) / 2`` (Eq. 5; the two similarity matrices are
    averaged before the softmax, as written), student ``E_t . E_t^T``,
    ``KL(D_t^l || E_t . E_t^T)``.
    With ``image=None`` the teacher is ``E_l . E_l^T`` alone, which is what the appendix code
    computes (``self_t_logic = t_embeddings @ t_embeddings.t()``).

    Computed in float32 at least, with autocast off.

    Parameters
    ----------
    student, text : ``[k, D]``; image : ``[k, D]`` or None.
    """
    with _full_precision(student):
        student, text, image = _fp32(student, text, image)
        teacher = text @ text.T
        if image is not None:
            teacher = (image @ image.T + teacher) / 2
        return correspondence_kl(teacher, student @ student.T, temperature=temperature,
                                 reduction=reduction)


@dataclass(frozen=True)
class CADWeighting:
    """How the three CAD terms are combined (one source at a time, see the module docstring).

    ``total = (w_in L_in + w_cr L_cr + w_se L_se) / divisor``.

    Attributes
    ----------
    weights : ``(w_in, w_cr, w_se)``.
    divisor : the total is divided by it.
    kl_reduction : reduction of the L_cr and L_se KLs (:func:`correspondence_kl`).
    cr_rows : orientation of the L_cr matrices (:func:`cad_cr_loss`).
    se_with_image : L_se's teacher averages the image and text self-similarities (Eq. 5);
        False: text only (the appendix code).
    """

    weights: tuple[float, float, float]
    divisor: float
    kl_reduction: str
    cr_rows: str = "text"
    se_with_image: bool = True

    def __post_init__(self) -> None:
        if self.kl_reduction not in KL_REDUCTIONS:
            raise ValueError(f"unknown kl_reduction {self.kl_reduction!r}; expected one of "
                             f"{KL_REDUCTIONS}")
        if self.cr_rows not in CR_ROWS:
            raise ValueError(f"unknown cr_rows {self.cr_rows!r}; expected one of {CR_ROWS}")
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        object.__setattr__(self, "divisor", float(self.divisor))


#: The sources a CAD weighting can follow (``custom``: explicit weights, Eq. 3-5's terms).
CAD_WEIGHTINGS: dict[str, CADWeighting] = {
    "paper_eq7": CADWeighting(weights=(1.0, 1.0, 1.0), divisor=1.0, kl_reduction="batchmean",
                              cr_rows="text", se_with_image=True),
    "appendix_code": CADWeighting(weights=(1.0, 100.0, 100.0), divisor=3.0,
                                  kl_reduction="mean", cr_rows="sample", se_with_image=False),
}
#: See the module docstring for why.
DEFAULT_CAD_WEIGHTING = "paper_eq7"


class CADLoss(nn.Module):
    """Stage I total: ``(w_in L_in + w_cr L_cr + w_se L_se) / divisor`` (Eq. 7 by default).

    Parameters
    ----------
    temperature : tau of L_in (Eq. 2). The paper gives none; 0.07 (CLIP's init) by default.
    learn_temperature : make tau of L_in learnable.
    kd_temperature : softmax temperature of the correspondence KLs (Eq. 4, 6); 1 in both sources.
    weighting : a :data:`CAD_WEIGHTINGS` name (default ``"paper_eq7"``) or a
        :class:`CADWeighting`.
    weights : ``(w_in, w_cr, w_se)`` replacing the weighting's (the CAD config zeroes the
        disabled terms of an ablation this way); the divisor, reduction and terms stay the
        weighting's.
    """

    def __init__(self, *, temperature: float = 0.07, learn_temperature: bool = False,
                 kd_temperature: float = 1.0,
                 weighting: str | CADWeighting = DEFAULT_CAD_WEIGHTING,
                 weights: tuple[float, float, float] | None = None) -> None:
        super().__init__()
        if isinstance(weighting, str):
            if weighting not in CAD_WEIGHTINGS:
                raise ValueError(f"unknown CAD weighting {weighting!r}; expected one of "
                                 f"{sorted(CAD_WEIGHTINGS)}")
            weighting = CAD_WEIGHTINGS[weighting]
        self.logit_scale = LogitScale(temperature=temperature, learnable=learn_temperature)
        self.kd_temperature = kd_temperature
        self.weighting = weighting
        self.weights = tuple(float(w) for w in (weights if weights is not None
                                                else weighting.weights))
        self.divisor = weighting.divisor
        self.kl_reduction = weighting.kl_reduction

    @classmethod
    def as_printed(cls, **kwargs: float | bool) -> CADLoss:
        """Eq. 7 exactly as printed: ``L_in + L_cr + L_se`` (the ``paper_eq7`` weighting)."""
        return cls(weighting="paper_eq7", **kwargs)  # type: ignore[arg-type]

    @classmethod
    def appendix_code(cls, **kwargs: float | bool) -> CADLoss:
        """The appendix code's ``(cl_loss + 100 kl_loss + 100 self_kl_loss) / 3``."""
        return cls(weighting="appendix_code", **kwargs)  # type: ignore[arg-type]

    def forward(self, student: torch.Tensor, text: torch.Tensor,
                image: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``[k, D]`` student, text and image embeddings of the same k samples.

        Returns ``{"loss", "in_loss", "cr_loss", "se_loss"}`` (float32 at least, computed with
        autocast off); without ``image`` there is no teacher cross-correspondence, so
        ``cr_loss`` is 0 and L_se uses text only. The teachers are frozen: ``text`` and
        ``image`` are detached, so gradients reach only the student (and the loss's own logit
        scale).
        """
        text = text.detach()
        image = image.detach() if image is not None else None
        w = self.weighting
        kd = {"temperature": self.kd_temperature, "reduction": w.kl_reduction}
        in_loss = cad_in_loss(student, text, self.logit_scale())
        cr_loss = (cad_cr_loss(student, text, image, rows=w.cr_rows, **kd)
                   if image is not None else in_loss.new_zeros(()))
        se_loss = cad_se_loss(student, text, image if w.se_with_image else None, **kd)
        w_in, w_cr, w_se = self.weights
        total = (w_in * in_loss + w_cr * cr_loss + w_se * se_loss) / w.divisor
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
    with _full_precision(fused):
        fused, positive, negatives = _fp32(fused, positive, negatives)
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
        ``{"loss", "af_loss"}`` (float32 at least, computed with autocast off).
        """
        with _full_precision(fused):
            fused, label_embeddings = _fp32(fused, label_embeddings)
            logits = self.logit_scale() * fused @ label_embeddings.T
            pos = logits.gather(1, targets.unsqueeze(1)).squeeze(1)
            not_target = ~F.one_hot(targets, logits.shape[1]).bool()
            loss = _eq9(pos, logits, negative_labels.bool() & not_target)
        return {"loss": loss, "af_loss": loss}
