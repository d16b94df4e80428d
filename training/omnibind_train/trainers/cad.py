"""Stage I: Cross-modal Alignment Distillation (seed 000 Sec. 3.2, Eq. 2-7).

Teachers (image: stage-0 encoder, text: MiniLM) are frozen, so their embeddings of the student
samples are computed once and passed in. Each *round* visits every student modality once, in a
random order drawn for that round (Sec. 3.2: "randomly sample one ... then another ... from the
remaining"); a visit is ``steps_per_visit`` optimiser steps of
:class:`~omnibind_train.losses.CADLoss` on that student's next batches. Students with a frozen
trunk train their head on cached trunk features; students with a trainable trunk (PointNet)
train end to end on cached preprocessed inputs.

Loss-term toggles (``terms``) give the Table 7 ablation: ``["in"]``, ``["in", "cr"]``,
``["in", "se"]`` and all three; a disabled term gets weight 0 (the divisor is unchanged).
``weighting`` picks the source the combination follows: Eq. 7 (``paper_eq7``, the default) or
the appendix code (``appendix_code``), see :mod:`omnibind_train.losses`.

Under ``torchrun`` the student, text and image embeddings of every rank are gathered
(:func:`~.distributed.gather_batch`): L_in's negatives and the ``k x k`` matrices of L_cr and
L_se are those of the global batch ``k`` (the student's batch size, see below), and the
gradients equal one process's on that batch.

Per-student batch sizes. CAD visits one student at a time, so each student's batches can have
their own size (the paper's Table 10: touch 512, thermal 256, event 128): ``batch_size`` maps a
student to its *global* batch, ``loop.batch_size`` is the default for the others. Under
``torchrun`` each rank takes ``batch_size // world_size`` of that student's batch (an error when
the world size does not divide it). With ``schedule: per_student`` each student trains
``loop.epochs`` passes over its own samples (Table 10's "total epochs" per modality); the default
``rounds`` schedule visits every student in every round for ``loop.epochs`` passes over the
largest student's samples (smaller students then see more passes).

Per-student samples. In the simulated world all students share one sample set and one set of
teacher embeddings; on the paper's real data each student trains on its own data set, so a
:class:`StudentData` may carry its own samples' text / image teacher embeddings and labels. A
student without paired images (ESC-50 audio, ShapeNet-part points) has no image teacher: its
loss is L_in + the text-only L_se, L_cr is 0 (see :class:`StudentData`).

Every rank visits the same student at the same step (the order depends on the seed and the
round only), and each student is its own DDP unit, so no parameter is ever unused in a step.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from omnibind_ros.core.modalities import STUDENTS
from omnibind_train.losses import CAD_WEIGHTINGS, DEFAULT_CAD_WEIGHTING, CADLoss, upcast
from omnibind_train.models.encoders import ModalityEncoder

from .common import (
    ConfigBase,
    EpochBatches,
    EvalFn,
    LoopConfig,
    LoopResult,
    OptimConfig,
    TrainLoop,
    class_subset,
    derive_seed,
    generator,
    make_optimizer,
    param_groups,
)
from .distributed import DistInfo, gather_batch, single_process, wrap_ddp
from .stage0 import pick_views

CAD_TERMS = ("in", "cr", "se")
#: How visits are scheduled (``CADConfig.schedule``).
CAD_SCHEDULES = ("rounds", "per_student")
#: Table 7 rows -> loss terms (names as in ``omnibind_train.evaluation.CAD_VARIANTS``).
ABLATION_VARIANTS: dict[str, tuple[str, ...]] = {
    "L_in": ("in",), "L_in+L_cr": ("in", "cr"), "L_in+L_se": ("in", "se"),
    "all": ("in", "cr", "se")}
#: What ``weighting: custom`` fills in for fields left unset: the defaults of the configs
#: written before ``weighting`` existed, so such a config (or a bundle's provenance) trains as
#: it did.
LEGACY_CUSTOM = {"weights": (1.0, 100.0, 100.0), "divisor": 3.0, "kl_reduction": "batchmean"}


@dataclass
class CADConfig(ConfigBase):
    """Stage I settings.

    Attributes
    ----------
    loop, optim : see :class:`LoopConfig`, :class:`OptimConfig`; ``loop.epochs`` counts passes
        over each student's samples.
    lr : per-student learning-rate overrides (the paper's Table 10 differs per modality).
    batch_size : per-student *global* batch sizes (Table 10 differs per modality); a student
        not listed uses ``loop.batch_size``. Under ``torchrun`` each rank takes
        ``batch_size // world_size`` of them, as for every global batch (:class:`LoopConfig`).
    schedule : ``"rounds"`` (default): every round visits every student once, in a random
        order, for ``loop.epochs`` x the largest student's batches per epoch rounds, so a
        student with fewer batches per epoch sees more passes over its samples;
        ``"per_student"``: each student takes ``loop.epochs`` passes over its own samples
        (``loop.epochs`` x its batches per epoch), rounds visit the students that have batches
        left, in a random order; the run ends when the last student has finished.
    students : student modalities to train, in canonical order.
    terms : enabled loss terms, subset of ``("in", "cr", "se")``.
    weighting : the source the loss combination follows, ``"paper_eq7"`` (default) or
        ``"appendix_code"`` (:data:`omnibind_train.losses.CAD_WEIGHTINGS`: weights, divisor,
        KL reduction, L_cr orientation and L_se teacher all from that source), or
        ``"custom"`` (``weights``, ``divisor``, ``kl_reduction`` as given, Eq. 3-5's terms).
        Left unset, it is ``"custom"`` when any of those three is given (a config written before
        the choice existed) and the default otherwise.
    weights, divisor, kl_reduction : with a named weighting, filled in from it (giving other
        values is an error: they would no longer be that source); with ``custom``, free
        (unset ones: ``LEGACY_CUSTOM``).
    temperature, learn_temperature : tau of L_in.
    kd_temperature : softmax temperature of the correspondence KLs; 1 in both sources (a named
        weighting requires 1).
    train_fraction : class-balanced fraction of the student samples used (scarce-data setting).
    steps_per_visit : optimiser steps per student visit.
    point_subsample : points per cloud during training (0 = all; inference always uses all).
    point_rotate : random rotation of point sets about the up (z) axis during training.
    crossfit_folds : K >= 2 also trains K fold models (each on the other folds) to give every
        training sample an *out-of-fold* student embedding for stage II (0: off). Students fit
        their scarce training samples far better than unseen ones, so a fusion head trained on
        in-sample embeddings learns to over-trust them; cross-fitting is the standard remedy
        for stacking.
    """

    loop: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=30, batch_size=64))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.05))
    lr: dict[str, float] = field(default_factory=dict)
    batch_size: dict[str, int] = field(default_factory=dict)
    schedule: str = "rounds"
    students: list[str] = field(default_factory=lambda: [m.value for m in STUDENTS])
    terms: list[str] = field(default_factory=lambda: list(CAD_TERMS))
    weighting: str | None = None
    weights: tuple[float, float, float] | None = None
    divisor: float | None = None
    kl_reduction: str | None = None
    temperature: float = 0.07
    learn_temperature: bool = False
    kd_temperature: float = 1.0
    train_fraction: float = 1.0
    steps_per_visit: int = 1
    point_subsample: int = 0
    point_rotate: bool = True
    crossfit_folds: int = 0

    def __post_init__(self) -> None:
        bad = sorted(set(self.terms) - set(CAD_TERMS))
        if bad or not self.terms:
            raise ValueError(f"terms must be a non-empty subset of {CAD_TERMS}, got {self.terms}")
        if not self.students:
            raise ValueError("no student modalities to train")
        self._check_batch_sizes()
        self._resolve_weighting()

    def _check_batch_sizes(self) -> None:
        known = {m.value for m in STUDENTS}
        unknown = sorted(set(self.batch_size) - known)
        if unknown:
            raise ValueError(f"cad.batch_size: unknown student(s) {unknown}; students are "
                             f"{sorted(known)}")
        for m, b in self.batch_size.items():
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                raise ValueError(f"cad.batch_size.{m} must be a positive integer (the global "
                                 f"batch), got {b!r}")
        if self.schedule not in CAD_SCHEDULES:
            raise ValueError(f"cad.schedule must be one of {CAD_SCHEDULES}, "
                             f"got {self.schedule!r}")

    def student_batch_size(self, student: str) -> int:
        """``student``'s global batch: its ``batch_size`` entry, else ``loop.batch_size``."""
        return int(self.batch_size.get(student, self.loop.batch_size))

    def _resolve_weighting(self) -> None:
        given = {k: getattr(self, k) for k in LEGACY_CUSTOM if getattr(self, k) is not None}
        if "weights" in given:
            given["weights"] = tuple(float(w) for w in given["weights"])
            if len(given["weights"]) != 3:
                raise ValueError(f"weights must be (w_in, w_cr, w_se), got {self.weights}")
        if "divisor" in given:
            given["divisor"] = float(given["divisor"])
        if self.weighting is None:
            self.weighting = "custom" if given else DEFAULT_CAD_WEIGHTING
        if self.weighting == "custom":
            values = {**LEGACY_CUSTOM, **given}
            CADLoss(weighting=self._custom(values))  # validates the reduction
        elif self.weighting in CAD_WEIGHTINGS:
            preset = CAD_WEIGHTINGS[self.weighting]
            values = {k: getattr(preset, k) for k in LEGACY_CUSTOM}
            clash = {k: v for k, v in given.items() if v != values[k]}
            if clash or self.kd_temperature != 1.0:
                clash.update({} if self.kd_temperature == 1.0
                             else {"kd_temperature": self.kd_temperature})
                raise ValueError(
                    f"cad.weighting {self.weighting!r} fixes weights={values['weights']}, "
                    f"divisor={values['divisor']}, kl_reduction={values['kl_reduction']!r} "
                    f"and kd_temperature=1.0 (its source's); got {clash}: drop them, or set "
                    "weighting: custom to train a combination that follows neither source")
        else:
            raise ValueError(f"unknown cad.weighting {self.weighting!r}; expected one of "
                             f"{[*CAD_WEIGHTINGS, 'custom']}")
        self.weights = values["weights"]
        self.divisor = values["divisor"]
        self.kl_reduction = values["kl_reduction"]

    def replace(self, **changes: Any) -> CADConfig:
        """A copy with ``changes``; a new ``weighting`` brings its own weights, divisor and
        reduction unless ``changes`` sets them too."""
        if "weighting" in changes:
            changes = {**{k: None for k in LEGACY_CUSTOM}, **changes}
        return super().replace(**changes)

    @staticmethod
    def _custom(values: Mapping[str, Any]) -> Any:
        from omnibind_train.losses import CADWeighting

        return CADWeighting(weights=values["weights"], divisor=values["divisor"],
                            kl_reduction=values["kl_reduction"])

    def loss_weights(self) -> tuple[float, float, float]:
        """``weights`` with the disabled terms zeroed."""
        assert self.weights is not None
        return tuple(w if t in self.terms else 0.0  # type: ignore[return-value]
                     for t, w in zip(CAD_TERMS, self.weights, strict=True))

    def build_loss(self) -> CADLoss:
        weighting = (self._custom({"weights": self.weights, "divisor": self.divisor,
                                   "kl_reduction": self.kl_reduction})
                     if self.weighting == "custom" else self.weighting)
        return CADLoss(temperature=self.temperature, learn_temperature=self.learn_temperature,
                       kd_temperature=self.kd_temperature, weighting=weighting,
                       weights=self.loss_weights())


@dataclass
class StudentData:
    """One student's cached training inputs, optionally with its own samples' teachers.

    In the simulated world every sample carries every modality, so all students share one set
    of N samples and :func:`train_cad` takes their teacher embeddings once (its ``text``,
    ``image``, ``teacher_valid``, ``labels`` arguments). On the paper's real data each student
    has its own data set (Table 10: Touch-and-Go, LLVIP, N-Caltech101; ESC-50, ShapeNet-part),
    so a student may carry its own teachers instead: when ``text`` is set, this student's
    ``text`` / ``image`` / ``teacher_valid`` / ``labels`` are used and the shared ones ignored.

    Attributes
    ----------
    values : ``[V, N, F]`` trunk features (frozen trunk) or ``[1, N, P, 3]`` point sets.
    valid : ``[N]`` bool.
    text : ``[N, D]`` frozen text-teacher embeddings of this student's samples (E_l), or None
        (use the shared ones).
    image : ``[N, D]`` frozen image-teacher embeddings of the paired images (E_v), or None:
        no image teacher (a student whose data set has no paired image, e.g. audio, point
        cloud). Then only the text-centred terms exist: L_in (Eq. 2 uses E_t and E_l only) and
        L_se with the text self-similarity as its teacher (Eq. 5 without the image half);
        L_cr (Eq. 3-4, whose teacher D_t^r = E_l . E_v^T needs the image) is 0
        (:class:`~omnibind_train.losses.CADLoss` with ``image=None``).
    teacher_valid : ``[N]`` bool, samples whose teachers are usable (a paired image found and
        decoded); None: all.
    labels : ``[N]`` int64 classes of this student's samples (class-balanced
        ``train_fraction``); required with ``text``.
    """

    values: torch.Tensor
    valid: torch.Tensor
    text: torch.Tensor | None = None
    image: torch.Tensor | None = None
    teacher_valid: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    @property
    def own_teachers(self) -> bool:
        """Whether this student carries its own samples' teacher embeddings."""
        return self.text is not None


class StudentLoss(nn.Module):
    """A student's trainable part plus its CAD loss (the DDP unit).

    With a frozen trunk the input is cached trunk features and only the head runs; otherwise the
    whole encoder runs on the cached preprocessed input. With ``dist`` distributed, the student,
    text and image embeddings of every rank are gathered first
    (:func:`~.distributed.gather_batch`): the loss sees the global batch.
    """

    def __init__(self, encoder: ModalityEncoder, loss: CADLoss,
                 dist: DistInfo | None = None) -> None:
        super().__init__()
        self.on_features = encoder.trunk_frozen
        self.part: nn.Module = encoder.head if self.on_features else encoder
        self.loss = loss
        self.dist = dist

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit student embeddings ``[B, D]`` (float32 even under autocast)."""
        if self.on_features:
            return F.normalize(upcast(self.part(x)), dim=-1)
        return upcast(self.part(x))

    def forward(self, x: torch.Tensor, text: torch.Tensor,
                image: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """This rank's ``[b, ...]`` inputs and ``[b, D]`` teacher embeddings -> the loss dict
        over the global batch (``image`` None: a student without an image teacher)."""
        student, text = (gather_batch(t, self.dist) for t in (self.embed(x), text))
        if image is not None:
            image = gather_batch(image, self.dist)
        return self.loss(student, text, image)


def augment_points(points: torch.Tensor, gen: torch.Generator, *, subsample: int = 0,
                   rotate: bool = True) -> torch.Tensor:
    """Training-time point-set augmentation: ``[B, P, 3]`` -> ``[B, P', 3]``.

    Random rotation about z (the preprocessed clouds are z-up, centred, unit sphere), then a
    random subset of ``subsample`` points per cloud (0 keeps all).
    """
    if rotate:
        theta = torch.rand(points.shape[0], generator=gen) * (2 * math.pi)
        c, s = torch.cos(theta), torch.sin(theta)
        rot = torch.zeros(points.shape[0], 3, 3)
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = c, -s, s, c
        rot[:, 2, 2] = 1.0
        points = points @ rot.transpose(1, 2)
    if 0 < subsample < points.shape[1]:
        keep = torch.rand(points.shape[:2], generator=gen).argsort(dim=1)[:, :subsample]
        points = points.gather(1, keep.unsqueeze(-1).expand(-1, -1, 3))
    return points


@dataclass
class _Plan:
    """The deterministic step -> (student, batch) schedule.

    ``per_student`` False: every round visits every student for ``steps_per_visit`` steps;
    there are ``epochs`` x the largest student's batches per epoch rounds. True: student ``m``
    takes ``epochs`` x its own batches per epoch steps in all; a round visits the students with
    steps left (``steps_per_visit`` steps each, fewer in a student's last visit).
    """

    students: list[str]
    batches: dict[str, EpochBatches]
    steps_per_visit: int
    seed: int
    epochs: int = 1
    per_student: bool = False

    def __post_init__(self) -> None:
        if self.per_student:
            self._build_per_student()

    @property
    def rounds(self) -> int:
        return max(b.steps_per_epoch for b in self.batches.values())

    @property
    def total_steps(self) -> int:
        if self.per_student:
            return int(self._round_start[-1])
        return self.epochs * self.rounds * len(self.students) * self.steps_per_visit

    def student_steps(self, student: str) -> int:
        """Optimiser steps (batches) ``student`` takes over the whole run."""
        if self.per_student:
            return self.epochs * self.batches[student].steps_per_epoch
        return self.epochs * self.rounds * self.steps_per_visit

    def order(self, round_: int) -> list[str]:
        perm = torch.randperm(len(self.students), generator=generator(self.seed, "cad-order",
                                                                      round_))
        return [self.students[i] for i in perm.tolist()]

    def _build_per_student(self) -> None:
        spv = self.steps_per_visit
        left = {m: self.student_steps(m) for m in self.students}
        rounds = max(-(-n // spv) for n in left.values())
        starts = [0]
        for r in range(rounds):
            starts.append(starts[-1] + sum(min(spv, max(0, left[m] - r * spv))
                                           for m in self.students))
        self._left = left
        self._round_start = starts

    def at(self, step: int) -> tuple[str, torch.Tensor]:
        if not self.per_student:
            per_round = len(self.students) * self.steps_per_visit
            round_, within = divmod(step, per_round)
            visit, sub = divmod(within, self.steps_per_visit)
            student = self.order(round_)[visit]
            _, index = self.batches[student].at(round_ * self.steps_per_visit + sub)
            return student, index
        import bisect

        spv = self.steps_per_visit
        round_ = bisect.bisect_right(self._round_start, step) - 1
        within = step - self._round_start[round_]
        for student in self.order(round_):
            n = min(spv, max(0, self._left[student] - round_ * spv))
            if within < n:
                _, index = self.batches[student].at(round_ * spv + within)
                return student, index
            within -= n
        raise IndexError(f"step {step} is past the schedule's {self.total_steps} steps")


def train_cad(students: Mapping[str, ModalityEncoder], data: Mapping[str, StudentData],
              text: torch.Tensor | None, image: torch.Tensor | None,
              teacher_valid: torch.Tensor | None, labels: torch.Tensor | None,
              cfg: CADConfig, *, seed: int = 0,
              dist: DistInfo | None = None, run_dir: Path | None = None,
              record: Mapping[str, Any] | None = None, resume: str | Path | None = None,
              eval_fn: EvalFn | None = None, progress: bool = True,
              train_mask: torch.Tensor | None = None) -> LoopResult:
    """Align every student in ``cfg.students`` to the frozen teachers (in place).

    Parameters
    ----------
    students : modality -> encoder (heads, and trunks if trainable, are trained).
    data : modality -> its cached inputs over the N student samples; a
        :class:`StudentData` with its own teachers (``own_teachers``) brings its own samples
        (the real data sets: one per student) and ignores the four shared arguments below.
    text, image : ``[N, D]`` frozen teacher embeddings of the shared samples (caption, image);
        None when every student brings its own (``image`` None: no image teacher).
    teacher_valid : ``[N]`` bool, shared samples whose caption and image are usable.
    labels : ``[N]`` int64 classes (for the class-balanced ``train_fraction`` subset).
    cfg : the stage config (``cfg.student_batch_size(m)`` is student ``m``'s global batch,
        see :class:`LoopConfig`).
    seed, dist, run_dir, record, resume, eval_fn, progress : see :class:`TrainLoop`.
    train_mask : ``[N]`` bool, restrict training to these samples (cross-fitting folds).
    """
    dist = dist or single_process()
    names = [m for m in cfg.students if m in students]
    losses = {m: cfg.build_loss() for m in names}
    models = {m: wrap_ddp(StudentLoss(students[m], losses[m], dist), dist) for m in names}
    teachers = {m: _student_teachers(m, data[m], text, image, teacher_valid, labels)
                for m in names}
    batches = {}
    for m in names:
        m_text, m_image, m_valid, m_labels = teachers[m]
        usable = data[m].valid & m_valid
        if train_mask is not None:
            usable = usable & train_mask
        keep = class_subset(m_labels, cfg.train_fraction, seed=seed, candidates=usable)
        batches[m] = EpochBatches(keep, cfg.student_batch_size(m),
                                  seed=derive_sampler_seed(seed, m), dist=dist)
    plan = _Plan(names, batches, cfg.steps_per_visit, seed, epochs=cfg.loop.epochs,
                 per_student=cfg.schedule == "per_student")
    total = plan.total_steps
    named = {m: [p for p in students[m].parameters() if p.requires_grad]
             + list(losses[m].parameters()) for m in names}
    optimizer, scheduler = make_optimizer(param_groups(named, cfg.optim, cfg.lr), cfg.optim,
                                          total)
    modules: dict[str, nn.Module] = {m: students[m] for m in names}
    modules.update({f"loss_{m}": losses[m] for m in names})
    loop = TrainLoop(name="cad", modules=modules, optimizer=optimizer, scheduler=scheduler,
                     total_steps=total, seed=seed, loop=cfg.loop, grad_clip=cfg.optim.grad_clip,
                     dist=dist, run_dir=run_dir,
                     record={**(record or {}), "train": cfg.to_dict()}, progress=progress)
    device = dist.device

    def step(s: int) -> dict[str, torch.Tensor]:
        student, index = plan.at(s)
        gen = generator(seed, "cad", s, dist.rank)
        x = pick_views(data[student].values, index, gen).to(torch.float32)
        if not students[student].trunk_frozen and x.ndim == 3 and x.shape[-1] == 3:
            x = augment_points(x, gen, subsample=cfg.point_subsample, rotate=cfg.point_rotate)
        m_text, m_image, _, _ = teachers[student]
        out = models[student](x.to(device), m_text[index].to(device, torch.float32),
                              None if m_image is None
                              else m_image[index].to(device, torch.float32))
        return {**out, **{f"{k}/{student}": v for k, v in out.items()}}

    for m in models.values():
        m.train()
    return loop.run(step, eval_fn=eval_fn, resume=resume)


def _student_teachers(student: str, d: StudentData, text: torch.Tensor | None,
                      image: torch.Tensor | None, teacher_valid: torch.Tensor | None,
                      labels: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """``(text, image or None, teacher_valid, labels)`` of one student's samples: its own
    (:attr:`StudentData.own_teachers`) or the shared ones."""
    if d.own_teachers:
        assert d.text is not None
        n = d.valid.shape[0]
        if d.labels is None:
            raise ValueError(f"cad: student {student} brings its own teachers but no labels")
        for what, t in (("text", d.text), ("image", d.image), ("labels", d.labels),
                        ("teacher_valid", d.teacher_valid)):
            if t is not None and t.shape[0] != n:
                raise ValueError(f"cad: student {student}'s {what} has {t.shape[0]} rows, its "
                                 f"samples {n}")
        valid = d.teacher_valid if d.teacher_valid is not None \
            else torch.ones(n, dtype=torch.bool)
        return d.text, d.image, valid.bool(), d.labels.long()
    if text is None or teacher_valid is None or labels is None:
        raise ValueError(f"cad: student {student} has no teachers: pass the shared text, "
                         "teacher_valid and labels, or give its StudentData its own")
    return text, image, teacher_valid, labels


@torch.no_grad()
def embed_values(encoder: ModalityEncoder, values: torch.Tensor, *,
                 device: torch.device | str = "cpu", batch: int = 256) -> torch.Tensor:
    """Unit embeddings ``[N, D]`` of cached trunk features (frozen trunk) or inputs (else).

    ``values`` is ``[N, ...]`` (one view); computed in batches on ``device``, returned on CPU.
    """
    was = encoder.training
    encoder.eval()
    out = []
    for start in range(0, values.shape[0], batch):
        x = values[start:start + batch].float().to(device)
        out.append((encoder.encode_features(x) if encoder.trunk_frozen else encoder(x)).cpu())
    encoder.train(was)
    return torch.cat(out)


def fold_masks(labels: torch.Tensor, folds: int, *, seed: int) -> list[torch.Tensor]:
    """``folds`` disjoint class-balanced ``[N]`` bool masks covering every sample."""
    if folds < 2:
        raise ValueError(f"cross-fitting needs >= 2 folds, got {folds}")
    gen = generator(seed, "folds")
    fold_of = torch.empty_like(labels)
    offset = 0  # continue the round robin across classes: fold sizes differ by <= 1
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        fold_of[idx] = (torch.arange(idx.numel()) + offset) % folds
        offset += idx.numel()
    return [fold_of == k for k in range(folds)]


def crossfit_embeddings(make_students: Callable[[], Mapping[str, ModalityEncoder]],
                        data: Mapping[str, StudentData], text: torch.Tensor,
                        image: torch.Tensor, teacher_valid: torch.Tensor,
                        labels: torch.Tensor, cfg: CADConfig, *, seed: int = 0,
                        dist: DistInfo | None = None, progress: bool = True
                        ) -> dict[str, torch.Tensor]:
    """Out-of-fold student embeddings ``{modality: [N, D]}`` of the training samples.

    For each of ``cfg.crossfit_folds`` class-balanced folds, fresh students (``make_students``)
    are trained with ``cfg`` on the other folds and embed this fold. Nothing is written.
    """
    dist = dist or single_process()
    out: dict[str, torch.Tensor] = {}
    for k, fold in enumerate(fold_masks(labels, cfg.crossfit_folds, seed=seed)):
        students = make_students()
        train_cad(students, data, text, image, teacher_valid, labels, cfg,
                  seed=derive_seed(seed, "fold", k) % 2 ** 31, dist=dist, progress=progress,
                  train_mask=~fold)
        for m, enc in students.items():
            emb = embed_values(enc, data[m].values[0][fold], device=dist.device)
            out.setdefault(m, torch.zeros(labels.numel(), emb.shape[1]))[fold] = emb
    return out


def derive_sampler_seed(seed: int, student: str) -> int:
    """Each student's sampler gets its own seed (independent batch orders)."""
    return derive_seed(seed, "cad-sampler", student) % (2 ** 31)
