"""The modality registry: every sensing modality omnibind_ros knows, and its role.

Seed 000 (OmniBind) splits modalities into data-abundant *teachers* (image, text) that define the
shared space and data-scarce *students* (thermal, event, tactile, audio, point cloud) that are
distilled into it. The registry is the one place that names them; preprocessing, the model bundle,
training and the ROS glue all key their per-modality tables by :attr:`Modality.value`.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class Modality(str, enum.Enum):
    """A sensing modality. The string value is the key used in configs and bundles."""

    IMAGE = "image"
    TEXT = "text"
    THERMAL = "thermal"
    EVENT = "event"
    TACTILE = "tactile"
    AUDIO = "audio"
    POINT_CLOUD = "point_cloud"

    def __str__(self) -> str:
        return self.value


class Role(str, enum.Enum):
    TEACHER = "teacher"
    STUDENT = "student"


@dataclass(frozen=True)
class ModalitySpec:
    """Static facts about one modality.

    Attributes
    ----------
    modality : the modality.
    role : teacher (defines the space) or student (aligned into it by CAD).
    input_kind : what the raw sample is, as produced by the simulator and by ros/conversions.
    preprocess_id : name of the module in :mod:`omnibind_ros.core.preprocess` that handles it.
    ros_types : ROS message types a sensor of this modality may publish.
    """

    modality: Modality
    role: Role
    input_kind: str
    preprocess_id: str
    ros_types: tuple[str, ...]


MODALITY_SPECS: dict[Modality, ModalitySpec] = {
    spec.modality: spec
    for spec in (
        ModalitySpec(Modality.IMAGE, Role.TEACHER, "uint8 HxWx3 RGB image", "image",
                     ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")),
        ModalitySpec(Modality.TEXT, Role.TEACHER, "str", "text", ("std_msgs/msg/String",)),
        ModalitySpec(Modality.THERMAL, Role.STUDENT,
                     "HxW radiometric frame: uint16 counts, uint8, or float32 degC", "thermal",
                     ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")),
        ModalitySpec(Modality.EVENT, Role.STUDENT, "packed events x, y, t_ns, polarity", "event",
                     ("omnibind_ros/msg/EventArray", "event_camera_msgs/msg/EventPacket")),
        ModalitySpec(Modality.TACTILE, Role.STUDENT,
                     "uint8 HxWx3 vision-based tactile image (+ no-contact reference)", "tactile",
                     ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")),
        ModalitySpec(Modality.AUDIO, Role.STUDENT, "PCM chunks (rate, channels, samples)",
                     "audio", ("omnibind_ros/msg/AudioChunk", "audio_common_msgs/msg/AudioData",
                               "audio_common_msgs/msg/AudioDataStamped",
                               "audio_common_msgs/msg/AudioStamped")),
        ModalitySpec(Modality.POINT_CLOUD, Role.STUDENT, "float32 Nx3 points in sensor frame",
                     "point_cloud", ("sensor_msgs/msg/PointCloud2", "sensor_msgs/msg/Image",
                                     "sensor_msgs/msg/CompressedImage")),
    )
}

TEACHERS: tuple[Modality, ...] = tuple(
    m for m, s in MODALITY_SPECS.items() if s.role is Role.TEACHER)
STUDENTS: tuple[Modality, ...] = tuple(
    m for m, s in MODALITY_SPECS.items() if s.role is Role.STUDENT)
ALL_MODALITIES: tuple[Modality, ...] = tuple(MODALITY_SPECS)


def parse_modality(name: str | Modality) -> Modality:
    """Return the :class:`Modality` for ``name``; raise ``ValueError`` listing the valid names."""
    if isinstance(name, Modality):
        return name
    try:
        return Modality(str(name).strip().lower())
    except ValueError:
        valid = ", ".join(m.value for m in Modality)
        raise ValueError(f"unknown modality {name!r}; expected one of: {valid}") from None
