"""``omnibind-train modality-free``: build the modality-free combination index from the readers.

::

    omnibind-train modality-free \\
        --source esc50=/data/ESC-50:folds=1,2,3,4 \\
        --source shapenetpart=/data/shapenet:split=trainval \\
        --source cal=/data/caltech:reader=caltech101:split=train \\
        --label-map labelmap.yaml --out train_index.jsonl --num-items 50080 --seed 0

    # or every source, file and setting of one split from the paper config:
    omnibind-train modality-free --config training/configs/paper_omnibind.yaml --split train

``--source KEY=ROOT[:OPTION=VALUE...]`` opens the reader named ``KEY`` (or ``reader=NAME``) on
``ROOT`` with the reader's keyword options; a value with commas is a list (``folds=1,2,3,4``),
values are read as YAML scalars. ``KEY`` names the data set in the label map and the index.

The first run proposes the label map (``--label-map``, written for review) and builds the index
with it; ``--propose-only`` stops after writing the map. A present map is used as it stands;
``--recompute-map`` re-proposes its undecided targets first; ``--require-reviewed`` refuses a map
whose ``reviewed`` flag is false. Errors a user can fix (a missing root, a bad option, a stale or
unreviewed map) are one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

EXIT_USAGE = 2

__all__ = ["add_modality_free_arguments", "parse_proportions", "parse_source",
           "run_modality_free"]


def add_modality_free_arguments(p: argparse.ArgumentParser) -> None:
    """The subcommand's options (``omnibind-train modality-free``)."""
    p.add_argument("--source", dest="sources", action="append", default=[],
                   metavar="KEY=ROOT[:OPT=VAL...]",
                   help="a reader on its root, e.g. esc50=/data/ESC-50:folds=1,2,3,4 or "
                        "cal=/data/caltech:reader=caltech101:split=train (repeatable)")
    p.add_argument("--config", default=None,
                   help="paper config (training/configs/paper_omnibind.yaml): sources, files "
                        "and settings of --split from its data.modality_free section")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="with --config: the split to build (default train)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --config: override a config field (repeatable)")
    p.add_argument("--label-map", type=Path, default=None,
                   help="label map YAML: proposed and written when absent, used as edited "
                        "when present")
    p.add_argument("--out", type=Path, default=None, help="index file to write (JSON lines)")
    p.add_argument("--propose-only", action="store_true",
                   help="write (or, with --recompute-map, update) the label map and stop")
    p.add_argument("--recompute-map", action="store_true",
                   help="re-propose the map's undecided targets (accepted / rejected ones, "
                        "every one of a reviewed map, are kept)")
    p.add_argument("--require-reviewed", action="store_true",
                   help="refuse a label map whose reviewed flag is false")
    p.add_argument("--num-items", type=int, default=None,
                   help="items to draw (default 50080, the paper's; --config: its num_items)")
    p.add_argument("--seed", type=int, default=None, help="seed of every draw (default 0)")
    p.add_argument("--proportions", default=None, metavar="SIZE=W,...",
                   help="combination-size weights, e.g. 2=0.46,3=0.15,4=0.16,5=0.17 (default: "
                        "the paper's shares + 6 %% single-modality items)")
    p.add_argument("--no-text", action="store_true",
                   help="text is not one of the combined modalities")
    p.add_argument("--margin", type=float, default=None,
                   help="cosine margin of sample-level matching (default 0.05)")
    p.add_argument("--threshold", type=float, default=None,
                   help="label-name similarity threshold of a proposal (default 0.7)")
    p.add_argument("--label-template", default=None,
                   help="template label names are embedded in (default 'a {}')")
    p.add_argument("--text-encoder", default=None,
                   help="registry name of the text space (default text_minilm_l6)")
    p.add_argument("--embedding-cache", type=Path, default=None,
                   help=".npz cache of text embeddings (reused by later runs)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def _value(text: str) -> Any:
    import yaml

    if "," in text:
        return [_value(t) for t in text.split(",") if t != ""]
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_source(spec: str) -> tuple[str, str, str, dict[str, Any]]:
    """``KEY=ROOT[:OPT=VAL...]`` -> ``(key, reader, root, options)``.

    Options are the trailing ``:``-separated parts that hold ``=``; what comes before them is the
    root (so a root may itself contain ``:``).
    """
    key, sep, rest = spec.partition("=")
    key = key.strip()
    if not sep or not key or not rest:
        raise ValueError(f"--source {spec!r}: expected KEY=ROOT[:OPTION=VALUE...]")
    parts = rest.split(":")
    cut = len(parts)
    while cut > 1 and "=" in parts[cut - 1]:
        cut -= 1
    root = ":".join(parts[:cut])
    options: dict[str, Any] = {}
    for part in parts[cut:]:
        name, _, value = part.partition("=")
        if not name:
            raise ValueError(f"--source {spec!r}: option {part!r} has no name")
        options[name.strip()] = _value(value)
    reader = str(options.pop("reader", key))
    return key, reader, root, options


def parse_proportions(text: str) -> dict[int, float]:
    """``"2=0.46,3=0.15"`` -> ``{2: 0.46, 3: 0.15}``."""
    out = {}
    for item in text.split(","):
        size, sep, weight = item.partition("=")
        if not sep:
            raise ValueError(f"--proportions: {item!r} is not SIZE=WEIGHT")
        try:
            out[int(size)] = float(weight)
        except ValueError:
            raise ValueError(f"--proportions: {item!r} is not SIZE=WEIGHT") from None
    return out


def _open_sources(specs: Sequence[str]) -> dict[str, Any]:
    from .. import open_dataset

    sources: dict[str, Any] = {}
    for spec in specs:
        key, reader, root, options = parse_source(spec)
        if key in sources:
            raise ValueError(f"--source: data set key {key!r} given twice")
        try:
            sources[key] = open_dataset(reader, root, **options)
        except TypeError as exc:  # an option the reader does not take
            raise ValueError(f"--source {spec!r}: {exc}") from None
    return sources


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Sources and builder settings from ``--config`` (if given), then the flags over them."""
    from .builder import DEFAULT_PROPORTIONS, PAPER_NUM_ITEMS
    from .mapping import DEFAULT_LABEL_TEMPLATE, DEFAULT_THRESHOLD

    s: dict[str, Any] = {
        "sources": {}, "label_map": None, "out": None, "num_items": PAPER_NUM_ITEMS, "seed": 0,
        "proportions": dict(DEFAULT_PROPORTIONS), "include_text": True, "margin": 0.05,
        "threshold": DEFAULT_THRESHOLD, "label_template": DEFAULT_LABEL_TEMPLATE,
        "text_encoder": "text_minilm_l6", "embedding_cache": None, "require_reviewed": False}
    if args.config is not None:
        from omnibind_train.pipeline.paper import DataRootError, PaperOmniBindConfig

        cfg = PaperOmniBindConfig.from_yaml(args.config, args.overrides)
        mf = cfg.data.modality_free
        if mf is None:
            raise ValueError(f"{args.config} has no data.modality_free section")
        split = mf.split(args.split)
        where = f"data.modality_free.{args.split}"
        problems = []
        for key in split.sources:
            try:
                root = cfg.source_root(key)
            except DataRootError as exc:
                problems.append(str(exc))
                continue
            if not root.is_dir():
                problems.append(f"data.sources.{key}.root: {root} does not exist")
        if problems:
            raise FileNotFoundError(f"{where}: " + "; ".join(problems))
        s["sources"] = {key: cfg.open_source(key) for key in split.sources}
        s.update(label_map=Path(cfg.expand(mf.label_map, "data.modality_free.label_map")),
                 out=Path(cfg.expand(split.index, f"{where}.index")),
                 num_items=split.num_items,
                 seed=mf.seed + (1 if args.split == "test" else 0),
                 proportions=dict(mf.proportions), include_text=mf.include_text,
                 margin=mf.margin, threshold=mf.threshold, label_template=mf.label_template,
                 text_encoder=mf.text_encoder, require_reviewed=mf.require_reviewed,
                 embedding_cache=(Path(cfg.expand(mf.embedding_cache,
                                                  "data.modality_free.embedding_cache"))
                                  if mf.embedding_cache else None))
    elif args.overrides:
        raise ValueError("--set needs --config")
    if args.sources:
        s["sources"] = {**s["sources"], **_open_sources(args.sources)}
    for flag in ("label_map", "out", "num_items", "seed", "margin", "threshold",
                 "label_template", "text_encoder", "embedding_cache"):
        if getattr(args, flag) is not None:
            s[flag] = getattr(args, flag)
    if args.proportions is not None:
        s["proportions"] = parse_proportions(args.proportions)
    if args.no_text:
        s["include_text"] = False
    if args.require_reviewed:
        s["require_reviewed"] = True
    if not s["sources"]:
        raise ValueError("no sources: give --source KEY=ROOT[:OPT=VAL...] (repeatable) or "
                         "--config")
    if s["label_map"] is None:
        raise ValueError("--label-map is required (or --config)")
    if s["out"] is None and not args.propose_only:
        raise ValueError("--out is required (or --propose-only, or --config)")
    return s


def _map_summary(lmap: Any, sources: Mapping[str, Any]) -> str:
    used = lmap.used_targets()
    modality = {k: str(src.modality) for k, src in sources.items()}
    multi = sum(1 for t in used if len({modality[d] for d in t.sources if d in modality}) >= 2)
    return (f"label map {lmap.path}: {len(used)} used targets ({multi} span >= 2 modalities), "
            f"reviewed: {str(bool(lmap.reviewed)).lower()}")


def run_modality_free(args: argparse.Namespace) -> int:
    """``omnibind-train modality-free``: one-line errors (exit 2) for what the user can fix."""
    import os

    from .. import DatasetFormatError, DatasetLayoutError
    from .builder import ModalityFreeBuildError, build_modality_free_index
    from .embedding import EncoderTextEmbedder
    from .mapping import LabelMapError, load_or_create_label_map

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        s = _settings(args)
        embedder = EncoderTextEmbedder(s["text_encoder"], cache_path=s["embedding_cache"])
        if args.propose_only or args.recompute_map or not Path(s["label_map"]).exists():
            lmap = load_or_create_label_map(s["label_map"], s["sources"], embedder,
                                            threshold=s["threshold"],
                                            label_template=s["label_template"],
                                            recompute=args.recompute_map)
            print(_map_summary(lmap, s["sources"]))
            if args.propose_only:
                print("review it (status, names, sources), set reviewed: true, then build")
                return 0
        index = build_modality_free_index(
            s["sources"], s["label_map"], s["out"], embedder=embedder,
            num_items=s["num_items"], proportions=s["proportions"],
            include_text=s["include_text"], margin=s["margin"], seed=s["seed"],
            require_reviewed=s["require_reviewed"], threshold=s["threshold"],
            label_template=s["label_template"])
    except (ValueError, FileNotFoundError, KeyError, LabelMapError, ModalityFreeBuildError,
            DatasetLayoutError, DatasetFormatError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"omnibind-train modality-free: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    shares = ", ".join(f"{k}: {v:.1%}" for k, v in index.size_proportions().items())
    print(f"{s['out']}: {len(index)} items over {len(index.label_names)} labels from "
          f"{len(s['sources'])} data sets; size shares {shares}")
    return 0
