"""Encoders (trunk + head), their registry, and the fusion heads."""
from .encoders import ImageTrunk, ModalityEncoder, ParameterCounts
from .fusion import (
    MODALITY_SLOTS,
    AdaptiveFusion,
    ConcatFusion,
    FusionConfig,
    LinearFusion,
    MeanFusion,
    classify,
    export_fusion_onnx,
    select_negative_labels,
    stack_modalities,
)
from .registry import (
    DEFAULT_ENCODERS,
    EfficientNetLiteTrunk,
    EncoderConfig,
    HeadConfig,
    MiniLMTrunk,
    OpenClipTextTrunk,
    OpenClipVisionTrunk,
    PointNetTrunk,
    build_encoder,
    get_encoder_config,
    list_encoders,
    open_clip_text_config,
    open_clip_vision_config,
    register_encoder,
)

__all__ = [
    "DEFAULT_ENCODERS", "MODALITY_SLOTS", "AdaptiveFusion", "ConcatFusion",
    "EfficientNetLiteTrunk", "EncoderConfig", "FusionConfig", "HeadConfig", "ImageTrunk",
    "LinearFusion", "MeanFusion", "MiniLMTrunk", "ModalityEncoder", "OpenClipTextTrunk",
    "OpenClipVisionTrunk", "ParameterCounts", "PointNetTrunk", "build_encoder", "classify",
    "export_fusion_onnx", "get_encoder_config", "list_encoders", "open_clip_text_config",
    "open_clip_vision_config", "register_encoder", "select_negative_labels", "stack_modalities",
]
