"""Test helpers: a tiny, randomly initialised model bundle with every modality, in seconds.

Use :func:`build_tiny_bundle` wherever a test needs a real bundle (core bundle/backends tests,
ROS node tests, benchmarks' ``--tiny``)::

    from omnibind_train.testing import build_tiny_bundle

    @pytest.fixture(scope="module")
    def bundle_dir(tmp_path_factory):
        return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")

What it holds (D = 32 unless ``text="minilm"``, then 384):

* image, thermal, event, tactile: a 1-layer ViT (32 px, patch 16) + linear head, 32 px inputs;
* audio: EfficientNet-Lite0 (random weights) resizing a 16-mel x 8-frame log-mel (0.1 s) to 32 px;
* point cloud: PointNet (16, 32) over 64 points;
* fusion: the AF head (4 heads, not zero-initialised, so it differs from the mean);
* text: a 1-layer CLIP-style text tower over the real MiniLM WordPiece tokenizer (``"tiny"``),
  or the real all-MiniLM-L6-v2 (``"minilm"``, a larger export);
* labels: :data:`TINY_LABELS` with two prompt templates, and ``labels.logit_scale`` (default
  :data:`TINY_LOGIT_SCALE`, ``1 / 0.07``: the AF loss's default ``1 / tau``).

Weights are a pure function of ``seed`` (:func:`tiny_models` rebuilds the same torch modules, to
compare a backend with torch). Preprocessing configs are the defaults shrunk to those sizes,
so the runtime's real preprocessors produce the encoders' input shapes. The first build in a
process exports and checks the bundle (mostly the text tower's dynamo export and the parity
checks); later calls with the same parameters copy that export (``cache``).
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from omnibind_ros.core.modalities import Modality

from .models.encoders import ModalityEncoder
from .models.fusion import FusionConfig
from .models.registry import (
    EfficientNetLiteTrunk,
    EncoderConfig,
    HeadConfig,
    OpenClipTextTrunk,
    OpenClipVisionTrunk,
    PointNetTrunk,
    build_encoder,
)

__all__ = ["TINY_EXPORTER", "TINY_LABELS", "TINY_LOGIT_SCALE", "TINY_MODALITIES",
           "TINY_TEMPLATES", "TinyModels", "build_tiny_bundle", "random_inputs", "tiny_models",
           "tiny_preprocess_configs", "token_stack"]

TINY_LABELS = ("wooden mug", "metal can", "rubber duck", "plastic cube", "fabric ball")
TINY_TEMPLATES = ("a photo of a {}.", "a {}.")
#: The tiny bundle's ``labels.logit_scale``: ``1 / tau`` for the AF loss's default tau = 0.07.
TINY_LOGIT_SCALE = 1.0 / 0.07
#: Every modality with an array encoder (text has its own encoder).
TINY_MODALITIES = tuple(m.value for m in Modality if m is not Modality.TEXT)
#: Exporters of the tiny bundle: fast tracing, except dynamo where tracing fixes a length.
TINY_EXPORTER: dict[str, str] = {"*": "torchscript", "text": "dynamo"}
_IMAGE_SIZE = 32
_SAMPLE_BATCH = 3
_VIT_MODALITIES = ("image", "thermal", "event", "tactile")


def tiny_preprocess_configs(text_max_length: int = 32) -> dict[str, dict[str, Any]]:
    """Default preprocessing configs shrunk to the tiny encoders' input sizes."""
    return {
        "image": {"size": _IMAGE_SIZE},
        "thermal": {"size": _IMAGE_SIZE},
        "event": {"size": _IMAGE_SIZE},
        "tactile": {"size": _IMAGE_SIZE},
        # 0.1 s at 16 kHz, n_fft 400, hop 160 -> 8 frames of 16 mel bands
        "audio": {"window_s": 0.1, "n_mels": 16, "fmax": 8000.0},
        "point_cloud": {"num_points": 64},
        "text": {"max_length": text_max_length, "prompt_templates": list(TINY_TEMPLATES)},
    }


def _encoder_config(modality: str, dim: int) -> EncoderConfig:
    if modality in _VIT_MODALITIES:
        trunk: Any = OpenClipVisionTrunk(image_size=_IMAGE_SIZE, patch_size=16, width=32,
                                         layers=1, heads=2, embed_dim=32, act="gelu",
                                         frozen=False)
        return EncoderConfig(modality, trunk, HeadConfig(kind="linear"), dim)
    if modality == "audio":
        trunk = EfficientNetLiteTrunk(pretrained=False, resize=(_IMAGE_SIZE, _IMAGE_SIZE))
        return EncoderConfig(modality, trunk, HeadConfig(hidden_dim=32), dim)
    if modality == "point_cloud":
        return EncoderConfig(modality, PointNetTrunk(widths=(16, 32)), HeadConfig(hidden_dim=32),
                             dim)
    raise ValueError(f"no tiny encoder for {modality!r}")


def _tiny_text_encoder(dim: int) -> ModalityEncoder:
    from tokenizers import Tokenizer

    from .models.text import minilm_path

    path = minilm_path()
    vocab = Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size()
    trunk = OpenClipTextTrunk(tokenizer=str(path), context_length=32, vocab_size=vocab,
                              width=32, layers=1, heads=2, embed_dim=dim, act="gelu")
    return build_encoder(EncoderConfig("text", trunk, HeadConfig(kind="identity"), dim),
                         load_weights=False)


@dataclass
class TinyModels:
    """Everything :func:`~omnibind_train.export.export_bundle` takes, for the tiny bundle."""

    encoders: dict[str, ModalityEncoder]
    fusion: nn.Module
    fusion_config: dict[str, Any]
    text_encoder: ModalityEncoder
    label_names: list[str]
    prompt_templates: list[str]
    label_embeddings: torch.Tensor
    logit_scale: float
    preprocess_configs: dict[str, dict[str, Any]]
    provenance: dict[str, Any]
    sample_inputs: dict[str, torch.Tensor]

    def export_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``export_bundle(out_dir, **models.export_kwargs())``."""
        return dict(vars(self))


def _samples(modality: str, shape: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(_SAMPLE_BATCH, *shape, generator=gen)
    if modality == "point_cloud":  # centred, inside the unit sphere, like the preprocessor's
        x = x - x.mean(dim=1, keepdim=True)
        x = x / x.norm(dim=-1).amax(dim=1).view(-1, 1, 1)
    return x


def _label_embeddings(text: ModalityEncoder, names: Sequence[str], templates: Sequence[str]
                      ) -> torch.Tensor:
    prompts = [t.format(n) for n in names for t in templates]
    with torch.no_grad():
        batch = text.tokenizer(prompts)
        emb = text(batch["input_ids"], batch["attention_mask"])
    return F.normalize(emb.view(len(names), len(templates), -1).mean(dim=1), dim=-1)


def tiny_models(*, text: str = "tiny", seed: int = 0,
                modalities: Sequence[str] = TINY_MODALITIES,
                logit_scale: float = TINY_LOGIT_SCALE) -> TinyModels:
    """Build the tiny bundle's torch modules and inputs (deterministic in ``seed``).

    Parameters
    ----------
    text : ``"tiny"`` (1-layer text tower, D = 32) or ``"minilm"`` (real MiniLM, D = 384).
    seed : weights and sample inputs seed; the global torch RNG is left as it was.
    modalities : the array modalities to include (default all six).
    logit_scale : the ``labels.logit_scale`` to export (``1 / tau`` of the AF loss).
    """
    from omnibind_ros.core.preprocess import build_preprocessor

    if text not in ("tiny", "minilm"):
        raise ValueError(f"text must be 'tiny' or 'minilm', got {text!r}")
    dim = 384 if text == "minilm" else 32
    preprocess = tiny_preprocess_configs(text_max_length=32 if text == "tiny" else 64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoders = {m: build_encoder(_encoder_config(m, dim), load_weights=False).eval()
                    for m in modalities}
        fusion_config = FusionConfig(kind="af", dim=dim, num_heads=4, zero_init=False)
        fusion = fusion_config.build().eval()
        text_encoder = (build_encoder("text_minilm_l6") if text == "minilm"
                        else _tiny_text_encoder(dim)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    samples = {m: _samples(m, build_preprocessor(m, preprocess[m]).output_shape, gen)
               for m in modalities}
    return TinyModels(
        encoders=encoders, fusion=fusion, fusion_config=fusion_config.to_dict(),
        text_encoder=text_encoder, label_names=list(TINY_LABELS),
        prompt_templates=list(TINY_TEMPLATES),
        label_embeddings=_label_embeddings(text_encoder, TINY_LABELS, TINY_TEMPLATES),
        logit_scale=float(logit_scale),
        preprocess_configs={m: preprocess[m] for m in (*modalities, "text")},
        provenance={"kind": "tiny random test bundle", "seed": seed, "text": text},
        sample_inputs=samples)


_CACHE: dict[tuple[Any, ...], Path] = {}
_CACHE_ROOT: list[Path] = []


def _cache_root() -> Path:
    if not _CACHE_ROOT:
        root = Path(tempfile.mkdtemp(prefix="omnibind_tiny_bundles_"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _CACHE_ROOT.append(root)
    return _CACHE_ROOT[0]


def build_tiny_bundle(out_dir: str | Path, *, text: str = "tiny", seed: int = 0,
                      modalities: Sequence[str] = TINY_MODALITIES,
                      exporter: str | Mapping[str, str] = TINY_EXPORTER,
                      include_torch_weights: bool = True,
                      logit_scale: float = TINY_LOGIT_SCALE,
                      cache: bool = True) -> Path:
    """Export the tiny random bundle (see the module docstring) to ``out_dir``.

    Parameters
    ----------
    out_dir : bundle directory to create (must not be a non-bundle directory).
    text : ``"tiny"`` (default) or ``"minilm"`` (the real text teacher, D = 384, slower to
        export).
    seed : weights seed (same seed -> same weights as :func:`tiny_models`).
    modalities : array modalities to include.
    exporter : ONNX exporter(s) (see :func:`~omnibind_train.export.export_bundle`). The default
        :data:`TINY_EXPORTER` traces the encoders with the TorchScript exporter (faster than
        dynamo on them) and exports text with dynamo (tracing bakes the sequence length in);
        the export tests cover dynamo everywhere.
    include_torch_weights : write ``torch/*.safetensors`` (needed by the torch backend).
    logit_scale : ``labels.logit_scale`` of the bundle, the multiplier of the label cosines
        before the runtime's softmax (default :data:`TINY_LOGIT_SCALE`, ``1 / 0.07``, what an
        AF head trained with the default temperature exports).
    cache : reuse an export of the same parameters made earlier in this process.

    Returns
    -------
    Path
        ``out_dir``, a complete bundle that passed the exporter's parity checks.
    """
    from .export import export_bundle

    out_dir = Path(out_dir)
    frozen = exporter if isinstance(exporter, str) else tuple(sorted(exporter.items()))
    key = (text, seed, tuple(modalities), frozen, include_torch_weights, float(logit_scale))
    if cache and key in _CACHE and _CACHE[key].is_dir():
        shutil.copytree(_CACHE[key], out_dir, dirs_exist_ok=out_dir.is_dir())
        return out_dir
    models = tiny_models(text=text, seed=seed, modalities=modalities, logit_scale=logit_scale)
    target = _cache_root() / f"bundle{len(_CACHE)}" if cache else out_dir
    export_bundle(target, **models.export_kwargs(), exporter=exporter,
                  include_torch_weights=include_torch_weights)
    if cache:
        _CACHE[key] = target
        shutil.copytree(target, out_dir, dirs_exist_ok=out_dir.is_dir())
    return out_dir


def random_inputs(bundle: Any, modality: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` random model inputs of a bundle's ``modality`` encoder, float32, from ``seed``."""
    rng = np.random.default_rng(seed)
    shape = (n, *bundle.modalities[modality].sample_shape)
    return rng.standard_normal(shape).astype(np.float32)


def token_stack(backend: Any, bundle: Any, n: int) -> np.ndarray:
    """Fusion tokens ``[2, n, D]``: two random inputs of each of the first ``n`` modalities of
    :data:`TINY_MODALITIES`, encoded by ``backend``."""
    names = TINY_MODALITIES[:n]
    return np.stack([backend.encode(m, random_inputs(bundle, m, 2, seed=i))
                     for i, m in enumerate(names)], axis=1)
