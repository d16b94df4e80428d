"""``omnibind-train import``: a bundle from a checkpoint the user already has (no training).

Examples::

    omnibind-train import open_clip --checkpoint ViT-B-32.pt --labels mug,drill,cat \\
        --out ~/bundles/clip_b32
    omnibind-train import imagebind --checkpoint imagebind_huge.pth \\
        --labels-file my_labels.txt --bpe-vocab ImageBind/bpe/bpe_simple_vocab_16e6.txt.gz
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .recipes import DEFAULT_TEMPLATES, RECIPES

__all__ = ["add_import_arguments", "run_import"]

_log = logging.getLogger("omnibind_train.import")


def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``import`` subcommand's options."""
    parser.add_argument("kind", choices=sorted(RECIPES),
                        help="checkpoint family: open_clip (camera + text) or imagebind "
                             "(camera, microphone, thermal camera + text)")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="the published weights (.pt/.pth/.bin/.safetensors)")
    labels = parser.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", default=None,
                        help="comma-separated label names the bundle recognises")
    labels.add_argument("--labels-file", type=Path, default=None,
                        help="text file, one label per line ('#' comments)")
    parser.add_argument("--out", type=Path, default=None,
                        help="bundle directory (default <cache>/bundles/<kind>_<checkpoint>)")
    parser.add_argument("--template", action="append", default=None, dest="templates",
                        help="prompt template with one {} (repeatable; default: six CLIP "
                             "ImageNet templates)")
    parser.add_argument("--bpe-vocab", type=Path, default=None,
                        help="CLIP's bpe_simple_vocab_16e6.txt.gz (default: searched next to "
                             "the checkpoint and in installed open_clip / clip packages)")
    parser.add_argument("--arch", type=Path, default=None,
                        help="YAML of architecture overrides (ImageBind: over imagebind_huge's "
                             "sizes; open_clip: over the sizes read from the checkpoint)")
    parser.add_argument("--act", choices=("quick_gelu", "gelu"), default="quick_gelu",
                        help="open_clip activation: quick_gelu for OpenAI/DFN weights, gelu "
                             "for most LAION ones (cannot be read from the weights)")
    parser.add_argument("--preprocess", type=Path, default=None,
                        help="YAML {modality: {field: value}} overriding the runtime "
                             "preprocessing the recipe carries into the bundle")
    parser.add_argument("--torch-weights", action="store_true",
                        help="also write safetensors for the torch fallback backend (doubles "
                             "the bundle's size)")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for the ONNX Runtime / torch parity check")


def _yaml_mapping(path: Path | None, what: str) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"omnibind-train import: {what} {path} must hold a YAML mapping")
    return data


def _labels(args: argparse.Namespace) -> tuple[list[str], str]:
    from omnibind_ros.core.labels import read_label_file

    if args.labels_file is not None:
        if not args.labels_file.is_file():
            raise SystemExit(f"omnibind-train import: --labels-file {args.labels_file} "
                             "does not exist")
        names, source = read_label_file(args.labels_file), str(args.labels_file)
    else:
        names, source = [n.strip() for n in args.labels.split(",") if n.strip()], "--labels"
    if not names:
        raise SystemExit("omnibind-train import: the label list is empty")
    return names, source


def _default_out(kind: str, checkpoint: Path) -> Path:
    from omnibind_ros.core.bundle import default_bundle_dir

    stem = checkpoint.name.split(".")[0].replace(" ", "_")
    return default_bundle_dir().parent / f"{kind}_{stem}"


def run_import(args: argparse.Namespace) -> int:
    """Build the bundle; print where it is and how to run it."""
    from .importer import import_checkpoint

    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    names, source = _labels(args)
    out = args.out or _default_out(args.kind, args.checkpoint)
    try:
        bundle = import_checkpoint(
            args.kind, args.checkpoint, out, labels=names,
            templates=args.templates or DEFAULT_TEMPLATES,
            arch=_yaml_mapping(args.arch, "--arch"), act=args.act, bpe_vocab=args.bpe_vocab,
            preprocess=_yaml_mapping(args.preprocess, "--preprocess"),
            include_torch_weights=args.torch_weights, threads=args.threads,
            labels_source=source)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"omnibind-train import: {err}") from None
    from omnibind_ros.core.bundle import load_bundle

    loaded = load_bundle(bundle)
    print(f"bundle {bundle}: {args.kind}, modalities {list(loaded.modality_names)} + text, "
          f"D={loaded.dim}, {len(loaded.label_names)} labels, logit scale "
          f"{loaded.logit_scale:.1f}")
    print(f"run it: omnibind-bringup --bundle {bundle}   or set bundle_path: {bundle} in the "
          "perception params file")
    return 0
