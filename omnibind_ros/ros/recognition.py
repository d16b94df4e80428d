"""The ``omnibind_ros/Recognition`` message of a fusion result, built in this one place."""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time

from omnibind_ros.core.fusion import FusionResult
from omnibind_ros.msg import ModalityPrediction, Recognition

__all__ = ["from_time", "recognition_message", "to_time"]


def to_time(stamp_ns: int) -> Time:
    """``builtin_interfaces/Time`` of a time in int nanoseconds (negative times clamp to 0)."""
    ns = max(0, int(stamp_ns))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def from_time(stamp: Time) -> int:
    """Int nanoseconds of a ``builtin_interfaces/Time`` (a header stamp)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def recognition_message(result: FusionResult, frame_id: str = "",
                        with_embedding: bool = False, *, bundle: str = "",
                        model_family: str = "") -> Recognition:
    """The message of one tick: stamped with the newest sample fused (the tick time when
    nothing was fused), its per-sensor predictions, the bundle (name and model family) that
    answered, and optionally the fused embedding."""
    msg = Recognition(best_label=result.best_label, best_score=result.best_score,
                      top_labels=list(result.top_labels), top_scores=list(result.top_scores),
                      sensors=list(result.sensors), modalities=list(result.modalities),
                      bundle=bundle, model_family=model_family,
                      confidence=result.confidence, unsure=result.unsure)
    msg.header.stamp = to_time(result.stamp_ns if result.stamp_ns is not None
                               else result.tick_ns)
    msg.header.frame_id = frame_id
    msg.per_modality = [
        ModalityPrediction(sensor=p.sensor, modality=p.modality, label=p.label, score=p.score,
                           stamp=to_time(p.stamp_ns), age=p.age_s)
        for p in result.per_modality]
    if with_embedding and result.embedding is not None:
        msg.embedding = result.embedding.astype(np.float32).tolist()
    return msg
