"""Encoders (trunk + head), their registry, and the fusion heads."""
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

__all__ = [
    "MODALITY_SLOTS", "AdaptiveFusion", "ConcatFusion", "FusionConfig", "LinearFusion",
    "MeanFusion", "classify", "export_fusion_onnx", "select_negative_labels", "stack_modalities",
]
