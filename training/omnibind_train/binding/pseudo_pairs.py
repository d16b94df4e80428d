"""Pseudo item pairs (seed 001, Sec. 3.1): tuples of one item per modality from unpaired pools.

Every item of every pool is in turn the query; for every other modality it retrieves the top-1
item of that pool with the best specialist for the pair (a *retriever*: the two sides'
embeddings live in one geometry, e.g. ``audio@s4`` with ``text@s4``, or ``point_cloud@s6``
with ``image@s1`` because s6's point tower was aligned to s1's images). Where no retriever
exists for a pair (audio <-> point cloud), the query goes through a hub modality (image by
default, else text): query -> hub item -> target item. The tuples are shared by every bound
space, as in the seeds (FreeBind aggregated pairs per space pair instead).

Nothing here reads a label. The hidden-label *purity* of the tuples (how often a retrieved item
is of the query's class) is computed afterwards from the bank's labels, as a diagnostic only.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .bank import EmbeddingBank

__all__ = ["PseudoTuples", "Retriever", "Top1", "build_tuples", "parse_retrievers",
           "tuple_parts", "tuple_purity"]


@dataclass(frozen=True)
class Retriever:
    """Which space embeds each side of a modality pair (``"audio@s4"``, ``"text@s4"``)."""

    a: str
    space_a: str
    b: str
    space_b: str

    def side(self, modality: str) -> str:
        return self.space_a if modality == self.a else self.space_b


def parse_retrievers(spec: Mapping[str, Sequence[str]]) -> dict[frozenset[str], Retriever]:
    """``{"audio-text": ["audio@s4", "text@s4"], ...}`` -> pair -> :class:`Retriever`."""
    out: dict[frozenset[str], Retriever] = {}
    for name, sides in spec.items():
        if len(sides) != 2:
            raise ValueError(f"retriever {name!r}: expected two 'modality@space' entries")
        (a, _, sa), (b, _, sb) = (str(x).partition("@") for x in sides)
        if not sa or not sb or a == b:
            raise ValueError(f"retriever {name!r}: entries must be 'modality@space' of two "
                             f"different modalities, got {list(sides)}")
        out[frozenset((a, b))] = Retriever(a, sa, b, sb)
    return out


@dataclass
class PseudoTuples:
    """``index[m]`` ``[T]``: row of modality m's pool in each tuple; ``query[T]``: the query
    modality of each tuple."""

    index: dict[str, np.ndarray]
    query: np.ndarray
    modalities: tuple[str, ...]

    def __len__(self) -> int:
        return int(len(self.query))

    def save(self, path) -> None:
        np.savez(path, query=self.query, modalities=np.array(self.modalities),
                 **{f"index_{m}": v for m, v in self.index.items()})

    @classmethod
    def load(cls, path) -> PseudoTuples:
        with np.load(path) as f:
            mods = tuple(str(m) for m in f["modalities"])
            return cls({m: f[f"index_{m}"] for m in mods}, f["query"], mods)


def _top1(bank: EmbeddingBank, r: Retriever, src: str, dst: str, rows: np.ndarray,
          chunk: int = 4096) -> np.ndarray:
    q = bank.emb[r.side(src)][src][torch.from_numpy(rows)]
    keys = bank.emb[r.side(dst)][dst]
    ok = torch.from_numpy(np.asarray(bank.valid.get(dst, np.ones(len(keys), bool))))
    out = []
    for i in range(0, len(q), chunk):
        sim = q[i:i + chunk] @ keys.T
        sim[:, ~ok] = -torch.inf
        out.append(sim.argmax(dim=1))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


#: ``(retriever, source modality, target modality, query rows) -> top-1 target rows``
Top1 = Callable[[Retriever, str, str, np.ndarray], np.ndarray]


def build_tuples(bank: EmbeddingBank, retrievers: Mapping[frozenset[str], Retriever],
                 modalities: Sequence[str], *, hubs: Sequence[str] = ("image", "text"),
                 progress: bool = False) -> PseudoTuples:
    """Every valid pool item as a query, its top-1 partner in every other pool.

    Raises ``ValueError`` when a pair has neither a retriever nor a route through a hub.
    """
    index, query = tuple_parts(bank, retrievers, modalities, hubs=hubs, progress=progress)
    return PseudoTuples({m: np.concatenate(v).astype(np.int64) for m, v in index.items()},
                        np.concatenate(query), tuple(modalities))


def tuple_parts(bank: EmbeddingBank, retrievers: Mapping[frozenset[str], Retriever],
                modalities: Sequence[str], *, hubs: Sequence[str] = ("image", "text"),
                top1: Top1 | None = None, shard: tuple[int, int] = (0, 1),
                progress: bool = False) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]]:
    """The tuples of :func:`build_tuples` per source pool: ``index[m][k]`` are modality m's rows
    of the tuples whose query came from pool k, ``query[k]`` their query modality.

    ``shard = (rank, world)`` keeps the rank's contiguous share of every pool's queries (the
    paper-scale runner concatenates the ranks' parts); ``top1`` replaces the CPU search (e.g.
    one on a GPU).
    """
    from tqdm import tqdm

    search = top1 or (lambda r, src, dst, rows: _top1(bank, r, src, dst, rows))
    rank, world = shard
    index: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    query: list[np.ndarray] = []
    for src in tqdm(modalities, desc="pseudo pairs", disable=not progress, unit="pool"):
        rows = np.flatnonzero(np.asarray(bank.valid.get(src, np.ones(bank.size(src), bool))))
        if world > 1:
            rows = np.array_split(rows, world)[rank]
        got: dict[str, np.ndarray] = {src: rows}
        for dst in modalities:
            if dst == src or dst in got:
                continue
            got[dst] = _retrieve(search, retrievers, src, dst, rows, got, hubs)
        for m in modalities:
            index[m].append(np.asarray(got[m], np.int64))
        query.append(np.full(len(rows), modalities.index(src), dtype=np.int64))
    return index, query


def _retrieve(top1: Top1, retrievers: Mapping[frozenset[str], Retriever], src: str,
              dst: str, rows: np.ndarray, got: dict[str, np.ndarray],
              hubs: Sequence[str]) -> np.ndarray:
    direct = retrievers.get(frozenset((src, dst)))
    if direct is not None:
        return top1(direct, src, dst, rows)
    for hub in hubs:
        if hub in (src, dst):
            continue
        first = retrievers.get(frozenset((src, hub)))
        second = retrievers.get(frozenset((hub, dst)))
        if first is None or second is None:
            continue
        if hub not in got:
            got[hub] = top1(first, src, hub, rows)
        return top1(second, hub, dst, got[hub])
    raise ValueError(f"no retriever for {src}-{dst} and no hub among {list(hubs)} with "
                     f"retrievers on both sides")


def tuple_purity(tuples: PseudoTuples, bank: EmbeddingBank) -> dict[str, float]:
    """Diagnostic only: per modality, the fraction of tuples whose item has the query item's
    hidden class; ``"all"``: every item agrees."""
    mods = tuples.modalities
    q_label = np.empty(len(tuples), dtype=np.int64)
    for qi, m in enumerate(mods):
        sel = tuples.query == qi
        q_label[sel] = bank.labels[m][tuples.index[m][sel]]
    agree = {m: bank.labels[m][tuples.index[m]] == q_label for m in mods}
    out = {m: float(a.mean()) for m, a in agree.items()}
    out["all"] = float(np.logical_and.reduce(list(agree.values())).mean())
    return out
