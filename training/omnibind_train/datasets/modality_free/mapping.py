"""Label-level alignment across data sets (seed 000, Sec. 3.4 and appendix A.2), as a YAML file a
person reviews and edits.

The paper: "We initially align the labels of multiple datasets, as enumerated in Tab. 1, powered
by LLM [42]" and "we initially aligned the labels across seven modalities using the LLM
(ChatGPT-4) to ensure semantic correspondence between the categories ... This alignment ensures
that labels share identical meanings across modalities." The paper's LLM prompt and its
resulting label table are not published, so this module proposes the alignment from the *text
similarity of label names* in the text teacher's space and leaves the judgement to a person:

Proposal (:func:`propose_label_map`), the choices where the paper is silent:

* every label name of every source is made readable (``"car_horn"`` -> ``"car horn"``), put in
  ``label_template`` (default ``"a {}"``, with "a"/"an" agreement: on all-MiniLM-L6-v2 it
  separates "dog"/"cat" better than the bare name while keeping "airplane"/"airliner" close) and
  embedded;
* labels of *different* data sets are grouped by complete-linkage agglomeration over the pairs
  with cosine >= ``threshold`` (default 0.7), most similar pairs first, and a group never holds
  two labels of one data set ("identical meanings": an ESC-50 "dog" is not matched to every
  ImageNet dog breed). ImageNet-1K / N-ImageNet-1K and Caltech-101 / N-Caltech-101 share their
  label names, so their labels pair up at similarity 1;
* each group becomes a *target label*, named after its medoid member (the member with the
  highest mean similarity to the others), with each member's similarity to that name. Labels
  that matched nothing become single-data-set targets (they still make (sample, text) pairs);
* targets spanning more modalities come first, then by name.

The file (:meth:`LabelMap.write`; the format is documented in its header comment)::

    format: omnibind-modality-free-label-map
    version: 1
    reviewed: false            # a person sets true after checking every target
    encoder: registry:text_minilm_l6
    label_template: a {}
    threshold: 0.7
    datasets:                  # the label lists the map was made for (staleness check)
      esc50: {modality: audio, num_labels: 50, labels_sha1: 1f0c...}
      shapenetpart: {modality: point_cloud, num_labels: 16, labels_sha1: 9ab2...}
    targets:
    - name: airplane
      status: proposed         # proposed | accepted | rejected
      sources:
        esc50:
        - {label: airplane, similarity: 1.0}
        shapenetpart:
        - {label: Airplane, similarity: 1.0}

Labels are named by their label name; a name a data set repeats (ImageNet-1K's "crane" and
"maillot") gets a suffix, the synset id or the label index (:func:`~.sources.label_keys`).

Editing: set ``status`` (rejected targets are not used), rename a target, add or remove source
labels (a hand-added label may omit ``similarity``; several labels of one data set under one
target are allowed), set ``reviewed: true``. A source label may belong to one used target only.
A label left out of every target is simply not used; to keep it out when the map is recomputed,
list it under a rejected target.

Honouring edits (:func:`load_or_create_label_map`): an existing file is read and used as it is
(never recomputed over); it is checked against the sources and a mismatch raises
:class:`StaleLabelMapError` naming the data set and labels (a data set missing from the map, its
label list changed, a label the map names that the data set lacks). ``recompute=True`` re-proposes
only the undecided entries: every ``accepted``/``rejected`` target (every target once the file
says ``reviewed: true``) is kept verbatim, its labels are not proposed again, and new proposals
cover the remaining labels. A file that is not a valid map raises :class:`LabelMapError` with the
file and the entry at fault.
"""
from __future__ import annotations

import difflib
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .embedding import EncoderTextEmbedder, TextEmbedder, unique_embeddings
from .sources import (
    SOURCE_MODALITIES,
    LabelledSource,
    check_sources,
    label_fingerprint,
    label_keys,
    readable_label,
)

__all__ = ["DEFAULT_LABEL_TEMPLATE", "DEFAULT_THRESHOLD", "LABEL_MAP_FORMAT", "STATUSES",
           "DatasetEntry", "LabelMap", "LabelMapError", "SourceMatch", "StaleLabelMapError",
           "TargetLabel", "load_or_create_label_map", "propose_label_map"]

LABEL_MAP_FORMAT = "omnibind-modality-free-label-map"
LABEL_MAP_VERSION = 1
#: Target statuses: ``proposed`` (not yet reviewed; used unless a reviewed map is required),
#: ``accepted`` (used), ``rejected`` (not used).
STATUSES = ("proposed", "accepted", "rejected")
DEFAULT_THRESHOLD = 0.7
DEFAULT_LABEL_TEMPLATE = "a {}"

_HEADER = """\
# Label-level alignment of the modality-free data set (OmniBind, seed 000, Sec. 3.4 / A.2).
# Proposed from the text similarity of label names (encoder, template and threshold below);
# a person reviews it, and the builder uses this file as it stands:
#   status: accepted | rejected | proposed   (rejected targets are not used)
#   name:   the class name of the target (the built items' label)
#   sources: <data set>: [{label: <its label name, exactly>, similarity: <cosine or omitted>}]
#            add or remove labels freely; a label may belong to one used target only;
#            to keep a label out of every target, list it under a rejected target
#   reviewed: set true once every target is checked (a builder can require it)
# Recomputing (recompute=True) keeps accepted and rejected targets (all targets once
# reviewed: true) verbatim and re-proposes the rest. `datasets` records the label lists this
# map was made for: a changed list makes the map stale (an error, never a silent rebuild).
"""


class LabelMapError(ValueError):
    """A label map file is not valid (YAML, schema, a label used twice...)."""


class StaleLabelMapError(LabelMapError):
    """A label map does not fit the source data sets it is used with."""


@dataclass
class SourceMatch:
    """One source label under a target: its exact name in the data set and its similarity to the
    target name (None when a person added it)."""

    label: str
    similarity: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"label": self.label}
        if self.similarity is not None:
            d["similarity"] = round(float(self.similarity), 4)
        return d


@dataclass
class TargetLabel:
    """One class of the modality-free data set and the source labels it gathers."""

    name: str
    status: str = "proposed"
    sources: dict[str, list[SourceMatch]] = field(default_factory=dict)

    @property
    def used(self) -> bool:
        return self.status != "rejected"

    def claimed(self) -> Iterable[tuple[str, str]]:
        """``(data set, label)`` of every source label of this target."""
        for ds, matches in self.sources.items():
            for m in matches:
                yield ds, m.label

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status,
                "sources": {ds: [m.to_dict() for m in ms] for ds, ms in self.sources.items()}}


@dataclass
class DatasetEntry:
    """The label list a map was made for: modality, count and fingerprint."""

    modality: str
    num_labels: int
    labels_sha1: str

    @classmethod
    def of(cls, src: LabelledSource) -> DatasetEntry:
        return cls(str(src.modality), len(src.label_names), label_fingerprint(src.label_names))

    def to_dict(self) -> dict[str, Any]:
        return {"modality": self.modality, "num_labels": self.num_labels,
                "labels_sha1": self.labels_sha1}


@dataclass
class LabelMap:
    """The reviewed label-level alignment (see the module docstring for the file format)."""

    targets: list[TargetLabel]
    datasets: dict[str, DatasetEntry]
    reviewed: bool = False
    encoder: str = ""
    label_template: str = DEFAULT_LABEL_TEMPLATE
    threshold: float = DEFAULT_THRESHOLD
    path: Path | None = field(default=None, compare=False)

    # -- queries ---------------------------------------------------------------------------------
    def used_targets(self) -> list[TargetLabel]:
        """Targets that are not rejected, in file order (their index is the class index)."""
        return [t for t in self.targets if t.used]

    def sha256(self) -> str:
        """sha256 of the canonical YAML text (the index header records it)."""
        return hashlib.sha256(self.to_yaml().encode("utf-8")).hexdigest()

    # -- (de)serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": LABEL_MAP_FORMAT, "version": LABEL_MAP_VERSION,
                "reviewed": bool(self.reviewed), "encoder": self.encoder,
                "label_template": self.label_template, "threshold": float(self.threshold),
                "datasets": {k: v.to_dict() for k, v in self.datasets.items()},
                "targets": [t.to_dict() for t in self.targets]}

    def to_yaml(self) -> str:
        import yaml

        return _HEADER + yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True,
                                        default_flow_style=None, width=100)

    def write(self, path: str | Path) -> Path:
        """Write the map (header comment + YAML) to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml(), encoding="utf-8")
        self.path = path
        return path

    @classmethod
    def read(cls, path: str | Path) -> LabelMap:
        """Read and validate a map file (:class:`LabelMapError` naming the file and entry)."""
        import yaml

        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise LabelMapError(f"label map {path} does not exist") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise LabelMapError(f"label map {path}: not valid YAML ({exc})") from exc
        out = cls.from_dict(data, where=str(path))
        out.path = path
        return out

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "label map") -> LabelMap:
        """Validate the parsed YAML of a map; :class:`LabelMapError` on anything malformed."""
        def fail(msg: str) -> LabelMapError:
            return LabelMapError(f"label map {where}: {msg}")

        if not isinstance(data, dict):
            raise fail(f"expected a mapping at the top level, got {type(data).__name__}")
        if data.get("format") != LABEL_MAP_FORMAT:
            raise fail(f"format must be {LABEL_MAP_FORMAT!r}, got {data.get('format')!r}")
        if data.get("version") != LABEL_MAP_VERSION:
            raise fail(f"version {data.get('version')!r} is not supported (expected "
                       f"{LABEL_MAP_VERSION})")
        unknown = sorted(set(data) - {"format", "version", "reviewed", "encoder",
                                      "label_template", "threshold", "datasets", "targets"})
        if unknown:
            raise fail(f"unknown keys {unknown}")
        reviewed = data.get("reviewed", False)
        if not isinstance(reviewed, bool):
            raise fail(f"reviewed must be true or false, got {reviewed!r}")
        threshold = data.get("threshold", DEFAULT_THRESHOLD)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise fail(f"threshold must be a number, got {threshold!r}")
        datasets_raw = data.get("datasets")
        if not isinstance(datasets_raw, dict) or not datasets_raw:
            raise fail("datasets must be a non-empty mapping of data set -> {modality, "
                       "num_labels, labels_sha1}")
        datasets: dict[str, DatasetEntry] = {}
        for key, entry in datasets_raw.items():
            if not isinstance(entry, dict) or set(entry) != {"modality", "num_labels",
                                                              "labels_sha1"}:
                raise fail(f"datasets.{key} must have exactly modality, num_labels and "
                           f"labels_sha1, got {entry!r}")
            if entry["modality"] not in SOURCE_MODALITIES:
                raise fail(f"datasets.{key}.modality {entry['modality']!r} is not one of "
                           f"{list(SOURCE_MODALITIES)}")
            if isinstance(entry["num_labels"], bool) or not isinstance(entry["num_labels"], int):
                raise fail(f"datasets.{key}.num_labels must be an integer")
            datasets[str(key)] = DatasetEntry(entry["modality"], entry["num_labels"],
                                              str(entry["labels_sha1"]))
        targets_raw = data.get("targets")
        if not isinstance(targets_raw, list):
            raise fail("targets must be a list")
        targets: list[TargetLabel] = []
        names: dict[str, int] = {}
        owner: dict[tuple[str, str], str] = {}
        for i, t in enumerate(targets_raw):
            at = f"targets[{i}]"
            if not isinstance(t, dict):
                raise fail(f"{at} must be a mapping with name, status, sources")
            extra = sorted(set(t) - {"name", "status", "sources"})
            if extra:
                raise fail(f"{at}: unknown keys {extra}")
            name = t.get("name")
            if not isinstance(name, str) or not name.strip():
                raise fail(f"{at}: name must be a non-empty string, got {name!r}")
            at = f"targets[{i}] ({name!r})"
            if name in names:
                raise fail(f"{at}: name also used by targets[{names[name]}]")
            names[name] = i
            status = t.get("status", "proposed")
            if status not in STATUSES:
                raise fail(f"{at}: status must be one of {list(STATUSES)}, got {status!r}")
            sources_raw = t.get("sources")
            if not isinstance(sources_raw, dict) or not sources_raw:
                raise fail(f"{at}: sources must be a non-empty mapping of data set -> list of "
                           "{label, similarity}")
            sources: dict[str, list[SourceMatch]] = {}
            for ds, matches in sources_raw.items():
                if ds not in datasets:
                    raise fail(f"{at}: data set {ds!r} is not declared under datasets "
                               f"({sorted(datasets)})")
                if not isinstance(matches, list) or not matches:
                    raise fail(f"{at}: sources.{ds} must be a non-empty list (remove the data "
                               "set to drop it)")
                parsed = []
                for j, m in enumerate(matches):
                    where_m = f"{at}: sources.{ds}[{j}]"
                    if isinstance(m, str):  # a bare label name added by hand
                        m = {"label": m}
                    if not isinstance(m, dict) or not isinstance(m.get("label"), str) \
                            or set(m) - {"label", "similarity"}:
                        raise fail(f"{where_m} must be {{label: <name>, similarity: <number>}}, "
                                   f"got {m!r}")
                    sim = m.get("similarity")
                    if sim is not None and (isinstance(sim, bool)
                                            or not isinstance(sim, int | float)):
                        raise fail(f"{where_m}: similarity must be a number, got {sim!r}")
                    parsed.append(SourceMatch(m["label"], None if sim is None else float(sim)))
                labels = [p.label for p in parsed]
                if len(set(labels)) != len(labels):
                    raise fail(f"{at}: sources.{ds} lists a label twice")
                sources[str(ds)] = parsed
            target = TargetLabel(name, status, sources)
            if target.used:
                for key in target.claimed():
                    if key in owner:
                        raise fail(f"{at}: {key[0]} label {key[1]!r} is also under target "
                                   f"{owner[key]!r} (a label may belong to one used target)")
                    owner[key] = name
            targets.append(target)
        return cls(targets=targets, datasets=datasets, reviewed=reviewed,
                   encoder=str(data.get("encoder", "")),
                   label_template=str(data.get("label_template", DEFAULT_LABEL_TEMPLATE)),
                   threshold=float(threshold))

    # -- staleness --------------------------------------------------------------------------------
    def check_sources(self, sources: Mapping[str, LabelledSource]) -> None:
        """Raise :class:`StaleLabelMapError` unless the map fits ``sources``.

        Every source must be declared under ``datasets`` with its modality and the same label
        list (count + fingerprint), and every label a target names for a given source must be
        one of its label names. Data sets of the map that are not among ``sources`` are allowed
        (building from a subset); their entries are simply not used.
        """
        where = f"label map {self.path}" if self.path else "label map"
        for key, src in sources.items():
            entry = self.datasets.get(key)
            if entry is None:
                raise StaleLabelMapError(
                    f"{where} was made without data set {key!r} (it has {sorted(self.datasets)});"
                    " recompute it (recompute=True keeps the decided entries) or drop the source")
            now = DatasetEntry.of(src)
            if entry.modality != now.modality:
                raise StaleLabelMapError(f"{where}: data set {key!r} is {now.modality} now, the "
                                         f"map says {entry.modality}")
            if entry.labels_sha1 != now.labels_sha1:
                used = sorted({lab for t in self.targets for ds, lab in t.claimed() if ds == key})
                gone = [lab for lab in used if lab not in set(label_keys(src))]
                raise StaleLabelMapError(
                    f"{where} is stale for data set {key!r}: made for {entry.num_labels} labels "
                    f"(sha1 {entry.labels_sha1[:12]}), the data set has {now.num_labels} "
                    f"(sha1 {now.labels_sha1[:12]})"
                    + (f"; labels the map names that are gone: {gone[:10]}" if gone else "")
                    + "; recompute it (recompute=True keeps the decided entries)")
        self._check_labels_exist(sources, where)

    def _check_labels_exist(self, sources: Mapping[str, LabelledSource], where: str) -> None:
        for i, t in enumerate(self.targets):
            for ds, lab in t.claimed():
                if ds not in sources:
                    continue
                names = list(label_keys(sources[ds]))
                if lab not in names:
                    near = difflib.get_close_matches(lab, names, n=3)
                    raise StaleLabelMapError(
                        f"{where}: targets[{i}] ({t.name!r}): data set {ds!r} has no label "
                        f"{lab!r}" + (f" (close: {near})" if near else ""))


# --- proposal ----------------------------------------------------------------------------------
def _label_texts(names: Sequence[str], template: str) -> list[str]:
    from omnibind_ros.sim.text import label_prompts

    readable = [readable_label(n) for n in names]
    prompts = label_prompts(sorted(set(readable)), [template])
    return [prompts[r][0] for r in readable]


def propose_label_map(sources: Mapping[str, LabelledSource],
                      embedder: TextEmbedder | None = None, *,
                      threshold: float = DEFAULT_THRESHOLD,
                      label_template: str = DEFAULT_LABEL_TEMPLATE,
                      keep: LabelMap | None = None) -> LabelMap:
    """Propose the label-level alignment of ``sources`` (module docstring: the algorithm).

    Parameters
    ----------
    sources : ``{data set key: reader}``.
    embedder : the text space (default: :class:`EncoderTextEmbedder` on ``text_minilm_l6``).
    threshold : minimum cosine between every two labels of one target (complete linkage).
    label_template : how a label name is phrased before embedding (one ``{}``).
    keep : an earlier map whose decided targets (accepted / rejected; all once it is reviewed)
        are kept verbatim and whose labels are not proposed again.

    Returns
    -------
    The new map (not written; ``reviewed`` stays true only if nothing new was proposed).
    """
    sources = check_sources(sources)
    if label_template.count("{}") != 1:
        raise ValueError(f"label_template needs exactly one '{{}}', got {label_template!r}")
    embedder = embedder if embedder is not None else EncoderTextEmbedder()
    kept: list[TargetLabel] = []
    if keep is not None:
        kept = [t for t in keep.targets if keep.reviewed or t.status != "proposed"]
        kept_map = LabelMap(kept, dict(keep.datasets), path=keep.path)
        kept_map._check_labels_exist(sources, f"label map {keep.path or ''}".strip())
    claimed = {key for t in kept for key in t.claimed()}

    # (data set, label key, label name) of every label not claimed by a kept target
    nodes: list[tuple[str, str, str]] = [
        (ds, key, str(name)) for ds, src in sources.items()
        for key, name in zip(label_keys(src), src.label_names, strict=True)
        if (ds, key) not in claimed]
    ds_order = {ds: k for k, ds in enumerate(sources)}
    targets: list[TargetLabel] = []
    if nodes:
        emb, inv = unique_embeddings(embedder, _label_texts([n for *_, n in nodes],
                                                            label_template))
        vec = emb[inv]
        groups = _complete_linkage(vec, [node[0] for node in nodes], threshold)
        taken = {t.name for t in kept}
        for members in groups:
            sim = vec[members] @ vec[members].T
            mean = sim.mean(axis=1)
            medoid = members[int(np.lexsort((
                [ds_order[nodes[m][0]] for m in members], -mean))[0])]
            name = readable_label(nodes[medoid][2])
            if name in taken:
                name = f"{name} ({nodes[medoid][0]})"
            k = 2
            base = name
            while name in taken:
                name, k = f"{base} {k}", k + 1
            taken.add(name)
            src_map: dict[str, list[SourceMatch]] = {}
            for m in sorted(members, key=lambda m: (ds_order[nodes[m][0]], nodes[m][1])):
                s = round(float(np.clip(vec[m] @ vec[medoid], -1.0, 1.0)), 4)  # as written
                src_map.setdefault(nodes[m][0], []).append(SourceMatch(nodes[m][1], s))
            targets.append(TargetLabel(name, "proposed", src_map))
        targets.sort(key=lambda t: (-len({sources[ds].modality for ds in t.sources}),
                                    -len(t.sources), t.name))
    datasets = dict(keep.datasets) if keep is not None else {}
    datasets.update({ds: DatasetEntry.of(src) for ds, src in sources.items()})
    reviewed = bool(keep is not None and keep.reviewed and not targets)
    return LabelMap(targets=kept + targets, datasets=datasets, reviewed=reviewed,
                    encoder=embedder.identity, label_template=label_template,
                    threshold=float(threshold))


def _complete_linkage(vec: np.ndarray, dataset_of: Sequence[str], threshold: float
                      ) -> list[list[int]]:
    """Groups of node indices: pairs of different data sets with cosine >= threshold are merged
    most similar first, when the merged group keeps one label per data set and every pair in it
    stays >= threshold. Deterministic (ties broken by index)."""
    n = len(dataset_of)
    ds_codes = np.unique(np.asarray(dataset_of, dtype=object).astype(str), return_inverse=True)[1]
    sim = vec @ vec.T
    iu, ju = np.triu_indices(n, k=1)
    s = sim[iu, ju]
    keep = (s >= threshold) & (ds_codes[iu] != ds_codes[ju])
    iu, ju, s = iu[keep], ju[keep], s[keep]
    order = np.lexsort((ju, iu, -s))
    group = list(range(n))
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    dsets: dict[int, set[int]] = {i: {int(ds_codes[i])} for i in range(n)}
    for k in order:
        a, b = group[iu[k]], group[ju[k]]
        if a == b or dsets[a] & dsets[b]:
            continue
        if sim[np.ix_(members[a], members[b])].min() < threshold:
            continue
        for m in members[b]:
            group[m] = a
        members[a] += members.pop(b)
        dsets[a] |= dsets.pop(b)
    return [sorted(ms) for _, ms in sorted(members.items())]


def load_or_create_label_map(path: str | Path, sources: Mapping[str, LabelledSource],
                             embedder: TextEmbedder | None = None, *,
                             threshold: float = DEFAULT_THRESHOLD,
                             label_template: str = DEFAULT_LABEL_TEMPLATE,
                             recompute: bool = False) -> LabelMap:
    """The label map at ``path``: created (proposed and written for review) if absent, read and
    honoured as it stands if present.

    Parameters
    ----------
    path : the YAML file.
    sources : ``{data set key: reader}``.
    embedder, threshold, label_template : see :func:`propose_label_map` (used when proposing).
    recompute : re-propose the undecided targets of an existing file (decided ones are kept
        verbatim) and rewrite it.

    Raises
    ------
    LabelMapError
        The file is malformed.
    StaleLabelMapError
        The file does not fit ``sources`` (and ``recompute`` is False).
    """
    path = Path(path)
    sources = check_sources(sources)
    if path.exists():
        existing = LabelMap.read(path)
        if not recompute:
            existing.check_sources(sources)
            return existing
        fresh = propose_label_map(sources, embedder, threshold=threshold,
                                  label_template=label_template, keep=existing)
    else:
        fresh = propose_label_map(sources, embedder, threshold=threshold,
                                  label_template=label_template)
    fresh.write(path)
    return fresh
