"""A travel-size copy of a model bundle and of a test-split subset, for bench_gpu.py elsewhere.

The default bundle (ONNX graphs + torch weights, ~350 MB) and the simulated data set (GBs) do
not fit the 64 MiB a remote GPU machine's working-tree copy may carry, and that machine cannot
render the simulator's samples (no pybullet) nor download weights. :func:`write_pack` writes a
folder that does fit:

* ``bundle.yaml``, the tokenizer files and the labels, as in the bundle;
* ``weights.safetensors``: every distinct tensor of the bundle's ``torch/*.safetensors`` once
  (the frozen EfficientNet trunk is shared by five encoders), float32 matrices of 4096+
  elements stored as float16; ``gpu_pack.json`` maps each file and key to its tensor;
* of the text encoder's word-embedding table, only the rows of the tokens the benchmark's
  prompts use (labels x templates and the latency prompt); other rows unpack as zeros, so the
  unpacked text encoder is faithful for those prompts only;
* ``test_inputs.npz``: ``per_class`` samples per class of the student test split, preprocessed
  as the runtime does (the bundle's configs), each stored as uint8 with a per-sample offset and
  scale (8-bit quantisation; every precision is then fed the same inputs);
* ``graphs/``: every component's ONNX graph, exported here from the rebuilt module with torch's
  TorchScript exporter (no constant folding; the bundle's own graphs came from the dynamo
  exporter) with its weights left out: each initializer that is a tensor of the component's
  torch weights is an external-data reference into ``<graph>.data``, a file the unpacking
  writes. Exporting needs the ``onnx`` package, which the GPU machine need not have.

:func:`write_pack` refuses to write into a path that is neither absent, an empty directory,
nor a pack (it replaces a pack).

:func:`unpack` turns a pack into an ordinary bundle directory: float32 safetensors, the ONNX
graphs with their external data written from those tensors, checksummed. Its FP32 model is the
float16-rounded weights in float32, which every compared system shares. It needs torch,
safetensors and the module builder (to see whether the text encoder can be rebuilt), not onnx.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import yaml

from omnibind_ros.core.bundle import BUNDLE_FILE, ModelBundle, checksum_tree, dump_manifest

PACK_FILE = "gpu_pack.json"
WEIGHTS_FILE = "weights.safetensors"
INPUTS_FILE = "test_inputs.npz"
GRAPHS_DIR = "graphs"
PACK_FORMAT = 2
_DATA_ALIGN = 64  # byte alignment of each tensor in a graph's external-data file
_HALF_MIN_ELEMENTS = 4096
_WORD_EMBEDDINGS = "word_embeddings.weight"


@dataclass
class TestSet:
    """Preprocessed test samples: ``inputs[m]`` float32 ``[n, *shape]`` with ``valid[m]`` bool
    ``[n]`` (False where preprocessing rejected the payload), ``labels`` indices into
    ``class_names``."""

    inputs: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    labels: np.ndarray
    class_names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return int(len(self.labels))


def is_pack(path: Path) -> bool:
    return (Path(path) / PACK_FILE).is_file()


# -- test split --------------------------------------------------------------------------------

def load_test_split(bundle: ModelBundle, per_class: int, root: Path | None = None
                    ) -> TestSet:
    """``per_class`` samples per class (0 = all) of the student test split, preprocessed.

    Needs the rendered data set (``config/sim_dataset.yaml``'s, or ``root``) and the training
    package (its ``SamplePreprocessor`` is what training evaluated with).
    """
    from omnibind_train.data.preprocess import SamplePreprocessor

    from omnibind_ros.sim.dataset import DatasetConfig, dataset_dir
    from omnibind_ros.sim.dataset.reader import SimDataset

    if root is None:
        repo = Path(__file__).resolve().parents[1]
        root = dataset_dir(DatasetConfig.from_yaml(repo / "config" / "sim_dataset.yaml"))
    ds = SimDataset(root, "test", "student")
    chosen = [int(i) for c in range(len(ds.class_names))
              for i in np.flatnonzero(ds.labels == c)[:per_class or None]]
    preps = {m: SamplePreprocessor(m, bundle.preprocess_configs[m].to_dict())
             for m in bundle.modalities}
    inputs = {m: np.zeros((len(chosen), *s.sample_shape), np.float32)
              for m, s in bundle.modalities.items()}
    valid = {m: np.zeros(len(chosen), bool) for m in bundle.modalities}
    for row, index in enumerate(chosen):
        sample = ds[index]
        for m, prep in preps.items():
            x = prep(sample)
            if x is not None:
                inputs[m][row], valid[m][row] = x, True
    return TestSet(inputs, valid, ds.labels[chosen], tuple(ds.class_names),
                   f"{root} student/test, {per_class or 'all'} per class ({len(chosen)})")


def _quantise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    flat = x.reshape(len(x), -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)
    q = np.rint((flat - lo[:, None]) / scale[:, None]).clip(0, 255).astype(np.uint8)
    return q.reshape(x.shape), lo.astype(np.float32), scale


def _dequantise(q: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    shape = (len(q),) + (1,) * (q.ndim - 1)
    return (q.astype(np.float32) * scale.reshape(shape) + lo.reshape(shape)).astype(np.float32)


# -- pack ---------------------------------------------------------------------------------------

def _prompt_token_ids(bundle: ModelBundle, prompts: Sequence[str]) -> np.ndarray:
    from omnibind_ros.core.backends.tokenizer import BundleTokenizer
    from omnibind_ros.core.preprocess.text import label_prompt

    templates = list(bundle.prompt_templates) or ["{}"]
    texts = [label_prompt(t, n) for n in bundle.label_names for t in templates] + list(prompts)
    ids, _ = BundleTokenizer(bundle.text)(texts)
    return np.unique(ids)


def check_pack_target(out: Path) -> None:
    """Raise :class:`FileExistsError` unless ``out`` is absent, an empty directory or a pack:
    :func:`write_pack` replaces what is there."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir() and not out.is_symlink() and (is_pack(out) or not any(out.iterdir())):
        return
    raise FileExistsError(f"{out} exists and is neither empty nor a pack ({PACK_FILE}): "
                          "refusing to replace it; name a new or empty directory")


def write_pack(bundle: ModelBundle, out: Path, *, test: TestSet | None,
               prompts: Sequence[str], builder: Any) -> dict[str, Any]:
    """Write the pack of ``bundle`` (and ``test``) to ``out``; returns its description.

    ``out`` must be absent, empty or an earlier pack (:func:`check_pack_target`); ``builder``
    is the torch module builder that rebuilds the components whose graphs are exported.
    """
    from safetensors.numpy import load_file, save_file

    out = Path(out)
    check_pack_target(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    root = bundle.root
    manifest = yaml.safe_load((root / BUNDLE_FILE).read_text())
    shutil.copy2(root / BUNDLE_FILE, out / BUNDLE_FILE)
    for rel in (manifest["text"]["tokenizer"]["dir"], manifest["labels"]["file"],
                manifest["labels"]["embeddings"]):
        src, dst = root / rel, out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    unique: dict[str, np.ndarray] = {}
    index: dict[str, dict[str, list[Any]]] = {}
    text_rows = _prompt_token_ids(bundle, prompts) if bundle.text is not None else None
    for rel in _weight_files(manifest):
        index[rel] = {}
        for key, value in load_file(str(root / rel)).items():
            original = str(value.dtype)
            if rel == manifest["text"].get("torch_weights") and key.endswith(_WORD_EMBEDDINGS):
                index[rel][key] = ["rows", original, list(value.shape)]
                unique[f"{key}.rows"] = value[text_rows].astype(np.float16)
                unique[f"{key}.ids"] = text_rows.astype(np.int64)
                continue
            if (value.dtype == np.float32 and value.ndim >= 2
                    and value.size >= _HALF_MIN_ELEMENTS and np.abs(value).max() < 6e4):
                value = value.astype(np.float16)
            tid = "t" + hashlib.sha1(value.tobytes() + str(value.shape).encode()).hexdigest()[:16]
            unique.setdefault(tid, np.ascontiguousarray(value))
            index[rel][key] = [tid, original]
    save_file(unique, str(out / WEIGHTS_FILE))
    from omnibind_train.export.onnx_io import quiet_export

    with quiet_export():
        graphs = _pack_graphs(manifest, root, out / GRAPHS_DIR, builder)
    desc: dict[str, Any] = {"format": PACK_FORMAT, "source": str(root),
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "weights": index,
                            "graphs": graphs, "prompts": list(prompts)}
    if test is not None:
        arrays: dict[str, np.ndarray] = {"labels": test.labels,
                                         "class_names": np.asarray(test.class_names)}
        for m, x in test.inputs.items():
            arrays[f"x_{m}"], arrays[f"lo_{m}"], arrays[f"scale_{m}"] = _quantise(x)
            arrays[f"valid_{m}"] = test.valid[m]
        np.savez_compressed(out / INPUTS_FILE, **arrays)
        desc["test"] = {"source": test.source, "samples": len(test),
                        "quantisation": "uint8 per sample (offset + scale)"}
    (out / PACK_FILE).write_text(json.dumps(desc, indent=1))
    desc["bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return desc


def _weight_files(manifest: Mapping[str, Any]) -> list[str]:
    files = [e["torch_weights"] for e in manifest["modalities"].values() if e.get("torch_weights")]
    for section in ("fusion", "text"):
        if (manifest.get(section) or {}).get("torch_weights"):
            files.append(manifest[section]["torch_weights"])
    return files


# -- unpack -------------------------------------------------------------------------------------

def load_pack_test_set(pack: Path) -> TestSet | None:
    path = Path(pack) / INPUTS_FILE
    if not path.is_file():
        return None
    data = np.load(path)
    modalities = [k[2:] for k in data.files if k.startswith("x_")]
    desc = json.loads((Path(pack) / PACK_FILE).read_text()).get("test", {})
    return TestSet({m: _dequantise(data[f"x_{m}"], data[f"lo_{m}"], data[f"scale_{m}"])
                    for m in modalities},
                   {m: data[f"valid_{m}"].astype(bool) for m in modalities},
                   data["labels"].astype(np.int64), tuple(str(c) for c in data["class_names"]),
                   f"{pack} ({desc.get('source', '?')}; {desc.get('quantisation', '')})")


def _print_note(text: str) -> None:
    print(f"[note] {text}", flush=True)


def unpack(pack: Path, out: Path, builder: Any,
           note: Callable[[str], None] = _print_note) -> Path:
    """Write an ordinary bundle directory at ``out`` from ``pack`` (see the module docstring).

    ``builder`` is the torch module builder (``omnibind_ros.torch_builders``); a text encoder
    it cannot rebuild here (an ImportError) is left out of the unpacked bundle, and ``note``
    is called with the reason.
    """
    from safetensors.numpy import load_file, save_file

    pack, out = Path(pack), Path(out)
    desc = json.loads((pack / PACK_FILE).read_text())
    if desc.get("format") != PACK_FORMAT:
        raise ValueError(f"{pack}: pack format {desc.get('format')} (expected {PACK_FORMAT}); "
                         "write it again with bench_gpu.py --pack")
    shutil.copytree(pack, out, ignore=shutil.ignore_patterns(PACK_FILE, WEIGHTS_FILE,
                                                             INPUTS_FILE, GRAPHS_DIR))
    unique = load_file(str(pack / WEIGHTS_FILE))
    states: dict[str, dict[str, np.ndarray]] = {}
    for rel, keys in desc["weights"].items():
        state = {}
        for key, (tid, dtype, *shape) in keys.items():
            if tid == "rows":
                table = np.zeros(shape[0], np.float32)
                table[unique[f"{key}.ids"]] = unique[f"{key}.rows"]
                state[key] = table
            else:
                state[key] = unique[tid].astype(dtype)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(out / rel))
        states[rel] = state
    for rel, graph in desc["graphs"].items():
        _unpack_graph(pack / GRAPHS_DIR / rel, out / rel, graph, states[graph["weights"]])
    manifest = yaml.safe_load((out / BUNDLE_FILE).read_text())
    if manifest.get("text"):
        reason = _text_unbuildable(manifest, out, builder)
        if reason:
            note(f"text skipped: the text encoder cannot be rebuilt here ({reason}); the "
                 "unpacked bundle has none")
            manifest["text"] = None
    if manifest.get("text") is None:
        manifest.pop("text", None)
    manifest.pop("files", None)
    manifest["files"] = checksum_tree(out)
    dump_manifest(manifest, out / BUNDLE_FILE)
    return out


def _module(builder: Any, component: str, config: Mapping[str, Any], weights: Path,
            bundle: Any) -> Any:
    from safetensors.torch import load_model

    module = builder(component, config, bundle)
    load_model(module, str(weights), strict=True)
    return module.eval()


def _axes(spec: Mapping[str, Any]) -> dict[int, str]:
    return {i: d for i, d in enumerate(spec["shape"]) if isinstance(d, str)}


def _example(spec: Mapping[str, Any], sizes: Mapping[str, int]) -> Any:
    import torch

    shape = [sizes.get(d, 2) if isinstance(d, str) else d for d in spec["shape"]]
    if spec["dtype"] == "bool":
        return torch.ones(shape, dtype=torch.bool)
    if spec["dtype"] == "int64":
        return torch.ones(shape, dtype=torch.int64)
    return torch.randn(shape)


def _reference(manifest: Mapping[str, Any], root: Path) -> SimpleNamespace:
    """What the builder reads of a bundle: its root and the text tokenizer directory (the
    text model's config)."""
    tokenizer = (manifest.get("text") or {}).get("tokenizer", {}).get("dir")
    return SimpleNamespace(root=root, text=SimpleNamespace(tokenizer_dir=root / tokenizer)
                           if tokenizer else None)


def _jobs(manifest: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """(component, config, torch weights, ONNX file, input specs, output spec) per component."""
    jobs = []
    for entry in manifest["modalities"].values():
        enc = entry["encoder"]
        jobs.append(("encoder", entry["encoder_config"], entry["torch_weights"], enc["file"],
                     [enc["input"]], enc["output"]))
    if manifest.get("fusion"):
        f = manifest["fusion"]
        jobs.append(("fusion", f["config"], f["torch_weights"], f["file"], f["inputs"],
                     f["output"]))
    if manifest.get("text"):
        t = manifest["text"]
        jobs.append(("text", t["encoder_config"], t["torch_weights"], t["encoder"]["file"],
                     t["encoder"]["inputs"], t["encoder"]["output"]))
    return jobs


def _pack_graphs(manifest: Mapping[str, Any], root: Path, out: Path, builder: Any
                 ) -> dict[str, Any]:
    """Export every component of the bundle at ``root`` with the TorchScript exporter into
    ``out`` (same relative paths), each initializer that equals a tensor of the component's
    torch weights turned into an external-data reference; returns, per graph, the weights file
    and the (key, offset, length) of every externalised tensor."""
    import onnx
    import torch
    from onnx.external_data_helper import set_external_data
    from safetensors.numpy import load_file

    ref = _reference(manifest, root)
    sizes = {"batch": 2, "tokens": 3, "sequence": 8}
    graphs: dict[str, Any] = {}
    for component, config, weights, rel, inputs, output in _jobs(manifest):
        module = _module(builder, component, config, root / weights, ref)
        args = tuple(_example(s, sizes) for s in inputs)
        axes = {s["name"]: _axes(s) for s in [*inputs, output]}
        buffer = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(module, args, buffer, input_names=[s["name"] for s in inputs],
                              output_names=[output["name"]], dynamic_axes=axes, dynamo=False,
                              opset_version=int(manifest.get("export", {}).get("opset", 18)),
                              do_constant_folding=False)
        model = onnx.load_model_from_string(buffer.getvalue())
        state = load_file(str(root / weights))
        data = Path(rel).name + ".data"
        tensors, offset, inline = [], 0, 0
        for init in model.graph.initializer:
            value = state.get(init.name)
            if (value is None or not init.HasField("raw_data")
                    or init.raw_data != np.ascontiguousarray(value).tobytes()):
                inline += len(init.raw_data)
                continue
            offset = -(-offset // _DATA_ALIGN) * _DATA_ALIGN
            set_external_data(init, data, offset, len(init.raw_data))
            init.data_location = onnx.TensorProto.EXTERNAL
            init.ClearField("raw_data")
            tensors.append([init.name, offset, int(value.nbytes)])
            offset += int(value.nbytes)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(model.SerializeToString())
        graphs[rel] = {"weights": weights, "data": data, "tensors": tensors,
                       "inline_bytes": inline}
    return graphs


def _unpack_graph(src: Path, dst: Path, graph: Mapping[str, Any],
                  state: Mapping[str, np.ndarray]) -> None:
    """Copy the graph ``src`` to ``dst`` and write its external-data file from ``state``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)
    with open(dst.parent / graph["data"], "wb") as f:
        for key, offset, length in graph["tensors"]:
            raw = np.ascontiguousarray(state[key]).tobytes()
            if len(raw) != length:
                raise ValueError(f"{dst}: tensor {key} has {len(raw)} bytes, the graph expects "
                                 f"{length}")
            f.seek(offset)
            f.write(raw)


def _text_unbuildable(manifest: Mapping[str, Any], root: Path, builder: Any) -> str | None:
    """Why ``builder`` cannot rebuild the text encoder here (it may need packages the GPU
    machine lacks), or None when it can."""
    try:
        builder("text", manifest["text"]["encoder_config"], _reference(manifest, root))
    except ImportError as exc:
        return str(exc)
    return None
