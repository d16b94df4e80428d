"""The frozen-trunk feature cache: per-sample trunk features (or preprocessed inputs for trainable
trunks) of one modality of one split, keyed by content, computed once with torch or ONNX Runtime
and stored as safetensors."""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnibind_ros.sim.dataset import SimDataset

from .dataset import hash_json
from .preprocess import SamplePreprocessor, augment_input

FEATURE_FORMAT = 1


@dataclass
class FeatureSet:
    """Cached per-sample tensors of one modality of one split.

    Attributes
    ----------
    values : ``[V, N, F]`` trunk features (V views), or ``[1, N, P, 3]`` preprocessed points.
    valid : ``[N]`` bool, False where the payload could not be preprocessed.
    key : the cache key it was stored under.
    """

    values: torch.Tensor
    valid: torch.Tensor
    key: str

    @property
    def num_samples(self) -> int:
        return int(self.valid.shape[0])


@dataclass
class FeatureJob:
    """One modality to cache in a pass over a split.

    Attributes
    ----------
    modality : modality name.
    preprocess : its sample preprocessor.
    encode : list of preprocessed inputs -> ``[B, F]`` trunk features; None caches the inputs.
    views : cached views (augmentation when > 1).
    dtype : storage dtype of the values.
    key : cache key.
    path : cache file.
    seed : seeds the augmentation of views >= 1.
    dedupe : encode each distinct input once (captions repeat, so there are far fewer distinct
        ones than samples); for hashable inputs (text) and a single view.
    """

    modality: str
    preprocess: SamplePreprocessor
    encode: Callable[[list[Any]], torch.Tensor] | None
    views: int
    dtype: torch.dtype
    key: str
    path: Path
    seed: int = 0
    dedupe: bool = False


def feature_key(dataset_fp: str, modality: str, trunk: Mapping[str, Any] | None,
                preprocess: Mapping[str, Any], views: int, dtype: str) -> str:
    """Cache key: (data set, trunk config or "inputs", preprocess config, views, dtype)."""
    return hash_json({"format": FEATURE_FORMAT, "dataset": dataset_fp, "modality": modality,
                      "trunk": trunk if trunk is not None else "inputs",
                      "preprocess": dict(preprocess), "views": views, "dtype": dtype})


def feature_path(cache_dir: str | os.PathLike[str], dataset_name: str, kind: str, split: str,
                 modality: str, key: str) -> Path:
    """Where a cached :class:`FeatureSet` lives."""
    return (Path(cache_dir) / "features" / dataset_name / f"{kind}-{split}"
            / f"{modality}-{key}.safetensors")


def save_features(path: Path, fs: FeatureSet, meta: Mapping[str, Any]) -> None:
    """Write a feature set atomically (safetensors; ``meta`` as JSON metadata)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    save_file({"values": fs.values.contiguous(), "valid": fs.valid.contiguous()}, str(tmp),
              metadata={"key": fs.key, "meta": json.dumps(dict(meta), default=str)})
    os.replace(tmp, path)


def load_features(path: Path) -> FeatureSet:
    """Read a feature set written by :func:`save_features`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        key = f.metadata()["key"]
        return FeatureSet(f.get_tensor("values"), f.get_tensor("valid").bool(), key)


def trunk_encode_fn(encoder: torch.nn.Module, device: torch.device | str = "cpu",
                    ) -> Callable[[list[Any]], torch.Tensor]:
    """``inputs -> [B, F]`` trunk features of a frozen encoder (tokenises text)."""
    tokenizer = getattr(encoder, "tokenizer", None)

    @torch.inference_mode()
    def encode(inputs: list[Any]) -> torch.Tensor:
        if tokenizer is not None:
            tokens = {k: v.to(device) for k, v in tokenizer(list(inputs)).items()}
            return encoder.encode_trunk(**tokens).float().cpu()
        x = torch.from_numpy(np.stack(inputs)).to(device)
        return encoder.encode_trunk(x).float().cpu()

    return encode


_ORT_SESSIONS: dict[str, Any] = {}


def onnx_trunk_encode_fn(encoder: torch.nn.Module, onnx_path: Path, example: np.ndarray, *,
                         atol: float = 1e-3) -> Callable[[list[Any]], torch.Tensor] | None:
    """ONNX Runtime version of :func:`trunk_encode_fn` for an image-like frozen trunk.

    The trunk is exported once to ``onnx_path`` (dynamic batch; one file and one session per
    trunk config, shared by the modalities that use it); the session is checked against torch
    on ``example`` (``[B, ...]`` preprocessed inputs) and None is returned when onnxruntime is
    missing, the export fails or the outputs differ by more than ``atol``, so the caller falls
    back to torch.
    """
    import warnings

    try:
        session = _ort_session(encoder, onnx_path, example)
    except Exception as exc:  # noqa: BLE001 - any export/runtime failure means: use torch
        warnings.warn(f"ONNX Runtime trunk unavailable ({exc}); using torch", stacklevel=2)
        return None
    if session is None:
        return None

    def encode(inputs: list[Any]) -> torch.Tensor:
        batch = np.ascontiguousarray(np.stack(inputs), dtype=np.float32)
        return torch.from_numpy(session.run(None, {"x": batch})[0])

    with torch.inference_mode():
        reference = encoder.encode_trunk(torch.from_numpy(np.ascontiguousarray(example))).float()
    if not torch.allclose(encode(list(example)), reference, atol=atol, rtol=1e-3):
        warnings.warn("ONNX Runtime trunk differs from torch; using torch", stacklevel=2)
        return None
    return encode


def _ort_session(encoder: torch.nn.Module, onnx_path: Path, example: np.ndarray) -> Any:
    """The (cached) ONNX Runtime session of ``encoder.trunk``, exporting it if needed."""
    import warnings

    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if str(onnx_path) in _ORT_SESSIONS:
        return _ORT_SESSIONS[str(onnx_path)]
    if not onnx_path.exists():
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = onnx_path.with_name(f".{onnx_path.name}.tmp.{os.getpid()}")
        x = torch.from_numpy(np.ascontiguousarray(example))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(encoder.trunk.eval(), (x,), str(tmp), input_names=["x"],
                              output_names=["features"], dynamic_axes={"x": {0: "batch"}},
                              opset_version=17, dynamo=False)
        os.replace(tmp, onnx_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    _ORT_SESSIONS[str(onnx_path)] = session
    return session


def _prepare(job: FeatureJob, samples: Sequence[Any], start: int
             ) -> tuple[list[list[Any]], np.ndarray]:
    """Preprocessed inputs per view (``[V][B]``) and the valid mask ``[B]`` of a chunk."""
    raw = [job.preprocess(s) for s in samples]
    ok = np.array([r is not None for r in raw])
    blank = None if ok.all() else job.preprocess.blank()
    plain = [r if r is not None else blank for r in raw]
    views = [plain]
    for v in range(1, job.views):
        views.append([augment_input(x, job.modality, np.random.default_rng(
            [job.seed, start + i, v])) if isinstance(x, np.ndarray) else x
            for i, x in enumerate(plain)])
    return views, ok


def extract_features(ds: SimDataset, jobs: Sequence[FeatureJob], *, batch_size: int = 64,
                     progress: bool = True, desc: str = "features") -> dict[str, FeatureSet]:
    """One pass over ``ds``: preprocess every sample for every job, run the trunks, collect.

    Returns modality -> :class:`FeatureSet` (not yet saved).
    """
    from tqdm import tqdm

    n = len(ds)
    chunks: dict[str, list[torch.Tensor]] = {j.modality: [] for j in jobs}
    pending: dict[str, list[Any]] = {j.modality: [] for j in jobs if j.dedupe}
    valid = {j.modality: np.zeros(n, dtype=bool) for j in jobs}
    with tqdm(total=n, desc=desc, unit="sample", disable=not progress, dynamic_ncols=True,
              mininterval=1.0) as bar:
        for start in range(0, n, batch_size):
            samples = [ds[i] for i in range(start, min(start + batch_size, n))]
            for job in jobs:
                views, ok = _prepare(job, samples, start)
                valid[job.modality][start:start + len(samples)] = ok
                if job.dedupe:
                    pending[job.modality].extend(views[0])
                    continue
                if job.encode is None:
                    out = torch.stack([torch.from_numpy(np.stack(v)) for v in views])
                else:
                    out = torch.stack([job.encode(v) for v in views])
                chunks[job.modality].append(out.to(job.dtype))
            bar.update(len(samples))
    for job in jobs:
        if job.dedupe:
            chunks[job.modality] = [_encode_unique(job, pending[job.modality], batch_size)]
    return {j.modality: FeatureSet(torch.cat(chunks[j.modality], dim=1),
                                   torch.from_numpy(valid[j.modality]), j.key) for j in jobs}


def _encode_unique(job: FeatureJob, inputs: list[Any], batch_size: int) -> torch.Tensor:
    """``[1, N, F]`` features of ``inputs``, running the trunk once per distinct input."""
    assert job.encode is not None, "dedupe needs a trunk"
    unique = list(dict.fromkeys(inputs))
    where = {x: i for i, x in enumerate(unique)}
    feats = torch.cat([job.encode(unique[i:i + batch_size])
                       for i in range(0, len(unique), batch_size)])
    return feats[torch.tensor([where[x] for x in inputs], dtype=torch.long)].to(job.dtype)[None]


def cached_features(ds: SimDataset, jobs: Sequence[FeatureJob], *, batch_size: int = 64,
                    progress: bool = True, desc: str = "features",
                    meta: Mapping[str, Any] | None = None) -> dict[str, FeatureSet]:
    """Load the jobs' feature sets from the cache, computing (one pass) and saving the missing."""
    out: dict[str, FeatureSet] = {}
    todo = []
    for job in jobs:
        if job.path.exists():
            fs = load_features(job.path)
            if fs.key == job.key and fs.num_samples == len(ds):
                out[job.modality] = fs
                continue
        todo.append(job)
    if todo:
        fresh = extract_features(ds, todo, batch_size=batch_size, progress=progress,
                                 desc=f"{desc} ({'+'.join(j.modality for j in todo)})")
        for job in todo:
            save_features(job.path, fresh[job.modality], {**(meta or {}),
                                                          "modality": job.modality})
        out.update(fresh)
    return out
