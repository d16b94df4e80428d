"""Training data: the simulated data set, core preprocessing, and the frozen-trunk feature cache.

Every sample goes through :mod:`omnibind_ros.core.preprocess` exactly as the runtime does (the
preprocessing config is the one the bundle will carry). A frozen trunk is then run once per
sample and its features are cached (fp16) under::

    <cache>/features/<data set name>/<kind>-<split>/<modality>-<key>.safetensors

where ``key`` hashes (data set fingerprint, trunk config, preprocess config, views, dtype), so a
change to any of them recomputes and nothing stale is ever read. Trainable trunks (PointNet)
cache their preprocessed inputs instead (``[N, P, 3]`` float32 point sets). Training-time
augmentation wraps the preprocessing: extra cached *views* are augmented copies of the
preprocessed input (view 0 is always the plain one), never a different preprocessing.

A sample whose payload cannot be preprocessed (a :class:`PreprocessError`, e.g. no object left
after ground removal) is marked invalid in the cache's ``valid`` mask; trainers skip it and the
fusion stage treats the modality as absent for it.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnibind_ros.core.errors import PreprocessError
from omnibind_ros.core.preprocess import build_config, build_preprocessor, default_configs
from omnibind_ros.core.preprocess.text import normalize_text
from omnibind_ros.sim.dataset import DatasetConfig, SimDataset, dataset_dir, generate

from .trainers.common import ConfigBase

FEATURE_FORMAT = 1
#: Sample attribute holding each modality's raw payload.
PAYLOAD_FIELD: dict[str, str] = {"image": "image", "text": "caption", "thermal": "thermal",
                                 "event": "events", "tactile": "tactile", "audio": "audio",
                                 "point_cloud": "points"}
#: Modalities whose runtime preprocessor keeps state (a fresh one per sample here).
STATEFUL = frozenset({"audio", "tactile"})
_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class DataConfig(ConfigBase):
    """Which data set, how it is preprocessed and how features are cached.

    Attributes
    ----------
    dataset : path of a data set config YAML (``omnibind_ros.sim.dataset.DatasetConfig``), or
        the config inline as a mapping.
    root : an existing data set directory to use instead of ``<cache>/datasets/<name>``.
    preprocess : modality -> overrides of the core preprocessing defaults (e.g.
        ``{"image": {"size": 192}}``); the result is stored in every checkpoint and the bundle.
    augment_views : modality -> number of cached views (1 = no augmentation; view 0 is plain).
    feature_dtype : dtype of cached trunk features (``"float16"`` or ``"float32"``).
    trunk_batch_size : samples per trunk forward when caching.
    trunk_runtime : ``"torch"``, ``"onnxruntime"`` or ``"auto"`` (ONNX Runtime for image-like
        frozen trunks on the CPU when it is installed: 3-5x faster than eager torch for
        EfficientNet here, and the runtime the bundle is served with; checked against torch on
        the first batch, torch is used if they disagree).
    workers : data generation processes (None: the data set config's).
    """

    dataset: str | dict[str, Any] = "config/sim_dataset.yaml"
    root: str | None = None
    preprocess: dict[str, dict[str, Any]] = field(default_factory=dict)
    augment_views: dict[str, int] = field(default_factory=dict)
    feature_dtype: str = "float16"
    trunk_batch_size: int = 64
    trunk_runtime: str = "auto"
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.trunk_runtime not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"trunk_runtime must be auto, torch or onnxruntime, "
                             f"got {self.trunk_runtime!r}")

    def dataset_config(self) -> DatasetConfig:
        """The :class:`DatasetConfig` (read from YAML when ``dataset`` is a path)."""
        if isinstance(self.dataset, Mapping):
            return DatasetConfig.from_dict(dict(self.dataset))
        return DatasetConfig.from_yaml(resolve_path(self.dataset))

    def dataset_root(self, cache_dir: str | os.PathLike[str] | None) -> Path:
        """Where the data set lives (``root`` or ``<cache>/datasets/<name>``)."""
        if self.root:
            return resolve_path(self.root, must_exist=False)
        return dataset_dir(self.dataset_config(), cache_dir)


def resolve_path(path: str | os.PathLike[str], *, must_exist: bool = True) -> Path:
    """An absolute path; a relative one is tried against the CWD, then the repository root."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    for base in (Path.cwd(), _REPO_ROOT):
        if (base / p).exists():
            return (base / p).absolute()
    if must_exist:
        raise FileNotFoundError(f"{path} not found in {Path.cwd()} or {_REPO_ROOT}")
    return (Path.cwd() / p).absolute()


def ensure_dataset(cfg: DataConfig, cache_dir: str | os.PathLike[str] | None, *,
                   progress: bool = True, overwrite: bool = False) -> Path:
    """Generate the data set if it is absent or partial (resumes); return its root.

    A data set of another config at the same place is an error (``ValueError``), and one
    rendered by other simulator code is kept with a warning, unless ``overwrite``: then either
    is deleted and regenerated (a current data set is never regenerated).
    """
    import warnings

    kwargs = {"root": cfg.dataset_root(cache_dir), "workers": cfg.workers,
              "progress": progress}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            root = generate(cfg.dataset_config(), cache_dir, **kwargs)
        except ValueError:
            if not overwrite:
                raise
            return generate(cfg.dataset_config(), cache_dir, overwrite=True, **kwargs)
    stale = [w for w in caught if "simulator code" in str(w.message)]
    if stale and overwrite:
        return generate(cfg.dataset_config(), cache_dir, overwrite=True, **kwargs)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return root


def dataset_fingerprint(root: str | os.PathLike[str]) -> str:
    """Identity of a generated data set: its config hash and simulator-code fingerprint."""
    manifest = json.loads((Path(root) / "manifest.json").read_text())
    return hash_json({"config": manifest["config_hash"], "code": manifest["code_fingerprint"]})


def hash_json(obj: Any) -> str:
    """16 hex chars of the SHA-256 of canonical JSON."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- preprocessing ----------------------------------------------------------------------------


def resolve_preprocess_configs(trunk_norms: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                               overrides: Mapping[str, Mapping[str, Any]],
                               prompt_templates: Sequence[str] | None = None
                               ) -> dict[str, dict[str, Any]]:
    """Every modality's full preprocessing config as a plain dict (validated by core).

    Parameters
    ----------
    trunk_norms : modality -> (mean, std) the image trunk's weights expect; applied to the
        ``image`` config (the camera feeds the ImageNet trunk directly). Other image-like
        modalities keep their own normalisation (event polarity channels, signed tactile
        differences, radiometric thermal) unless overridden.
    overrides : modality -> user overrides (win over everything).
    prompt_templates : label prompt templates for the text config (default: the simulator's
        :data:`omnibind_ros.sim.text.PROMPT_TEMPLATES`), so the bundle carries the ones used.
    """
    from omnibind_ros.sim.text import PROMPT_TEMPLATES

    configs = default_configs()
    if "image" in trunk_norms:
        mean, std = trunk_norms["image"]
        configs["image"].update(mean=list(mean), std=list(std))
    configs["text"]["prompt_templates"] = list(prompt_templates or PROMPT_TEMPLATES)
    for modality, changes in overrides.items():
        if modality not in configs:
            raise ValueError(f"preprocess override for unknown modality {modality!r}")
        configs[modality].update(changes)
    return {m: build_config(m, c).to_dict() for m, c in configs.items()}


class SamplePreprocessor:
    """Core preprocessing of one modality of simulator samples.

    Stateful runtime preprocessors (audio window, tactile reference) are built fresh for every
    sample, which is what the runtime sees for a just-arrived object: an audio window holding
    only this impact, a tactile frame with its own reference.

    Parameters
    ----------
    modality : modality name.
    config : its preprocessing config (dict).
    """

    def __init__(self, modality: str, config: Mapping[str, Any]) -> None:
        self.modality = modality
        self.config = build_config(modality, dict(config))
        self._shared = None if modality in STATEFUL else build_preprocessor(modality, self.config)

    def __call__(self, sample: Any) -> np.ndarray | str | None:
        """The model input of ``sample``'s payload, or None if absent / not preprocessable."""
        payload = getattr(sample, PAYLOAD_FIELD[self.modality], None)
        if payload is None:
            return None
        try:
            if self.modality == "audio":
                pre = build_preprocessor("audio", self.config)
                pre.push(payload)
                return pre.features(check=False)
            pre = self._shared or build_preprocessor(self.modality, self.config)
            return pre(payload)
        except PreprocessError:
            return None

    def blank(self) -> np.ndarray | str:
        """A placeholder input for invalid samples (zeros of the output shape / a word)."""
        if self.modality == "text":
            return "unknown"
        shape = build_preprocessor(self.modality, self.config).output_shape
        return np.zeros(shape, dtype=np.float32)


def augment_input(x: np.ndarray, modality: str, rng: np.random.Generator) -> np.ndarray:
    """A training-time augmentation of a preprocessed input (wraps, never replaces, it).

    Image-like ``[C, S, S]``: random horizontal flip and a shift of up to S/16 pixels (edge
    padding). Audio ``[1, M, T]``: a time shift of up to T/10 frames (zero fill).
    Point sets are augmented on the fly by the trainer instead (random rotation about the up
    axis), so they are returned unchanged.
    """
    if modality in ("point_cloud", "text"):
        return x
    if modality == "audio":
        t = x.shape[-1]
        shift = int(rng.integers(-(t // 10), t // 10 + 1))
        out = np.zeros_like(x)
        if shift >= 0:
            out[..., shift:] = x[..., :t - shift]
        else:
            out[..., :shift] = x[..., -shift:]
        return out
    if rng.random() < 0.5:
        x = x[..., ::-1]
    s = x.shape[-1]
    pad = max(1, s // 16)
    dy, dx = (int(v) for v in rng.integers(0, 2 * pad + 1, size=2))
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    return np.ascontiguousarray(padded[:, dy:dy + x.shape[-2], dx:dx + s])


# --- feature cache ----------------------------------------------------------------------------


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
    dedupe : encode each distinct input once (captions repeat: 16,200 -> ~1,800 here); for
        hashable inputs (text) and a single view.
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


# --- text: captions and labels ----------------------------------------------------------------


@torch.inference_mode()
def embed_texts(text_encoder: torch.nn.Module, texts: Sequence[str],
                text_config: Mapping[str, Any], *, batch_size: int = 256,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Unit text embeddings ``[N, D]`` of ``texts`` (core text normalisation, then the model)."""
    cfg = build_config("text", dict(text_config))
    tokenizer = text_encoder.tokenizer
    out = []
    for start in range(0, len(texts), batch_size):
        batch = [normalize_text(t, cfg) for t in texts[start:start + batch_size]]
        tokens = {k: v.to(device) for k, v in tokenizer(batch).items()}
        out.append(text_encoder(**tokens).float().cpu())
    return torch.cat(out)


def label_embeddings(text_encoder: torch.nn.Module, class_names: Sequence[str],
                     text_config: Mapping[str, Any], *,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Label embeddings ``[C, D]``: mean over the prompt templates, L2-normalised.

    Prompts come from :func:`omnibind_ros.sim.text.label_prompts` with the text config's
    ``prompt_templates``.
    """
    from omnibind_ros.sim.text import label_prompts

    prompts = label_prompts(class_names, text_config["prompt_templates"])
    flat = [p for name in class_names for p in prompts[name]]
    emb = embed_texts(text_encoder, flat, text_config, device=device)
    emb = emb.view(len(class_names), -1, emb.shape[-1]).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)
