"""Build a model bundle from a checkpoint the user already has, without training.

:func:`import_checkpoint` loads the checkpoint strictly in its published layout (a wrong file
names its missing / unexpected keys), keeps each exported tower alone
(:func:`.encoders.single_tower`), writes OpenAI's BPE tokenizer for the text tower
(:mod:`.clip_bpe`), embeds the user's label names with it, and hands everything to the same
:func:`omnibind_train.export.export_bundle` that trained bundles go through, so the result is
checked (ONNX Runtime vs torch on real preprocessed inputs) and published atomically. The node
runs it by ``bundle_path`` like any other bundle.

Fusion: there is no trained AF head for a checkpoint's space, so the bundle fuses with the
parameter-free normalised mean of the live sensors' embeddings (the ``mean`` baseline of seed
000). The user's label list can still be replaced at runtime (``labels.names`` /
``labels.file``): the text tower ships in the bundle.
"""
from __future__ import annotations

import hashlib
import logging
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnibind_ros.core.preprocess import build_preprocessor
from omnibind_ros.core.types import AudioBlock, ThermalFrame

from ..binding.experts import ExpertConfig, ExpertSpace, build_expert
from ..data.text import label_embeddings
from ..models.fusion import FusionConfig
from .clip_bpe import find_bpe_vocab, write_clip_tokenizer
from .encoders import (
    ClipTokenizer,
    ImportedEncoder,
    ImportedEncoderConfig,
    ImportedTextEncoder,
    single_tower,
)
from .recipes import DEFAULT_TEMPLATES, RECIPES, Recipe, clip_logit_scale

__all__ = ["import_checkpoint", "sha256_file"]

_log = logging.getLogger(__name__)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, read in 4 MiB chunks (checkpoints are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _open_clip_arch(checkpoint: Path, act: str, overrides: Mapping[str, Any]
                    ) -> dict[str, Any]:
    """open_clip sizes from the checkpoint's tensor shapes, ``overrides`` winning."""
    from ..binding.experts.open_clip_expert import read_published_state
    from ..models.vit import infer_text_config, infer_vision_config

    state = read_published_state(str(checkpoint))
    try:
        vision, text = infer_vision_config(state), infer_text_config(state)
    except KeyError as err:
        raise ValueError(f"{checkpoint}: not an open_clip CLIP checkpoint (no {err} tensor); "
                         "expected visual.conv1.weight, visual.positional_embedding, "
                         "token_embedding.weight, text_projection, ...") from None
    embed_dim = vision.pop("embed_dim")
    text.pop("embed_dim")
    arch = {"embed_dim": embed_dim, "act": act, "vision": vision, "text": text}
    for key, value in overrides.items():
        arch[key] = {**arch[key], **value} if isinstance(value, Mapping) and key in arch \
            else value
    return arch


def _load_space(recipe: Recipe, checkpoint: Path, arch: Mapping[str, Any]
                ) -> tuple[ExpertSpace, dict[str, Any]]:
    """The expert built from ``checkpoint`` (strict), and its resolved architecture."""
    cfg = ExpertConfig(kind=recipe.kind, checkpoint=str(checkpoint), arch=dict(arch),
                       modalities=list(recipe.loaded))
    space = build_expert(cfg)
    resolved = dict(getattr(space, "arch", None) or arch)
    return space, resolved


@torch.no_grad()
def _logit_scale(recipe: Recipe, space: ExpertSpace) -> float:
    if recipe.kind == "open_clip":
        return clip_logit_scale(float(space.logit_scale.detach()))
    return float(space.logit_scale("text"))


def _tower_config(recipe: Recipe, resolved: Mapping[str, Any], modality: str, tower: str,
                  embed_dim: int, source: Path) -> ImportedEncoderConfig:
    expert = ExpertConfig(kind=recipe.kind, checkpoint=None, arch=dict(resolved),
                          modalities=[tower]).to_dict()
    return ImportedEncoderConfig(modality=modality, expert_modality=tower, expert=expert,
                                 embed_dim=embed_dim, source=str(source))


def _sample_inputs(preprocess: Mapping[str, Mapping[str, Any]], seed: int = 0
                   ) -> dict[str, torch.Tensor]:
    """Two raw sensor samples per modality through the runtime's own preprocessing.

    Parity is measured on them; they only need to be realistic inputs of the right kind
    (random-scene camera frames, a chirp with noise, a warm blob on a cool background).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for modality, config in preprocess.items():
        pre = build_preprocessor(modality, config)
        samples = []
        for i in range(2):
            if modality == "image":
                raw = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
                samples.append(pre(raw, "rgb"))
            elif modality == "audio":
                t = np.arange(int(2.5 * 16000)) / 16000
                wave = 0.3 * np.sin(2 * np.pi * (300 + 400 * i) * t * (1 + t))
                wave += 0.05 * rng.standard_normal(t.shape)
                samples.append(pre(AudioBlock(samples=wave.astype(np.float32),
                                              sample_rate=16000)))
            elif modality == "thermal":
                yy, xx = np.mgrid[:120, :160]
                celsius = 20 + 15 * np.exp(-((xx - 60 - 40 * i) ** 2 + (yy - 60) ** 2) / 400)
                samples.append(pre(ThermalFrame(data=celsius.astype(np.float32),
                                                encoding="32FC1")))
            else:
                raise ValueError(f"no sample input for imported modality {modality!r}")
        out[modality] = torch.from_numpy(np.stack(samples))
    return out


def import_checkpoint(kind: str, checkpoint: str | Path, out_dir: str | Path, *,
                      labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                      arch: Mapping[str, Any] | None = None, act: str = "quick_gelu",
                      bpe_vocab: str | Path | None = None,
                      preprocess: Mapping[str, Mapping[str, Any]] | None = None,
                      include_torch_weights: bool = False, threads: int = 1,
                      labels_source: str = "") -> Path:
    """Write a bundle for ``checkpoint`` (a ``kind`` in :data:`.recipes.RECIPES`) to ``out_dir``.

    Parameters
    ----------
    kind : ``"open_clip"`` or ``"imagebind"``.
    checkpoint : the published weights (``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors``).
    out_dir : the bundle directory (created; an existing bundle there is replaced).
    labels : the label names the bundle recognises (replaceable at runtime).
    templates : prompt templates (one ``{}`` each) averaged into each label's embedding.
    arch : architecture overrides (ImageBind: its ``arch`` keys over ``imagebind_huge``'s;
        open_clip: over the sizes read from the checkpoint, e.g. ``{"vision": {"heads": 16}}``).
    act : open_clip activation, ``"quick_gelu"`` or ``"gelu"``.
    bpe_vocab : the CLIP BPE vocab file (default: searched, :func:`.clip_bpe.find_bpe_vocab`).
    preprocess : per-modality overrides of the recipe's runtime preprocessing.
    include_torch_weights : also write safetensors for the torch fallback backend (doubles the
        bundle; the ONNX graphs are what the node runs by default).
    threads : ONNX Runtime / torch threads for the parity check.
    labels_source : where the labels came from (provenance).

    Raises
    ------
    ValueError
        Unknown kind, a checkpoint that does not match (missing / unexpected keys named),
        a vocab that does not fit the text tower, bad preprocessing overrides.
    FileNotFoundError
        The checkpoint or the BPE vocab is missing.
    """
    from ..export import export_bundle

    if kind not in RECIPES:
        raise ValueError(f"unknown checkpoint kind {kind!r}; supported: {sorted(RECIPES)}")
    recipe = RECIPES[kind]
    checkpoint = Path(checkpoint).expanduser().absolute()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    arch = dict(arch or {})
    if kind == "open_clip":
        arch = _open_clip_arch(checkpoint, act, arch)
    space, resolved = _load_space(recipe, checkpoint, arch)
    dim = int(space.embed_dim)
    text_arch = resolved["text"]
    vocab = find_bpe_vocab(bpe_vocab, near=[checkpoint])
    pre = recipe.preprocess(resolved, preprocess)
    text_config = {"tokenizer": "clip_bpe", "max_length": int(text_arch["context_length"]),
                   "lowercase": True, "prompt_templates": list(templates)}
    with tempfile.TemporaryDirectory(prefix="omnibind-import-") as tmp:
        tok = write_clip_tokenizer(vocab, Path(tmp) / "tokenizer",
                                   vocab_size=int(text_arch["vocab_size"]),
                                   context_length=int(text_arch["context_length"]))
        tokenizer = ClipTokenizer(tok.directory, max_length=tok.context_length)
        encoders = {m: ImportedEncoder(_tower_config(recipe, resolved, m, t, dim, checkpoint),
                                       single_tower(space, t))
                    for m, t in recipe.towers.items() if m != "text"}
        text = ImportedTextEncoder(
            _tower_config(recipe, resolved, "text", recipe.towers["text"], dim, checkpoint),
            single_tower(space, recipe.towers["text"]), tokenizer=tokenizer)
        scale = _logit_scale(recipe, space)
        del space  # the towers hold copies; free the full model before exporting
        label_emb = label_embeddings(text, list(labels), text_config)
        provenance = {
            "source": "import", "family": kind, "kind": kind,
            "checkpoint": {"path": str(checkpoint), "sha256": sha256_file(checkpoint),
                           "bytes": checkpoint.stat().st_size},
            "bpe_vocab": {"path": str(vocab), "sha256": sha256_file(vocab),
                          "merges_used": tok.vocab_size - 514},
            "towers": dict(recipe.towers), "not_exported": dict(recipe.notes),
            "arch": resolved, "labels": {"count": len(labels), "source": labels_source},
            "fusion": "mean (no trained fusion head for an imported space)",
            "command": " ".join(sys.argv),
        }
        _log.info("exporting %s towers %s (D=%d) to %s", kind, sorted(recipe.towers), dim,
                  out_dir)
        return export_bundle(
            out_dir, encoders=encoders, fusion=FusionConfig(kind="mean", dim=dim).build(),
            fusion_config=FusionConfig(kind="mean", dim=dim).to_dict(), text_encoder=text,
            label_names=list(labels), prompt_templates=list(templates),
            label_embeddings=label_emb, logit_scale=scale,
            preprocess_configs={**pre, "text": text_config},
            provenance=provenance, sample_inputs=_sample_inputs(pre),
            include_torch_weights=include_torch_weights, threads=threads)
