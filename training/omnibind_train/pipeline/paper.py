"""The paper-scale OmniBind config (seed 000 on its nine real data sets):
``training/configs/paper_omnibind.yaml`` read into :class:`PaperOmniBindConfig`.

The simulated-world pipeline (:class:`~.config.PipelineConfig`) reads one generated data set in
which every sample has every modality. The paper trains on nine published data sets instead
(Table 1): each student on its own data set (Table 10: Touch-and-Go, LLVIP, N-Caltech101) and the
AF stage on the modality-free index built from all nine (Sec. 3.4). This config describes that
run: the readers and their roots, which data set each CAD student trains on and where its image
teacher's input comes from, the modality-free index, the encoders (a real teacher from a local
open_clip checkpoint through the model registry), and Table 10's stage settings as the existing
trainers' configs (:class:`~omnibind_train.trainers.cad.CADConfig` with per-student batch sizes
and learning rates, :class:`~omnibind_train.trainers.af.AFConfig`).

Placeholders. Paths may hold ``${NAME}``; ``NAME`` must be declared under ``paths:`` and is
resolved from that entry when it is set (``--set paths.DATA_ROOT=/data``), else from the
environment (``export DATA_ROOT=/data``). Loading and validating the config needs neither the
data nor the checkpoints: readers, reader options, student and source keys, placeholder names
and encoder specs are checked without touching a file. A stage that needs data checks its roots
first (:meth:`PaperOmniBindConfig.require_stage`) and names every unset placeholder and missing
root at once.

What is wired to real data is stated in :data:`WIRED`; the CAD and AF stages on the readers are
:mod:`.paper_run` (``omnibind-train features | cad | af | all --config <this>``).

Checks from the command line::

    python -m omnibind_train.pipeline.paper check --config training/configs/paper_omnibind.yaml \\
        --stage all --set paths.DATA_ROOT=/data --set paths.CKPT_DIR=/ckpt
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnibind_ros.core.modalities import STUDENTS

from ..trainers.af import AFConfig
from ..trainers.cad import CADConfig
from ..trainers.common import ConfigBase
from .config import YamlConfig

__all__ = ["FAMILY", "STAGES", "WIRED", "CADSource", "DataRootError", "ModalityFreeSplit",
           "ModalityFreeSpec", "PaperDataConfig", "PaperExportSpec", "PaperOmniBindConfig",
           "SourceSpec", "main"]

FAMILY = "omnibind_paper"
#: Stages whose data :meth:`PaperOmniBindConfig.require_stage` can check.
STAGES = ("cad", "modality_free", "af", "eval")
#: What reads real data today, for the documentation and the ``check`` command.
WIRED = {
    "readers": "wired: data.sources open the nine readers (omnibind_train.datasets) on their "
               "roots, with the options validated against each reader's signature",
    "modality_free": "wired: `omnibind-train modality-free --config <this> --split train|test` "
                     "builds data.modality_free's index from data.sources",
    "encoders": "wired: encoders resolve through the model registry (open_clip_vision_config / "
                "open_clip_text_config for a local open_clip checkpoint, registry names, "
                "EncoderConfig dicts) into EncoderConfigs; pipeline_config() hands them with "
                "cad/af to the existing trainers",
    "features": "wired: `omnibind-train features --config <this>` computes and caches (keyed "
                "by reader selection, trunk and preprocessing configs) every student's frozen "
                "trunk features or inputs, its paired images' image-teacher features and the "
                "modality-free members' features (omnibind_train.pipeline.paper_run)",
    "cad": "wired: `omnibind-train cad --config <this>`: each student on its own data.cad "
           "source, text teacher = its label prompts, image teacher = its paired images (none "
           "for audio / point cloud: L_in + text-only L_se), checkpoints under "
           "<cache>/runs/<name>/cad",
    "af": "wired: `omnibind-train af --config <this>`: the modality-free train index's members "
          "embedded by the CAD students and the teachers, with the presence mask; AF and the "
          "baselines trained, fused top-1 on the test index when built",
    "eval": "wired: `omnibind-train eval --config <this>`: each CAD student's zero-shot top-1 "
            "on its data set's test split (data.eval, default: the modality-free test source "
            "with the same reader and root) against that data set's label prompts; AF and the "
            "baselines on the modality-free test index; report.md + results.json under "
            "<cache>/runs/<name>/eval (omnibind_train.pipeline.paper_eval)",
    "export": "wired: `omnibind-train export --config <this>`: the image teacher, the CAD "
              "students, the AF head, the text teacher with its CLIP BPE tokenizer.json, the "
              "label set (export.labels or the modality-free target labels), the readers' "
              "preprocessing and provenance as a runtime bundle "
              "(omnibind_train.pipeline.paper_export)",
}

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
STUDENT_NAMES = tuple(m.value for m in STUDENTS)


class DataRootError(FileNotFoundError):
    """A stage's data root or checkpoint is missing, or a placeholder in its path is unset."""


def placeholders(value: str) -> list[str]:
    """The ``${NAME}`` names in ``value``."""
    return _PLACEHOLDER.findall(value)


@dataclass
class SourceSpec(ConfigBase):
    """One reader on one root.

    Attributes
    ----------
    reader : registry name in :data:`omnibind_train.datasets.READERS` (``esc50``, ``llvip``...).
    root : the data set's root as published (may hold ``${NAME}`` placeholders).
    options : keyword arguments of the reader (``split``, ``folds``, ``task``...).
    """

    reader: str
    root: str
    options: dict[str, Any] = field(default_factory=dict)

    def reader_class(self) -> type:
        from ..datasets import READERS

        key = "".join(c for c in self.reader.lower() if c not in "-_ ")
        key = key[:-2] if key.endswith("1k") else key
        if key not in READERS:
            raise ValueError(f"unknown reader {self.reader!r}; known: {', '.join(READERS)}")
        return READERS[key]


@dataclass
class CADSource(ConfigBase):
    """Where one CAD student's samples and its teachers' inputs come from.

    Attributes
    ----------
    source : key of ``data.sources``: the student's data set (Table 10).
    image : the image teacher's input: ``"paired"`` (the reader's own paired image:
        LLVIP's visible crop, Touch-and-Go's video frame), a key of ``data.sources`` whose
        sample of the same pair key is the image (N-Caltech101 -> Caltech-101), or None (no
        image teacher: L_in and a text-only L_se, no L_cr;
        :class:`~omnibind_train.losses.CADLoss`).
    """

    source: str
    image: str | None = None


@dataclass
class ModalityFreeSplit(ConfigBase):
    """One split's modality-free index.

    Attributes
    ----------
    index : the JSON-lines index file written by the builder.
    sources : keys of ``data.sources`` it draws from (one split of each data set).
    num_items : items drawn.
    """

    index: str
    sources: list[str] = field(default_factory=list)
    num_items: int = 50_080


@dataclass
class ModalityFreeSpec(ConfigBase):
    """The modality-free index (Sec. 3.4, A.2): ``build_modality_free_index``'s settings.

    Attributes
    ----------
    label_map : the reviewed label-map YAML (proposed on the first build).
    train, test : the two splits' indices (built separately: no sample crosses splits).
    proportions : ``{combination size: weight}``.
    text_encoder : registry name of the label-name / description text space.
    embedding_cache : ``.npz`` cache of the text embeddings, or None.
    threshold, label_template, margin : label-map proposal and sample matching settings.
    require_reviewed : refuse an unreviewed label map.
    include_text : text counts as a modality of the items.
    seed : seeds the draws (the test split uses ``seed + 1``).
    """

    label_map: str
    train: ModalityFreeSplit
    test: ModalityFreeSplit
    proportions: dict[int, float] = field(
        default_factory=lambda: {1: 0.06, 2: 0.46, 3: 0.15, 4: 0.16, 5: 0.17})
    text_encoder: str = "text_minilm_l6"
    embedding_cache: str | None = None
    threshold: float = 0.7
    label_template: str = "a {}"
    margin: float = 0.05
    require_reviewed: bool = True
    include_text: bool = True
    seed: int = 0

    def split(self, name: str) -> ModalityFreeSplit:
        if name not in ("train", "test"):
            raise ValueError(f"modality-free split must be train or test, got {name!r}")
        return self.train if name == "train" else self.test


@dataclass
class PaperExportSpec(ConfigBase):
    """The runtime bundle of the paper run (``omnibind-train export --config <this>``).

    Attributes
    ----------
    out : bundle directory (None: ``<cache>/bundles/<bundle>``).
    bundle : bundle name under ``<cache>/bundles`` when ``out`` is None.
    labels : the label names the bundle recognises (None: the modality-free index's target
        labels, made readable: ``car_horn`` -> "car horn"); embedded with ``data.label_prompt``.
    exporter : ``auto`` | ``dynamo`` | ``torchscript`` (as :func:`export_bundle`).
    sample_batch : real test samples per modality the export traces and checks parity on.
    include_torch_weights : also write the torch fallback's safetensors (doubles the size).
    """

    out: str | None = None
    bundle: str = "paper_omnibind"
    labels: list[str] | None = None
    exporter: str = "auto"
    sample_batch: int = 2
    include_torch_weights: bool = True


@dataclass
class PaperDataConfig(ConfigBase):
    """The real data of the paper run.

    Attributes
    ----------
    sources : key -> :class:`SourceSpec` (one split of one data set each).
    cad : student modality -> :class:`CADSource`.
    label_prompt : the text teacher's input for a label (Sec. 3.3: "a photo of a {label}").
    modality_free : the modality-free index (AF's training and test data).
    preprocess : modality -> overrides of the core preprocessing (as ``DataConfig.preprocess``;
        e.g. the ViT's input size: an open_clip vision trunk's ``image_size`` must equal its
        modality's ``size``).
    eval : student -> key of ``data.sources``: the test split its zero-shot top-1 is measured
        on (``omnibind-train eval``); a student not listed takes the one source of
        ``modality_free.test.sources`` (else of all sources) with the same reader and root as
        its ``data.cad`` source (:meth:`PaperOmniBindConfig.eval_source`).
    """

    sources: dict[str, SourceSpec] = field(default_factory=dict)
    cad: dict[str, CADSource] = field(default_factory=dict)
    label_prompt: str = "a photo of a {}."
    modality_free: ModalityFreeSpec | None = None
    preprocess: dict[str, dict[str, Any]] = field(default_factory=dict)
    eval: dict[str, str] = field(default_factory=dict)


@dataclass
class PaperOmniBindConfig(YamlConfig):
    """``training/configs/paper_omnibind.yaml`` (module docstring).

    Attributes
    ----------
    family : ``"omnibind_paper"``.
    name, seed, cache_dir, device, threads, progress : as in :class:`~.config.PipelineConfig`.
    precision : ``"bf16"`` (autocast on CUDA; the losses stay float32) or ``"fp32"``.
    paths : placeholder name -> value (None: taken from the environment).
    data : the real data (:class:`PaperDataConfig`).
    encoders : modality -> a registry name, an ``EncoderConfig`` dict, or an open_clip spec
        ``{open_clip: <checkpoint>, tower: vision|text, act, head, tokenizer, frozen}``
        (architecture read from the checkpoint by ``open_clip_vision_config`` /
        ``open_clip_text_config``). Every non-text encoder's ``embed_dim`` defaults to the text
        encoder's output size (the shared space).
    cad, af : the stage settings (Table 10), the trainers' own config classes.
    baselines : fusion baselines next to AF.
    export : the runtime bundle (:class:`PaperExportSpec`).
    """

    family: str = FAMILY
    name: str = "paper_omnibind"
    seed: int = 0
    cache_dir: str | None = None
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
    precision: str = "bf16"
    paths: dict[str, str | None] = field(default_factory=dict)
    data: PaperDataConfig = field(default_factory=PaperDataConfig)
    encoders: dict[str, Any] = field(default_factory=dict)
    cad: CADConfig = field(default_factory=CADConfig)
    af: AFConfig = field(default_factory=AFConfig)
    baselines: list[str] = field(default_factory=lambda: ["mean", "linear", "concat"])
    export: PaperExportSpec = field(default_factory=PaperExportSpec)

    def __post_init__(self) -> None:
        problems = self._validate()
        if problems:
            raise ValueError("paper config: " + "; ".join(problems))

    # -- validation without data -----------------------------------------------------------------

    def _strings(self) -> list[tuple[str, str]]:
        """``(where, value)`` of every path-like string that may hold placeholders."""
        out = [(f"data.sources.{k}.root", s.root) for k, s in self.data.sources.items()]
        mf = self.data.modality_free
        if mf is not None:
            out.append(("data.modality_free.label_map", mf.label_map))
            out += [(f"data.modality_free.{n}.index", mf.split(n).index)
                    for n in ("train", "test")]
            if mf.embedding_cache:
                out.append(("data.modality_free.embedding_cache", mf.embedding_cache))
        for m, spec in self.encoders.items():
            if isinstance(spec, Mapping):
                for key in ("open_clip", "tokenizer"):
                    if isinstance(spec.get(key), str):
                        out.append((f"encoders.{m}.{key}", spec[key]))
                trunk = spec.get("trunk")
                if isinstance(trunk, Mapping):
                    for key in ("checkpoint", "tokenizer"):
                        if isinstance(trunk.get(key), str):
                            out.append((f"encoders.{m}.trunk.{key}", trunk[key]))
        if self.cache_dir:
            out.append(("cache_dir", self.cache_dir))
        return out

    def _validate(self) -> list[str]:
        problems: list[str] = []
        if self.family != FAMILY:
            problems.append(f"family must be {FAMILY!r}, got {self.family!r}")
        if self.precision not in ("bf16", "fp32"):
            problems.append(f"precision must be bf16 or fp32, got {self.precision!r}")
        for where, value in self._strings():
            for name in placeholders(value):
                if name not in self.paths:
                    problems.append(f"{where}: placeholder ${{{name}}} is not declared under "
                                    f"paths: (declared: {sorted(self.paths)})")
        sources = self.data.sources
        for key, spec in sources.items():
            try:
                cls = spec.reader_class()
            except ValueError as exc:
                problems.append(f"data.sources.{key}: {exc}")
                continue
            params = inspect.signature(cls.__init__).parameters
            bad = sorted(set(spec.options) - set(params) - {"self"}) \
                if not any(p.kind is p.VAR_KEYWORD for p in params.values()) else []
            if "root" in spec.options:
                bad.append("root (give it as root:, not an option)")
            if bad:
                allowed = [p for p in params if p not in ("self", "root")]
                problems.append(f"data.sources.{key}: {cls.__name__} has no option(s) {bad}; "
                                f"its options: {allowed}")
        for student, cs in self.data.cad.items():
            if student not in STUDENT_NAMES:
                problems.append(f"data.cad: {student!r} is not a student modality "
                                f"{list(STUDENT_NAMES)}")
            for what, key in (("source", cs.source), ("image", cs.image)):
                if key is None or (what == "image" and key == "paired"):
                    continue
                if key not in sources:
                    problems.append(f"data.cad.{student}.{what}: {key!r} is not a key of "
                                    f"data.sources")
            if cs.source in sources:
                try:
                    modality = sources[cs.source].reader_class().modality
                except ValueError:
                    modality = student
                if modality != student:
                    problems.append(f"data.cad.{student}.source: {cs.source!r} is "
                                    f"{modality} data, not {student}")
        if self.data.cad:
            missing = [m for m in self.cad.students if m not in self.data.cad]
            if missing:
                problems.append(f"cad.students {missing} have no data.cad entry (the data set "
                                "each trains on)")
        mf = self.data.modality_free
        if mf is not None:
            for n in ("train", "test"):
                for key in mf.split(n).sources:
                    if key not in sources:
                        problems.append(f"data.modality_free.{n}.sources: {key!r} is not a "
                                        "key of data.sources")
        for student, key in self.data.eval.items():
            if student not in STUDENT_NAMES:
                problems.append(f"data.eval: {student!r} is not a student modality "
                                f"{list(STUDENT_NAMES)}")
            elif key not in sources:
                problems.append(f"data.eval.{student}: {key!r} is not a key of data.sources")
            else:
                try:
                    modality = sources[key].reader_class().modality
                except ValueError:
                    modality = student
                if modality != student:
                    problems.append(f"data.eval.{student}: {key!r} is {modality} data, not "
                                    f"{student}")
        bad = sorted(set(self.data.preprocess) - set(STUDENT_NAMES) - {"image", "text"})
        if bad:
            problems.append(f"data.preprocess: unknown modalities {bad}")
        for m, spec in self.encoders.items():
            problem = _check_encoder_spec(m, spec)
            if problem:
                problems.append(problem)
        return problems

    # -- placeholders, roots ---------------------------------------------------------------------

    def expand(self, value: str, where: str) -> str:
        """``value`` with its placeholders substituted (:class:`DataRootError` naming an unset
        one and where it is used)."""
        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            got = self.paths.get(name) or os.environ.get(name)
            if not got:
                raise DataRootError(
                    f"{where} = {value!r}: {name} is not set (export {name}=... or "
                    f"--set paths.{name}=...)")
            return str(got)

        return _PLACEHOLDER.sub(sub, value)

    def source_root(self, key: str) -> Path:
        """The expanded root of ``data.sources[key]`` (not checked for existence)."""
        if key not in self.data.sources:
            raise KeyError(f"{key!r} is not a key of data.sources ({sorted(self.data.sources)})")
        return Path(self.expand(self.data.sources[key].root, f"data.sources.{key}.root")
                    ).expanduser()

    def open_source(self, key: str) -> Any:
        """The reader of ``data.sources[key]`` on its root (:class:`DataRootError` when the
        root is missing or a placeholder unset; the reader's own error for a partial root)."""
        spec = self.data.sources[key] if key in self.data.sources else None
        root = self.source_root(key)
        if not root.is_dir():
            raise DataRootError(f"data.sources.{key}.root: {root} does not exist "
                                f"({spec.reader if spec else key} data set root)")
        assert spec is not None
        return spec.reader_class()(root, **spec.options)

    def eval_source(self, student: str) -> str:
        """The ``data.sources`` key of ``student``'s test split (``data.eval``, else the source
        of ``modality_free.test.sources`` (then of all sources) reading the same data set: same
        reader and root as its ``data.cad`` source, another key)."""
        if student in self.data.eval:
            return self.data.eval[student]
        cs = self.data.cad.get(student)
        if cs is None:
            raise ValueError(f"{student} has no data.cad entry, so no test split can be derived: "
                             f"set data.eval.{student}")
        train = self.data.sources[cs.source]
        same = [k for k, s in self.data.sources.items() if k != cs.source
                and s.reader == train.reader and s.root == train.root]
        mf = self.data.modality_free
        preferred = [k for k in same if mf is not None and k in mf.test.sources]
        found = preferred or same
        if len(found) != 1:
            raise ValueError(f"data.eval.{student}: cannot tell {student}'s test split from "
                             f"{cs.source!r} (candidates {found or 'none'}): set "
                             f"data.eval.{student} to a data.sources key")
        return found[0]

    def stage_sources(self, stage: str) -> list[str]:
        """The keys of ``data.sources`` that ``stage`` reads."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages with data: {STAGES}")
        if stage == "cad":
            keys = []
            for m in self.cad.students:
                cs = self.data.cad.get(m)
                if cs is None:
                    continue
                keys.append(cs.source)
                if cs.image not in (None, "paired"):
                    keys.append(cs.image)
            return list(dict.fromkeys(keys))
        mf = self.data.modality_free
        if mf is None:
            return []
        splits = {"modality_free": ("train", "test"), "af": ("train", "test"),
                  "eval": ("test",)}[stage]
        return list(dict.fromkeys(k for n in splits for k in mf.split(n).sources))

    def check_stage(self, stage: str) -> list[str]:
        """Every problem that would stop ``stage`` for lack of data: unset placeholders,
        missing roots, missing index / label-map files (for ``af`` / ``eval``)."""
        problems = []
        unset: dict[str, list[str]] = {}
        for key in self.stage_sources(stage):
            names = [n for n in placeholders(self.data.sources[key].root)
                     if not (self.paths.get(n) or os.environ.get(n))]
            if names:
                for n in names:
                    unset.setdefault(n, []).append(f"data.sources.{key}.root")
                continue
            root = self.source_root(key)
            if not root.is_dir():
                problems.append(f"data.sources.{key}.root: {root} does not exist "
                                f"({self.data.sources[key].reader} data set root)")
        mf = self.data.modality_free
        if stage in ("af", "eval") and mf is not None:
            names = ("train", "test") if stage == "af" else ("test",)
            files = [("data.modality_free.label_map", mf.label_map)]
            files += [(f"data.modality_free.{n}.index", mf.split(n).index) for n in names]
            for where, value in files:
                try:
                    path = Path(self.expand(value, where)).expanduser()
                except DataRootError as exc:
                    problems.append(str(exc))
                    continue
                if not path.is_file():
                    problems.append(f"{where}: {path} does not exist (build it with "
                                    "`omnibind-train modality-free --config ... --split ...`)")
        for n, used in unset.items():
            problems.insert(0, f"{n} is not set (export {n}=... or --set paths.{n}=...); "
                               f"used by {', '.join(used)}")
        return list(dict.fromkeys(problems))

    def require_stage(self, stage: str) -> None:
        """:class:`DataRootError` listing every problem of :meth:`check_stage`, if any."""
        problems = self.check_stage(stage)
        if problems:
            raise DataRootError(f"stage {stage} cannot run: " + "; ".join(problems))

    # -- encoders --------------------------------------------------------------------------------

    def encoder_configs(self) -> dict[str, Any]:
        """Every configured modality's :class:`~omnibind_train.models.EncoderConfig` (open_clip
        specs read their checkpoint's shapes: :class:`DataRootError` when it is missing)."""
        from ..models.registry import EncoderConfig, get_encoder_config

        text_dim: int | None = None
        out: dict[str, EncoderConfig] = {}
        order = sorted(self.encoders, key=lambda m: m != "text")
        for m in order:
            spec = self.encoders[m]
            if isinstance(spec, str):
                cfg = get_encoder_config(spec)
            elif "open_clip" in spec:
                cfg = self._open_clip(m, spec, text_dim)
            else:
                data = {"modality": m, **spec}
                data = self._expand_trunk(m, data)
                if "embed_dim" not in spec and text_dim is not None:
                    data["embed_dim"] = text_dim
                cfg = EncoderConfig.from_dict(data)
            if m == "text":
                text_dim = int(cfg.embed_dim)
            out[m] = cfg
        if text_dim is not None:
            bad = {m: c.embed_dim for m, c in out.items() if c.embed_dim != text_dim}
            if bad:
                raise ValueError(f"encoders: embed_dim must be the text encoder's {text_dim} "
                                 f"(one shared space), got {bad}")
            if self.af.fusion.dim != text_dim:
                raise ValueError(f"af.fusion.dim is {self.af.fusion.dim} but the shared space "
                                 f"(the text encoder's embed_dim) is {text_dim}")
        for m, c in out.items():
            size = getattr(c.trunk, "image_size", None)
            if c.trunk.kind == "open_clip_vision" and size is not None:
                from omnibind_ros.core.preprocess import build_config

                want = build_config(m, self.data.preprocess.get(m) or None).to_dict().get("size")
                if want is not None and int(want) != int(size):
                    raise ValueError(f"encoders.{m}: the ViT takes {size} px inputs but "
                                     f"{m}'s preprocessing makes {want} px: set "
                                     f"data.preprocess.{m}.size: {size}")
        return out

    def _expand_trunk(self, m: str, data: dict[str, Any]) -> dict[str, Any]:
        trunk = dict(data.get("trunk", {}))
        for key in ("checkpoint", "tokenizer"):
            if isinstance(trunk.get(key), str):
                trunk[key] = self.expand(trunk[key], f"encoders.{m}.trunk.{key}")
        return {**data, "trunk": trunk}

    def _open_clip(self, m: str, spec: Mapping[str, Any], text_dim: int | None) -> Any:
        from ..models.registry import HeadConfig, open_clip_text_config, open_clip_vision_config

        path = Path(self.expand(str(spec["open_clip"]), f"encoders.{m}.open_clip")).expanduser()
        if not path.is_file():
            raise DataRootError(f"encoders.{m}.open_clip: checkpoint {path} does not exist")
        tower = spec.get("tower", "text" if m == "text" else "vision")
        act = spec.get("act", "quick_gelu")
        if tower == "text":
            tok = spec.get("tokenizer")
            tok = self.expand(tok, f"encoders.{m}.tokenizer") if isinstance(tok, str) else None
            cfg = open_clip_text_config(path, tokenizer=tok, act=act)
        else:
            head = spec.get("head", "mlp")
            head_cfg = HeadConfig(kind=head) if isinstance(head, str) else HeadConfig(**head)
            if head_cfg.kind == "identity":  # the tower's own space (the image teacher)
                from ..models.vit import infer_vision_config, read_checkpoint

                dim = int(infer_vision_config(read_checkpoint(path))["embed_dim"])
            else:
                dim = int(spec.get("embed_dim", text_dim or 0)) or None
            cfg = open_clip_vision_config(path, act=act, head=head_cfg,
                                          **({"embed_dim": dim} if dim else {}))
            cfg.modality = m
        if "frozen" in spec:
            cfg.trunk.frozen = bool(spec["frozen"])
        return cfg

    def pipeline_config(self, *, resolve_encoders: bool = True) -> Any:
        """A :class:`~.config.PipelineConfig` carrying this run's encoders, CAD and AF settings
        to the existing trainers and workspace (its ``data`` is the simulated default with this
        config's ``preprocess``; the real-data stages read the readers through
        :class:`~.paper_run.PaperRun`, which uses this workspace for encoders only)."""
        from ..data import DataConfig
        from .config import PipelineConfig

        encoders: dict[str, Any] = {}
        if resolve_encoders:
            for m, c in self.encoder_configs().items():
                d = c.to_dict()
                d.pop("modality")
                encoders[m] = d
        return PipelineConfig(name=self.name, seed=self.seed, cache_dir=self.cache_dir,
                              device=self.device, threads=self.threads, progress=self.progress,
                              data=DataConfig(preprocess=dict(self.data.preprocess)),
                              encoders=encoders, cad=self.cad, af=self.af,
                              baselines=list(self.baselines))


def _check_encoder_spec(m: str, spec: Any) -> str | None:
    from ..models.registry import TRUNK_KINDS, list_encoders

    if isinstance(spec, str):
        return None if spec in list_encoders() else (
            f"encoders.{m}: unknown registry name {spec!r}; registered: {list_encoders()}")
    if not isinstance(spec, Mapping):
        return f"encoders.{m}: expected a registry name or a mapping, got {spec!r}"
    if "open_clip" in spec:
        allowed = {"open_clip", "tower", "act", "head", "tokenizer", "frozen", "embed_dim"}
        bad = sorted(set(spec) - allowed)
        if bad:
            return f"encoders.{m}: unknown open_clip spec key(s) {bad}; allowed {sorted(allowed)}"
        if spec.get("tower", "text" if m == "text" else "vision") not in ("vision", "text"):
            return f"encoders.{m}.tower must be vision or text, got {spec.get('tower')!r}"
        return None
    trunk = spec.get("trunk")
    if not isinstance(trunk, Mapping) or trunk.get("kind") not in TRUNK_KINDS:
        return (f"encoders.{m}: an EncoderConfig dict needs trunk.kind in {list(TRUNK_KINDS)}, "
                f"got {trunk!r}")
    return None


# --- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m omnibind_train.pipeline.paper check``: validate the config and report every
    data root (and, with ``--encoders``, resolve the checkpoints); exit 2 on a problem."""
    parser = argparse.ArgumentParser(prog="python -m omnibind_train.pipeline.paper")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="validate the paper config and its data roots")
    p.add_argument("--config", default="training/configs/paper_omnibind.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--stage", default="all", help=f"one of {STAGES} or all")
    p.add_argument("--encoders", action="store_true", help="also resolve the encoders")
    args = parser.parse_args(argv)
    try:
        cfg = PaperOmniBindConfig.from_yaml(args.config, args.overrides)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.config}: valid ({len(cfg.data.sources)} sources, CAD students "
          f"{cfg.cad.students}, batch sizes "
          f"{ {m: cfg.cad.student_batch_size(m) for m in cfg.cad.students} })")
    stages = STAGES if args.stage == "all" else (args.stage,)
    failed = False
    for stage in stages:
        problems = cfg.check_stage(stage)
        print(f"[{stage}] " + ("ok" if not problems else f"{len(problems)} problem(s)"))
        for problem in problems:
            print(f"  - {problem}")
        failed |= bool(problems)
    if args.encoders:
        try:
            for m, c in cfg.encoder_configs().items():
                print(f"[encoders] {m}: {c.trunk.kind} -> {c.embed_dim}-d")
        except (ValueError, FileNotFoundError, KeyError) as exc:
            print(f"[encoders] {exc}")
            failed = True
    for key, text in WIRED.items():
        print(f"[wired] {key}: {text}")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
