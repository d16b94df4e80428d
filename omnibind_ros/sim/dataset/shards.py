"""Shards: samples packed into arrays and back, written atomically as uncompressed ``.npz``
and read member by member, memory-mapped (the layout is in the package docstring)."""
from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.core.modalities import Modality
from omnibind_ros.core.types import AudioBlock, EventPacket, TactileFrame, ThermalFrame
from omnibind_ros.sim.types import Sample

__all__ = ["flatten_sample", "pack_samples", "read_npz_member", "unpack_sample", "write_shard"]

#: Suffix of the offsets array ``<key>__offsets`` of a variable-length field.
_OFFSETS = "__offsets"


def flatten_sample(sample: Sample) -> dict[str, Any]:
    """A sample as ``{field name: array | scalar | str}``; absent modalities have no fields."""
    out: dict[str, Any] = {"seed": int(sample.seed), "class_index": int(sample.class_index),
                           "class_name": sample.class_name,
                           "nuisance": json.dumps(sample.nuisance, sort_keys=True,
                                                  default=_json_default)}
    if sample.caption is not None:
        out["caption"] = sample.caption
    if sample.image is not None:
        out["image"] = np.asarray(sample.image)
    if sample.thermal is not None:
        out["thermal.data"] = np.asarray(sample.thermal.data)
        out["thermal.encoding"] = sample.thermal.encoding
        out["thermal.kelvin_per_count"] = float(sample.thermal.kelvin_per_count)
    if sample.events is not None:
        ev = sample.events
        out.update({"events.x": ev.x, "events.y": ev.y, "events.t_ns": ev.t_ns,
                    "events.polarity": ev.polarity, "events.width": int(ev.width),
                    "events.height": int(ev.height)})
    if sample.tactile is not None:
        out["tactile.image"] = np.asarray(sample.tactile.image)
        if sample.tactile.reference is not None:
            out["tactile.reference"] = np.asarray(sample.tactile.reference)
    if sample.audio is not None:
        out["audio.samples"] = np.asarray(sample.audio.samples)
        out["audio.sample_rate"] = int(sample.audio.sample_rate)
    if sample.points is not None:
        out["points"] = np.asarray(sample.points)
    if sample.degradations:
        out["degradations"] = json.dumps(sample.degradations, sort_keys=True)
    return out


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Modality, Path)):
        return str(obj)
    raise TypeError(f"nuisance value of type {type(obj).__name__} is not JSON-serialisable")


def pack_samples(samples: Sequence[Sample]) -> dict[str, np.ndarray]:
    """Stack a list of samples into shard arrays (see the module docstring for the layout)."""
    if not samples:
        raise ValueError("cannot pack an empty list of samples")
    flat = [flatten_sample(s) for s in samples]
    if any("degradations" in f for f in flat):  # a shard of a degraded set: clean ones too
        for f in flat:
            f.setdefault("degradations", "{}")
    keys = list(flat[0])
    for i, f in enumerate(flat[1:], 1):
        if set(f) != set(keys):
            raise ValueError(f"sample {i} has fields {sorted(f)}, sample 0 has {sorted(keys)}: "
                             "a shard must hold one kind of sample")
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        values = [f[key] for f in flat]
        if not isinstance(values[0], np.ndarray):
            arrays[key] = np.asarray(values)
            continue
        shapes = {v.shape for v in values}
        if len(shapes) == 1:
            arrays[key] = np.stack(values)
        else:  # variable length along axis 0: concatenate, keep offsets
            if len({v.shape[1:] for v in values}) != 1:
                raise ValueError(f"field {key!r}: shapes {sorted(shapes)} differ beyond axis 0")
            arrays[key] = np.concatenate(values)
            arrays[key + _OFFSETS] = np.concatenate(
                [[0], np.cumsum([v.shape[0] for v in values])]).astype(np.int64)
    return arrays


def unpack_sample(arrays: Mapping[str, np.ndarray], i: int) -> Sample:
    """Rebuild sample ``i`` of a shard's arrays as a :class:`Sample` with core types."""
    def get(key: str) -> Any:
        if key + _OFFSETS in arrays:
            off = arrays[key + _OFFSETS]
            return np.array(arrays[key][off[i]:off[i + 1]])  # a copy, not a view of the file
        value = arrays[key][i]
        return value.item() if isinstance(value, np.generic) else np.array(value)

    has = arrays.__contains__
    sample = Sample(seed=int(get("seed")), class_index=int(get("class_index")),
                    class_name=str(get("class_name")),
                    nuisance=json.loads(str(get("nuisance"))) if has("nuisance") else {})
    if has("caption"):
        sample.caption = str(get("caption"))
    if has("image"):
        sample.image = get("image")
    if has("thermal.data"):
        sample.thermal = ThermalFrame(get("thermal.data"), str(get("thermal.encoding")),
                                      float(get("thermal.kelvin_per_count")))
    if has("events.x"):
        sample.events = EventPacket(get("events.x"), get("events.y"), get("events.t_ns"),
                                    get("events.polarity"), int(get("events.width")),
                                    int(get("events.height")))
    if has("tactile.image"):
        sample.tactile = TactileFrame(get("tactile.image"),
                                      get("tactile.reference") if has("tactile.reference")
                                      else None)
    if has("audio.samples"):
        sample.audio = AudioBlock(get("audio.samples"), int(get("audio.sample_rate")))
    if has("points"):
        sample.points = get("points")
    if has("degradations"):
        sample.degradations = json.loads(str(get("degradations")))
    return sample


def write_shard(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write an uncompressed ``.npz`` atomically: a temporary file, fsync, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_npz_member(path: Path, key: str, mmap: bool = True) -> np.ndarray:
    """One array of an ``.npz``; memory-mapped when the member is stored uncompressed."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(key + ".npy")
        if not mmap or info.compress_type != zipfile.ZIP_STORED:
            with zf.open(info) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # zip local file header; name and extra lengths at bytes 26..30
        name_len, extra_len = int.from_bytes(local[26:28], "little"), \
            int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}:{key} holds Python objects; refusing to load it")
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")

