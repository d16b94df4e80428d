"""A teaching bag turned into training tensors: pairs of (camera frame, new-sensor sample).

Two passes over the bag through :mod:`omnibind_ros.bag_inputs` (the node's conversion and the
core preprocessing, no rclpy): the first collects the stamps of the messages the sensors'
stages accept and pairs them (:func:`~omnibind_train.teach.pairing.pair_nearest`); the second
preprocesses the paired messages, and encodes, in batches:

* camera frames with the *bundle's* image encoder (its ONNX graph through the runtime's ONNX
  Runtime backend): the teacher embedding ``E_v`` of seed 000 Eq. 2-7 is exactly what the robot
  computes for that frame;
* new-sensor samples with the student's frozen trunk (cached features, the head is what CAD
  trains; ``augment_views`` > 1 adds views of the pipeline's training augmentation, flips and
  shifts), or kept as preprocessed inputs when the trunk is trainable.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnibind_ros.bag_inputs import (
    BagInputError,
    InputCounts,
    InputSpec,
    admitted_stamps,
    iter_inputs,
    resolve_topic,
)
from omnibind_ros.core.bundle import ModelBundle

from ..data.preprocess import augment_input
from ..models.encoders import ModalityEncoder
from .bundle_io import TeachError
from .config import TeachConfig
from .pairing import Pairing, pair_nearest

__all__ = ["BagData", "bag_topics", "read_bag", "student_features"]

NS = 1_000_000_000


@dataclass
class BagData:
    """The paired samples of a teaching bag.

    Attributes
    ----------
    image : ``[P, D]`` unit teacher embeddings of the paired camera frames.
    values : ``[V, P, F]`` trunk features (frozen trunk; view 0 plain, the others augmented)
        or ``[1, P, ...]`` preprocessed inputs of the paired new-sensor samples (the
        ``StudentData.values`` layout).
    stamps_ns : ``[P]`` the new-sensor samples' stamps.
    samples : ``{"image": [k, ...], modality: [k, ...]}`` a few preprocessed inputs of each (the
        export's parity checks).
    pairing : the pairing (indices into the admitted messages of each sensor).
    counts : sensor name -> what became of its messages.
    topics : ``{"camera": (topic, type), "sensor": (topic, type)}``.
    info : the bag's ``BagInfo``.
    damage : the error that ended reading a damaged bag, if any.
    """

    image: torch.Tensor
    values: torch.Tensor
    stamps_ns: np.ndarray
    samples: dict[str, torch.Tensor]
    pairing: Pairing
    counts: dict[str, InputCounts]
    topics: dict[str, tuple[str, str]]
    info: Any
    damage: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.stamps_ns.size)


def _bar(enabled: bool, total: int, desc: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="msg", disable=not enabled, dynamic_ncols=True,
               mininterval=1.0, leave=False)
    return bar.update, bar.close


def student_features(student: ModalityEncoder, cfg: TeachConfig, cache_dir: Path,
                     example: np.ndarray) -> Callable[[list[np.ndarray]], torch.Tensor] | None:
    """``inputs -> [B, F]`` trunk features of a frozen-trunk student (ONNX Runtime when it
    reproduces torch on ``example``, as the pipeline's feature cache does), or None for a
    trainable trunk (its inputs are kept)."""
    if not student.trunk_frozen:
        return None
    from ..data import hash_json, onnx_trunk_encode_fn, trunk_encode_fn

    fn = None
    if cfg.trunk_runtime != "torch" and cfg.device == "cpu":
        trunk = {"kind": student.config.trunk.kind,
                 **dataclasses.asdict(student.config.trunk)}
        path = cache_dir / "features" / "_trunks" / f"{hash_json(trunk)}.onnx"
        fn = onnx_trunk_encode_fn(student, path, example)
    return fn or trunk_encode_fn(student, cfg.device)


def bag_topics(bag: str | Path, cfg: TeachConfig) -> tuple[Any, dict[str, tuple[str, str]]]:
    """(the bag's ``BagInfo``, ``{"camera": (topic, type), "sensor": (topic, type)}``).

    A new sensor whose type the camera shares (thermal, tactile, depth images) is found by its
    topic name when not given (:func:`~omnibind_ros.bag_inputs.resolve_topic`), so a bag with
    only a camera is refused rather than read as one.

    Raises
    ------
    FileNotFoundError : no such bag.
    TeachError : unreadable bag, a topic missing or of the wrong type, no camera.
    """
    from omnibind_ros.bag.reader import BagReadError, open_info
    from omnibind_ros.core.modalities import MODALITY_SPECS, Modality, parse_modality

    try:
        info = open_info(Path(bag))
    except BagReadError as exc:
        raise TeachError(f"nothing of bag {bag} is readable: {exc}") from exc
    shared = set(MODALITY_SPECS[parse_modality(cfg.modality)].ros_types) & set(
        MODALITY_SPECS[Modality.IMAGE].ros_types)
    try:
        sensor = resolve_topic(info, cfg.modality, cfg.topic, role=f"new {cfg.modality} sensor",
                               exclude=[cfg.camera_topic] if cfg.camera_topic else (),
                               need_hint=bool(shared))
    except BagInputError as exc:
        raise TeachError(f"{exc} (the new sensor: --topic)") from None
    try:
        camera = resolve_topic(info, "image", cfg.camera_topic, role="camera (the image teacher)",
                               exclude=[sensor[0]])
    except BagInputError as exc:
        raise TeachError(f"{exc}. Teaching needs the camera: the image teacher labels the new "
                         "sensor's samples through their time-aligned frames") from None
    if camera[0] == sensor[0]:
        raise TeachError(f"the camera and the new sensor are the same topic {camera[0]}")
    for role, (topic, _) in (("new sensor", sensor), ("camera", camera)):
        if info.topics[topic][1] == 0:
            raise TeachError(f"topic {topic} (the {role}) has no messages in bag {bag}: was "
                             "its driver running while recording?")
    return info, {"camera": camera, "sensor": sensor}


def read_bag(bag: str | Path, cfg: TeachConfig, bundle: ModelBundle, student: ModalityEncoder,
             preprocess: Mapping[str, Any], cache_dir: Path) -> BagData:
    """Pair and encode a teaching bag (see the module docstring).

    Raises
    ------
    FileNotFoundError : no such bag.
    TeachError : see :func:`bag_topics`; no image encoder in the bundle; no sensor sample
        with a camera frame within the tolerance (the message gives the counts).
    """
    from omnibind_ros.core.backends import create_backend

    bag = Path(bag)
    if "image" not in bundle.modalities:
        raise TeachError(f"bundle {bundle.root} has no image encoder: the camera's encoder is "
                         "the teacher")
    info, topics = bag_topics(bag, cfg)
    specs = [InputSpec("camera", "image", *topics["camera"],
                       bundle.preprocess_configs["image"].to_dict()),
             InputSpec(cfg.modality, cfg.modality, *topics["sensor"], dict(preprocess))]
    total = sum(info.topics[t][1] for t, _ in topics.values())
    update, close = _bar(cfg.progress, total, "teach: stamps")
    try:
        admitted, _, damage = admitted_stamps(bag, specs, progress=update)
    finally:
        close()
    cam, sen = admitted["camera"], admitted[cfg.modality]
    pairing = pair_nearest([a.stamp_ns for a in sen], [a.stamp_ns for a in cam],
                           round(cfg.tolerance_s * NS))
    if len(pairing) == 0:
        raise TeachError(
            f"no {cfg.modality} message of bag {bag} has a camera frame within "
            f"{cfg.tolerance_s * 1e3:.0f} ms ({len(sen)} usable {cfg.modality} messages on "
            f"{topics['sensor'][0]}, {len(cam)} camera frames on {topics['camera'][0]}); are "
            "both sensors stamped on one clock? (raise tolerance_s if they are)")
    wanted = {"camera": {cam[i].seq for i in pairing.camera.tolist()},
              cfg.modality: {sen[i].seq for i in pairing.sensor.tolist()}}
    backend = create_backend("onnxruntime", bundle, threads=max(1, torch.get_num_threads()),
                             modalities=["image"], fusion=False, text=False)
    image_emb: dict[int, np.ndarray] = {}
    feats: dict[int, torch.Tensor] = {}
    pending: dict[str, list[tuple[int, np.ndarray]]] = {"camera": [], cfg.modality: []}
    samples: dict[str, list[np.ndarray]] = {"image": [], cfg.modality: []}
    encode_sensor: list[Any] = []  # lazily: the trunk (and its ONNX export) only when needed

    def flush(name: str) -> None:
        batch = pending[name]
        if not batch:
            return
        x = [b[1] for b in batch]
        if name == "camera":
            out = backend.encode("image", np.ascontiguousarray(np.stack(x), dtype=np.float32))
            image_emb.update({seq: e for (seq, _), e in zip(batch, out, strict=True)})
        else:
            if not encode_sensor:
                encode_sensor.append(student_features(student, cfg, cache_dir,
                                                      np.stack(x[:2])))
            fn = encode_sensor[0]
            if fn is None:  # a trainable trunk trains on the inputs themselves
                rows = torch.from_numpy(np.stack(x)).float()[:, None]
            else:  # [B, V, F]: view 0 plain, views >= 1 augmented as the pipeline's cache does
                rows = torch.stack([fn(x if v == 0 else [
                    augment_input(xi, cfg.modality, np.random.default_rng([cfg.seed, seq, v]))
                    for (seq, _), xi in zip(batch, x, strict=True)])
                    for v in range(max(1, cfg.augment_views))], dim=1)
            feats.update({seq: r for (seq, _), r in zip(batch, rows, strict=True)})
        batch.clear()

    counts: dict[str, InputCounts] = {}
    update, close = _bar(cfg.progress, total, "teach: encode")
    try:
        for name, adm, x in iter_inputs(bag, specs, wanted, progress=update, counts=counts):
            if x is None:
                continue
            key = "image" if name == "camera" else name
            if len(samples[key]) < max(2, cfg.export.sample_batch):
                samples[key].append(np.array(x, dtype=np.float32))
            pending[name].append((adm.seq, x))
            if len(pending[name]) >= cfg.encode_batch:
                flush(name)
        for name in pending:
            flush(name)
    finally:
        close()
    ok = [k for k in range(len(pairing)) if cam[pairing.camera[k]].seq in image_emb
          and sen[pairing.sensor[k]].seq in feats]
    if not ok:
        raise TeachError(f"every paired {cfg.modality} sample or camera frame of bag {bag} "
                         f"failed preprocessing: {counts}")
    keep = np.asarray(ok, dtype=np.int64)
    pairing = Pairing(pairing.sensor[keep], pairing.camera[keep], pairing.offset_ns[keep],
                      pairing.num_sensor, pairing.num_camera, pairing.tolerance_ns)
    image = torch.from_numpy(np.stack([image_emb[cam[i].seq] for i in pairing.camera.tolist()]))
    values = torch.stack([feats[sen[i].seq] for i in pairing.sensor.tolist()], dim=1)
    return BagData(
        image=torch.nn.functional.normalize(image.float(), dim=-1), values=values,
        stamps_ns=np.asarray([sen[i].stamp_ns for i in pairing.sensor.tolist()], np.int64),
        samples={k: torch.from_numpy(np.stack(v)) for k, v in samples.items() if v},
        pairing=pairing, counts=counts, topics=topics, info=info, damage=damage)
