"""The modality-free combination index (seed 000, Sec. 3.4, Fig. 4 and appendix A.2).

The paper: "our dataset consists of 50,080 samples of modality combinations, with the most
prevalent combinations being two modalities, accounting for 46%. The proportions for
three-modal, four-modal, and five-modal combinations are 15%, 16%, and 17%, respectively."
Items are built in two levels: label-level alignment (:mod:`.mapping`), then "we generate the
descriptions for all the data samples via MLLM and match the data samples with the same
semantics of the descriptions" (:mod:`.describe`).

What the paper leaves open and what is chosen here:

* **The remaining 6 %.** The four stated shares sum to 94 %. :data:`DEFAULT_PROPORTIONS` keeps
  them as stated and gives the remaining 6 % to single-modality items -- the reading
  ``omnibind_ros.sim`` already uses for the simulated world's modality-free index -- rather
  than to six- or seven-modality items, which the nine data sets can barely form (seven needs
  LLVIP's person/background labels in every other data set; Tables 3, 8 and 12 evaluate 2-5
  modalities only). ``proportions`` takes any ``{size: weight}``; weights are normalised, so
  :data:`PAPER_STATED_PROPORTIONS` gives the 2-5-only reading (48.9/16.0/17.0/18.1 %).
* **Exact shares.** The number of items of each size is fixed by largest-remainder rounding of
  ``proportions x num_items`` (the paper reports its data set's shares, not a sampling rate);
  the sizes are then shuffled.
* **Text is a modality** (Tables 2, 3 and 11 combine "Text" with the others). An item's text is
  the description of its anchor sample (below); single-modality items never are text alone.
* **How one item is drawn** (seeded ``numpy`` generator; deterministic for a seed, sources and
  label map):

  1. its size k (above);
  2. its target label, uniformly among the labels whose samples span >= k modalities (text
     included): balanced over categories, as Fig. 7's "equalization of our dataset among
     categories" reports;
  3. its modality set, uniformly among that label's k-subsets of modalities;
  4. an anchor modality (uniform among the item's non-text ones) and an anchor sample, taken
     in a seeded cyclic order over the label's samples of that modality (pooled over the data
     sets of that modality), so every sample is used before any is reused;
  5. sample-level matching: for every other modality, the samples of the label whose
     description embedding is within ``margin`` (cosine) of the best match to the anchor's
     description; among those the least used so far, ties broken at random. With the default
     label-template descriptions all samples of a source label tie, and this spreads items
     evenly over them; with a captioner the closest captions win.

Output (:meth:`ModalityFreeIndex.write`) is one JSON-lines file: the first line is the header
(format, version, seed, proportions, the size counts reached, label names in class-index order,
the label map's path / sha256 / reviewed flag, describer and embedder identities, and every
source's reader, root, selection, size and label fingerprints), then one line per item::

    {"item": 0, "label": "airplane", "label_index": 3, "size": 3, "anchor": "audio",
     "modalities": ["text", "audio", "point_cloud"],
     "members": [{"modality": "text", "text": "the sound of an airplane."},
                 {"modality": "audio", "dataset": "esc50", "index": 17,
                  "source_label": "airplane", "similarity": 1.0},
                 {"modality": "point_cloud", "dataset": "shapenetpart", "index": 402,
                  "source_label": "Airplane", "similarity": 0.83}]}

``index`` is the position in that source's reader (``reader[index]``), ``source_label`` the
sample's label as the label map names it (its label name; a name the data set repeats gets a
suffix, :func:`~.sources.label_keys`), ``similarity`` the cosine between the member's and the
anchor's description embeddings. JSON lines were chosen
over parquet/npz: no extra dependency, readable and diffable, streams line by line;
``pandas.read_json(path, lines=True).iloc[1:]`` reads the items.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .describe import LabelTemplateDescriber, SampleDescriber
from .embedding import EncoderTextEmbedder, TextEmbedder, unique_embeddings
from .mapping import (
    DEFAULT_LABEL_TEMPLATE,
    DEFAULT_THRESHOLD,
    LabelMap,
    load_or_create_label_map,
)
from .sources import MODALITY_ORDER, LabelledSource, check_sources, label_keys, source_summary

__all__ = ["DEFAULT_PROPORTIONS", "INDEX_FORMAT", "PAPER_NUM_ITEMS", "PAPER_STATED_PROPORTIONS",
           "ModalityFreeBuildError", "ModalityFreeIndex", "StaleIndexError",
           "build_modality_free_index", "read_modality_free_index", "size_quotas"]

INDEX_FORMAT = "omnibind-modality-free-index"
INDEX_VERSION = 1
#: Items in the paper's modality-free data set (Sec. 3.4).
PAPER_NUM_ITEMS = 50_080
#: The shares the paper states (Sec. 3.4): 2: 46 %, 3: 15 %, 4: 16 %, 5: 17 % (sum 94 %).
PAPER_STATED_PROPORTIONS: dict[int, float] = {2: 0.46, 3: 0.15, 4: 0.16, 5: 0.17}
#: The default: the stated shares exactly, the unstated 6 % as single-modality items.
DEFAULT_PROPORTIONS: dict[int, float] = {1: 0.06, **PAPER_STATED_PROPORTIONS}
TEXT = "text"


class ModalityFreeBuildError(ValueError):
    """The index cannot be built as asked (e.g. no label spans the modalities a size needs)."""


class StaleIndexError(ValueError):
    """An index file does not fit the sources it is read with, or is not an index."""


def size_quotas(num_items: int, proportions: Mapping[int, float]) -> dict[int, int]:
    """Items of each combination size: largest-remainder rounding of the normalised
    ``proportions`` x ``num_items`` (ties to the smaller size). Sums to ``num_items``."""
    if num_items < 0:
        raise ValueError(f"num_items must be >= 0, got {num_items}")
    props = {int(k): float(v) for k, v in proportions.items()}
    if not props or any(k < 1 or k > len(MODALITY_ORDER) for k in props) \
            or any(not math.isfinite(v) or v < 0 for v in props.values()) \
            or sum(props.values()) <= 0:
        raise ValueError(f"proportions must map sizes 1..{len(MODALITY_ORDER)} to non-negative "
                         f"weights with a positive sum, got {dict(proportions)}")
    total = sum(props.values())
    exact = {k: num_items * v / total for k, v in props.items()}
    quotas = {k: int(math.floor(x)) for k, x in exact.items()}
    left = num_items - sum(quotas.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - quotas[k]), k))[:left]:
        quotas[k] += 1
    return dict(sorted(quotas.items()))


@dataclass
class ModalityFreeIndex:
    """A built combination index: the header and one dict per item (module docstring)."""

    header: dict[str, Any]
    items: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.items)

    @property
    def label_names(self) -> list[str]:
        return list(self.header["labels"])

    def size_counts(self) -> dict[int, int]:
        """``{combination size: items}`` measured on the items."""
        counts: dict[int, int] = {}
        for it in self.items:
            counts[len(it["modalities"])] = counts.get(len(it["modalities"]), 0) + 1
        return dict(sorted(counts.items()))

    def size_proportions(self) -> dict[int, float]:
        """``{combination size: share of the items}`` measured on the items."""
        n = max(len(self.items), 1)
        return {k: v / n for k, v in self.size_counts().items()}

    def member_arrays(self) -> dict[str, dict[str, np.ndarray]]:
        """Per modality, aligned with the items: ``{"dataset": object [N] ("" where absent),
        "index": int64 [N] (-1 where absent), "present": bool [N]}``, and for ``"text"`` a
        ``"text"`` object array (None where absent); plus ``"label"``: ``{"index": int64 [N]}``.
        What a feature-gathering step needs to stack cached per-source embeddings into
        ``[N, modalities, D]`` with a presence mask for the AF stage."""
        n = len(self.items)
        out: dict[str, dict[str, np.ndarray]] = {
            "label": {"index": np.asarray([it["label_index"] for it in self.items],
                                          dtype=np.int64)}}
        for m in MODALITY_ORDER:
            if m == TEXT:
                out[m] = {"text": np.full(n, None, dtype=object),
                          "present": np.zeros(n, dtype=bool)}
            else:
                out[m] = {"dataset": np.full(n, "", dtype=object),
                          "index": np.full(n, -1, dtype=np.int64),
                          "present": np.zeros(n, dtype=bool)}
        for r, it in enumerate(self.items):
            for mem in it["members"]:
                slot = out[mem["modality"]]
                slot["present"][r] = True
                if mem["modality"] == TEXT:
                    slot["text"][r] = mem["text"]
                else:
                    slot["dataset"][r], slot["index"][r] = mem["dataset"], mem["index"]
        return out

    def combination_counts(self) -> dict[tuple[str, ...], int]:
        """``{modality set: items}``, most frequent first."""
        counts: dict[tuple[str, ...], int] = {}
        for it in self.items:
            key = tuple(it["modalities"])
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def write(self, path: str | Path) -> Path:
        """Write the header line and one line per item (JSON lines)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write(json.dumps(self.header, sort_keys=True) + "\n")
            for it in self.items:
                f.write(json.dumps(it, separators=(",", ":")) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: str | Path,
             sources: Mapping[str, LabelledSource] | None = None) -> ModalityFreeIndex:
        """Read an index file; with ``sources``, check they are the ones it was built from
        (:class:`StaleIndexError` naming the data set otherwise)."""
        path = Path(path)
        with path.open(encoding="utf-8") as f:
            first = f.readline()
            try:
                header = json.loads(first) if first.strip() else None
            except json.JSONDecodeError:
                header = None
            if not isinstance(header, dict) or header.get("format") != INDEX_FORMAT:
                raise StaleIndexError(f"{path} is not a modality-free index (no {INDEX_FORMAT} "
                                      "header line)")
            if header.get("version") != INDEX_VERSION:
                raise StaleIndexError(f"{path}: index version {header.get('version')!r} is not "
                                      f"supported (expected {INDEX_VERSION})")
            items = [json.loads(line) for line in f if line.strip()]
        if len(items) != header.get("num_items"):
            raise StaleIndexError(f"{path}: {len(items)} items, the header says "
                                  f"{header.get('num_items')} (truncated file?)")
        index = cls(header, items)
        if sources is not None:
            index.check_sources(sources, where=str(path))
        return index

    def check_sources(self, sources: Mapping[str, LabelledSource], *,
                      where: str = "index") -> None:
        """Raise :class:`StaleIndexError` unless every data set the index uses is among
        ``sources`` with the same modality, size, label names and per-sample labels."""
        recorded = self.header.get("sources", {})
        for key, rec in recorded.items():
            if key not in sources:
                raise StaleIndexError(f"{where} uses data set {key!r}, which is not given")
            now = source_summary(sources[key])
            for field_name in ("modality", "num_samples", "labels_sha1", "samples_sha1"):
                if rec.get(field_name) != now[field_name]:
                    raise StaleIndexError(
                        f"{where} is stale for data set {key!r}: {field_name} was "
                        f"{rec.get(field_name)!r} when it was built, now {now[field_name]!r}")


def read_modality_free_index(path: str | Path,
                             sources: Mapping[str, LabelledSource] | None = None
                             ) -> ModalityFreeIndex:
    """:meth:`ModalityFreeIndex.read`."""
    return ModalityFreeIndex.read(path, sources)


class _Pool:
    """The samples of one target label in one modality, pooled over data sets."""

    def __init__(self, datasets: np.ndarray, indices: np.ndarray, texts: np.ndarray,
                 rows: np.ndarray, rng: np.random.Generator) -> None:
        # per sample: data set key, index in its reader, description (index into the texts),
        # row of the description's embedding
        self.datasets, self.indices, self.texts, self.rows = datasets, indices, texts, rows
        self.uniq, self.inverse = np.unique(rows, return_inverse=True)
        self.inverse = self.inverse.reshape(-1)
        self.usage = np.zeros(len(rows), dtype=np.int64)
        self._rng = rng
        self._order = np.zeros(0, dtype=np.int64)
        self._next = 0

    def __len__(self) -> int:
        return len(self.rows)

    def next_anchor(self) -> int:
        """Next position in a seeded cyclic order (a fresh permutation per cycle)."""
        if self._next >= len(self._order):
            self._order = self._rng.permutation(len(self.rows))
            self._next = 0
        pos = int(self._order[self._next])
        self._next += 1
        self.usage[pos] += 1
        return pos

    def best_match(self, anchor_vec: np.ndarray, emb: np.ndarray, margin: float
                   ) -> tuple[int, float]:
        """Position of the least-used sample among those within ``margin`` of the best
        description similarity to ``anchor_vec`` (random among ties), and its similarity."""
        sims_u = emb[self.uniq] @ anchor_vec
        sims = sims_u[self.inverse]
        close = np.flatnonzero(sims >= sims_u.max() - margin)
        use = self.usage[close]
        least = close[use == use.min()]
        pos = int(least[self._rng.integers(len(least))]) if len(least) > 1 else int(least[0])
        self.usage[pos] += 1
        return pos, float(sims[pos])


def build_modality_free_index(
        sources: Mapping[str, LabelledSource], label_map: LabelMap | str | Path,
        out_path: str | Path | None = None, *,
        embedder: TextEmbedder | None = None,
        describer: SampleDescriber | None = None,
        num_items: int = PAPER_NUM_ITEMS,
        proportions: Mapping[int, float] = DEFAULT_PROPORTIONS,
        include_text: bool = True,
        margin: float = 0.05,
        seed: int = 0,
        require_reviewed: bool = False,
        threshold: float = DEFAULT_THRESHOLD,
        label_template: str = DEFAULT_LABEL_TEMPLATE) -> ModalityFreeIndex:
    """Build the modality-free combination index (module docstring: every choice).

    Parameters
    ----------
    sources : ``{data set key: reader}`` (one split: build train and test indices separately,
        from the train and test readers, so no sample crosses splits).
    label_map : a :class:`LabelMap`, or the path of its YAML file: created there for review
        when absent (from ``threshold`` / ``label_template``), used as edited when present
        (:func:`~.mapping.load_or_create_label_map`; a stale or malformed file is an error).
    out_path : where to write the index (JSON lines), or None to only return it.
    embedder : text space of the label names and descriptions (default: ``text_minilm_l6``).
    describer : sample descriptions (default: :class:`LabelTemplateDescriber`).
    num_items : items to draw (default: the paper's 50,080).
    proportions : ``{combination size: weight}`` (normalised; default
        :data:`DEFAULT_PROPORTIONS`).
    include_text : count text as a modality of the items (the paper's combinations do).
    margin : cosine margin of sample-level matching (step 5).
    seed : seeds every random choice.
    require_reviewed : refuse a label map whose ``reviewed`` flag is false.
    threshold, label_template : label-map proposal settings when the file is created.

    Raises
    ------
    ModalityFreeBuildError
        A size with a positive share that no target label can form, or no usable label.
    LabelMapError, StaleLabelMapError
        The label map is malformed, unreviewed (with ``require_reviewed``) or stale.
    """
    from .mapping import LabelMapError

    sources = check_sources(sources)
    embedder = embedder if embedder is not None else EncoderTextEmbedder()
    describer = describer if describer is not None else LabelTemplateDescriber()
    if isinstance(label_map, LabelMap):
        lmap = label_map
        lmap.check_sources(sources)
    else:
        lmap = load_or_create_label_map(label_map, sources, embedder, threshold=threshold,
                                        label_template=label_template)
    if require_reviewed and not lmap.reviewed:
        raise LabelMapError(f"label map {lmap.path or ''} is not reviewed (reviewed: false); "
                            "check its targets and set reviewed: true")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    quotas = size_quotas(int(num_items), proportions)
    max_size = len(MODALITY_ORDER) if include_text else len(MODALITY_ORDER) - 1
    if any(k > max_size and q for k, q in quotas.items()):
        raise ModalityFreeBuildError(f"sizes above {max_size} are impossible "
                                     f"(include_text={include_text}): {quotas}")
    rng = np.random.default_rng(int(seed))
    keys = sorted(sources)
    targets = lmap.used_targets()

    # -- label level: each target's samples per modality --------------------------------------
    # readers' ``labels`` is a copy: read once per data set (ImageNet: 1.28 M labels)
    labels_of = {ds: np.asarray(sources[ds].labels, dtype=np.int64) for ds in keys}
    keys_of = {ds: label_keys(sources[ds]) for ds in keys}
    by_label: dict[str, tuple[dict[str, int], np.ndarray, np.ndarray]] = {}
    for ds in keys:  # samples grouped by label once per data set
        labels = labels_of[ds]
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(len(sources[ds].label_names) + 1))
        names = {key: k for k, key in enumerate(label_keys(sources[ds]))}
        by_label[ds] = (names, order, bounds)
    members: dict[int, dict[str, list[tuple[str, np.ndarray]]]] = {}
    for c, t in enumerate(targets):
        for ds in keys:
            if ds not in t.sources:
                continue
            names, order, bounds = by_label[ds]
            ks = [names[m.label] for m in t.sources[ds]]
            idx = np.sort(np.concatenate([order[bounds[k]:bounds[k + 1]] for k in ks]))
            if idx.size:
                modality = str(sources[ds].modality)
                members.setdefault(c, {}).setdefault(modality, []).append((ds, idx))
    if not members:
        raise ModalityFreeBuildError("no used target label of the label map has samples in the "
                                     f"given sources ({keys})")

    # -- descriptions, embedded once per distinct text ----------------------------------------
    collected: dict[str, list[np.ndarray]] = {}
    for per_mod in members.values():
        for parts in per_mod.values():
            for ds, idx in parts:
                collected.setdefault(ds, []).append(idx)
    used_idx = {ds: np.unique(np.concatenate(parts)) for ds, parts in collected.items()}
    texts: list[str] = []
    offsets: dict[str, int] = {}
    for ds in keys:
        if ds in used_idx:
            offsets[ds] = len(texts)
            described = describer.describe(ds, sources[ds], used_idx[ds].tolist())
            if len(described) != len(used_idx[ds]):
                raise ModalityFreeBuildError(f"describer returned {len(described)} descriptions "
                                             f"for {len(used_idx[ds])} samples of {ds!r}")
            texts.extend(str(d) for d in described)
    emb, text_row = unique_embeddings(embedder, texts)

    def rows_of(ds: str, idx: np.ndarray) -> np.ndarray:
        return offsets[ds] + np.searchsorted(used_idx[ds], idx)

    pools: dict[int, dict[str, _Pool]] = {}
    for c in sorted(members):
        for m in MODALITY_ORDER:
            parts = members[c].get(m)
            if not parts:
                continue
            ds_arr = np.concatenate([np.full(len(idx), ds, dtype=object) for ds, idx in parts])
            idx_arr = np.concatenate([idx for _, idx in parts])
            desc = np.concatenate([rows_of(ds, idx) for ds, idx in parts])
            pools.setdefault(c, {})[m] = _Pool(ds_arr, idx_arr, desc, text_row[desc], rng)

    available = {c: [m for m in MODALITY_ORDER if m in pools[c] or (include_text and m == TEXT)]
                 for c in pools}
    eligible: dict[int, list[int]] = {}
    for k, q in quotas.items():
        if not q:
            continue
        # every label has a non-text modality, so all can form single-modality items
        eligible[k] = [c for c in sorted(pools) if len(available[c]) >= k]
        if not eligible[k]:
            most = max(len(v) for v in available.values())
            raise ModalityFreeBuildError(
                f"no target label spans {k} modalities (the most any spans is {most}, text "
                f"{'included' if include_text else 'excluded'}); {q} items of size {k} were "
                "asked: lower that proportion, add sources, or merge more labels in the map")

    # -- items ------------------------------------------------------------------------------------
    sizes = rng.permutation(np.repeat(np.asarray(list(quotas), dtype=np.int64),
                                      np.asarray(list(quotas.values()), dtype=np.int64)))
    items: list[dict[str, Any]] = []
    for n, k in enumerate(sizes.tolist()):
        c = eligible[k][int(rng.integers(len(eligible[k])))]
        choices = available[c] if k > 1 else [m for m in available[c] if m != TEXT]
        picked = set(rng.choice(len(choices), size=k, replace=False).tolist())
        mods = [m for i, m in enumerate(choices) if i in picked]
        non_text = [m for m in mods if m != TEXT]
        anchor_mod = non_text[int(rng.integers(len(non_text)))]
        anchor_pool = pools[c][anchor_mod]
        a = anchor_pool.next_anchor()
        anchor_vec = emb[int(anchor_pool.rows[a])]
        out_members: list[dict[str, Any]] = []
        for m in mods:
            if m == TEXT:
                out_members.append({"modality": TEXT, "text": texts[int(anchor_pool.texts[a])]})
                continue
            pool = pools[c][m]
            if m == anchor_mod:
                pos, sim = a, 1.0
            else:
                pos, sim = pool.best_match(anchor_vec, emb, margin)
            ds = str(pool.datasets[pos])
            idx = int(pool.indices[pos])
            label_name = keys_of[ds][int(labels_of[ds][idx])]
            out_members.append({"modality": m, "dataset": ds, "index": idx,
                                "source_label": str(label_name),
                                "similarity": round(float(sim), 4)})
        items.append({"item": n, "label": targets[c].name, "label_index": c, "size": k,
                      "anchor": anchor_mod, "modalities": mods, "members": out_members})

    used_counts = {ds: 0 for ds in keys}
    for c in pools:
        for pool in pools[c].values():
            for ds in np.unique(pool.datasets[pool.usage > 0]).tolist():
                used_counts[str(ds)] += int(((pool.datasets == ds) & (pool.usage > 0)).sum())
    index = ModalityFreeIndex(
        header={
            "format": INDEX_FORMAT, "version": INDEX_VERSION,
            "built_from": "OmniBind (seed 000) Sec. 3.4 / appendix A.2 modality-free data set",
            "seed": int(seed), "num_items": len(items),
            "proportions": {str(k): float(v) for k, v in sorted(
                {int(k): float(v) for k, v in proportions.items()}.items())},
            "size_counts": {str(k): v for k, v in quotas.items()},
            "include_text": bool(include_text), "margin": float(margin),
            "labels": [t.name for t in targets],
            "label_map": {"path": str(lmap.path) if lmap.path else None,
                          "sha256": lmap.sha256(), "reviewed": bool(lmap.reviewed)},
            "describer": describer.identity, "embedder": embedder.identity,
            "sources": {ds: source_summary(sources[ds]) for ds in keys},
            "samples_used": used_counts,
        },
        items=items)
    if out_path is not None:
        index.write(out_path)
    return index
