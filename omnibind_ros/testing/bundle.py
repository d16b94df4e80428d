"""A tiny model bundle written with ``onnx.helper``: linear encoders, a masked-mean fusion head
and a bag-of-words text encoder, with no torch and no training package.

Every graph is a few ONNX operators over seeded random weights (``seed`` and the component name
seed each one, so adding a modality leaves the others' weights unchanged):

* ``encoders/<modality>.onnx``: ``input [batch, *sample_shape]`` -> Flatten -> MatMul with
  ``projection`` ``[F, D]`` -> L2 norm -> ``unit_embedding [batch, D]``. ``projection`` has
  orthonormal columns (when F >= D), so an encoder is the orthogonal projection of the
  flattened input onto a D-dimensional subspace, then normalised. The preprocessing configs are
  the defaults shrunk to small inputs (:func:`tiny_preprocess_configs`: 32 px images, a 0.1 s
  16-mel audio window, 64 points), so the runtime's real preprocessors feed these graphs.
* ``fusion/mean_head.onnx`` (kind ``"mean"``): ``tokens [batch, tokens, D]`` + bool
  ``mask [batch, tokens]`` -> mean of the live tokens -> L2 norm -> ``fused [batch, D]``.
  Padded tokens may hold anything, NaN included (they are selected away with ``Where``); a row
  without a live token gives zeros. Batch and token axes are dynamic.
* ``text/text_encoder.onnx``: ``input_ids`` + ``attention_mask`` int64 ``[batch, sequence]``
  -> Gather from an embedding table ``[V, D]`` -> mean over the unmasked tokens -> L2 norm.
* ``text/tokenizer/tokenizer.json``: a WordPiece tokenizer built with the ``tokenizers``
  library (BERT normaliser: lower case, accents stripped; BERT pre-tokeniser: whitespace and
  punctuation). Its vocabulary is ``[PAD]``, ``[UNK]``, a fixed list of common words, every
  word of the labels and prompt templates, and every lower-case ASCII letter, digit and
  punctuation mark both as a word start and as a ``##`` continuation. A word outside the
  list is therefore spelled out letter by letter instead of becoming ``[UNK]``, so arbitrary
  label names ("red apple", "blue chair") still get distinct embeddings. The real MiniLM
  vocabulary is not used because it ships in a model package of the training requirements.
* ``labels/labels.yaml`` + ``labels/label_embeddings.npy``: the labels and their embeddings,
  computed by running the written text graph through ONNX Runtime with
  :func:`omnibind_ros.core.backends.embed_labels`, exactly as the perception node embeds
  labels; the manifest's ``labels.logit_scale`` is ``logit_scale``.

Geometry. Words of the prompt templates and a list of function words ("a", "the", "photo",
punctuation, ...) get embedding rows scaled by :data:`FUNCTION_WORD_SCALE`, so a prompt's
embedding is dominated by its label words and the default labels' embeddings are nearly
orthogonal (random directions in D dimensions). An encoder can reproduce any unit vector: for
``e`` in the encoder's range, the input ``projection @ e`` encodes to exactly ``e``.
:func:`label_input` builds that input for a label, so a test can assert that an encoder, the
fusion of several encoders and the label scoring pick that label.

The bundle is a pure function of the arguments (byte-identical files for equal arguments on one
machine) and is written in a few tens of milliseconds.
"""
from __future__ import annotations

import math
import shutil
import string
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import omnibind_ros
from omnibind_ros.core.bundle import (
    BUNDLE_FILE,
    FORMAT_VERSION,
    ModelBundle,
    checksum_tree,
    dump_manifest,
    load_bundle,
)
from omnibind_ros.core.modalities import Modality
from omnibind_ros.core.preprocess import build_config, build_preprocessor

__all__ = [
    "FUNCTION_WORD_SCALE", "OPSET", "TEST_DIM", "TEST_LABELS", "TEST_LOGIT_SCALE",
    "TEST_MODALITIES", "TEST_TEMPLATES", "TEST_TEXT_MAX_LENGTH", "label_input",
    "tiny_preprocess_configs", "write_test_bundle",
]

#: Embedding size D of the default test bundle.
TEST_DIM = 32
#: Default label names (C = 5).
TEST_LABELS: tuple[str, ...] = ("wooden mug", "metal can", "rubber duck", "plastic cube",
                                "fabric ball")
#: Default prompt templates: a label's embedding is the normalised mean over them.
TEST_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a {}.")
#: Every modality with an array encoder, in the canonical order (text has its own encoder).
TEST_MODALITIES: tuple[str, ...] = tuple(m.value for m in Modality if m is not Modality.TEXT)
#: ``labels.logit_scale`` of the manifest: 1 / tau with the usual contrastive tau = 0.07.
TEST_LOGIT_SCALE = 1.0 / 0.07
#: Tokenizer truncation length of the default bundle.
TEST_TEXT_MAX_LENGTH = 32
#: ONNX opset of every graph (the training exporter's too).
OPSET = 18
#: Norm of the embedding rows of template and function words relative to content words.
FUNCTION_WORD_SCALE = 0.1

_IR_VERSION = 8  # the IR version of opset 18; readable by every supported ONNX Runtime
_PAD, _UNK = "[PAD]", "[UNK]"
_TOKENIZER_NAME = "omnibind_ros.testing wordpiece"
_CHARACTERS = string.ascii_lowercase + string.digits + string.punctuation
_FUNCTION_WORDS = frozenset({
    "a", "an", "the", "of", "on", "in", "at", "with", "and", "or", "to", "for", "from", "is",
    "it", "this", "that", "there", "photo", "picture", "image", "object", "thing",
    *string.punctuation})
_COMMON_WORDS = (
    # objects, shapes and materials the tests, the simulated world and the demos talk about
    "mug", "cup", "can", "duck", "bunny", "torus", "cone", "teddy", "bear", "cube", "ball",
    "box", "bottle", "chair", "apple", "teapot", "metal", "metallic", "steel", "wooden", "wood",
    "plastic", "rubber", "fabric", "glass", "ceramic", "red", "green", "blue", "yellow",
    "black", "white", "small", "large", "hot", "cold", "nothing",
)
_ENCODER_INPUT, _EMBEDDING_OUTPUT = "input", "unit_embedding"
_TEXT_INPUTS = ("input_ids", "attention_mask")
_FUSION_INPUTS, _FUSION_OUTPUT = ("tokens", "mask"), "fused"
_PROJECTION = "projection"


def tiny_preprocess_configs(modalities: Sequence[str] = TEST_MODALITIES, *,
                            text_max_length: int = TEST_TEXT_MAX_LENGTH,
                            prompt_templates: Sequence[str] = TEST_TEMPLATES
                            ) -> dict[str, dict[str, Any]]:
    """The default preprocessing configs shrunk to small model inputs, as full config dicts.

    image, thermal, event, tactile: ``[3, 32, 32]``; audio: a 0.1 s window of 16 mel bands
    (``[1, 16, 8]``); point cloud: ``[64, 3]``; text: ``text_max_length`` tokens and the
    prompt templates. Keys: ``modalities`` plus ``"text"``.
    """
    small: dict[str, dict[str, Any]] = {
        "image": {"size": 32}, "thermal": {"size": 32}, "event": {"size": 32},
        "tactile": {"size": 32},
        # 0.1 s at 16 kHz, n_fft 400, hop 160 -> 8 frames of 16 mel bands
        "audio": {"window_s": 0.1, "n_mels": 16, "fmax": 8000.0},
        "point_cloud": {"num_points": 64},
        "text": {"tokenizer": _TOKENIZER_NAME, "max_length": int(text_max_length),
                 "prompt_templates": list(prompt_templates)},
    }
    unknown = sorted(set(modalities) - set(small) - {"text"})
    if unknown:
        raise ValueError(f"no test encoder for {unknown}; known: {list(TEST_MODALITIES)}")
    return {m: build_config(m, small[m]).to_dict() for m in (*modalities, "text")}


def write_test_bundle(out_dir: str | Path, *, dim: int = TEST_DIM, seed: int = 0,
                      labels: Sequence[str] = TEST_LABELS,
                      prompt_templates: Sequence[str] = TEST_TEMPLATES,
                      modalities: Sequence[str] = TEST_MODALITIES,
                      logit_scale: float | None = TEST_LOGIT_SCALE,
                      text_max_length: int = TEST_TEXT_MAX_LENGTH,
                      overwrite: bool = False) -> Path:
    """Write the test bundle (see the module docstring) to ``out_dir``.

    Parameters
    ----------
    out_dir : directory to create; it may exist if it is empty (or ``overwrite``).
    dim : embedding size D.
    seed : seeds every weight (and nothing else).
    labels : label names; their embeddings are computed from the written text encoder.
    prompt_templates : templates with one ``{}`` each (labels and text preprocessing).
    modalities : array modalities to give an encoder, a subset of :data:`TEST_MODALITIES`.
    logit_scale : the manifest's ``labels.logit_scale``; None leaves it out.
    text_max_length : tokenizer truncation length.
    overwrite : replace whatever ``out_dir`` holds.

    Returns
    -------
    Path
        ``out_dir``, which :func:`~omnibind_ros.core.bundle.load_bundle` accepts.
    """
    import onnx  # noqa: F401  (fail early and clearly when the runtime requirements lack it)

    out_dir = Path(out_dir)
    modalities = tuple(getattr(m, "value", m) for m in modalities)
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities repeat: {list(modalities)}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty (pass overwrite=True)")
        if out_dir.is_dir():
            shutil.rmtree(out_dir)
        else:
            out_dir.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)

    preprocess = tiny_preprocess_configs(modalities, text_max_length=text_max_length,
                                         prompt_templates=prompt_templates)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "embedding_dim": dim,
        "modalities": {m: _write_encoder(out_dir, m, preprocess[m], dim, seed)
                       for m in modalities},
        "fusion": _write_fusion(out_dir, dim),
        "text": _write_text(out_dir, preprocess["text"], labels, prompt_templates, dim, seed),
        "labels": _write_labels(out_dir, labels, prompt_templates, dim, logit_scale),
        "versions": _versions(),
        "export": {"opset": OPSET, "writer": "omnibind_ros.testing.write_test_bundle"},
        "provenance": {"kind": "runtime test bundle", "seed": seed,
                       "encoders": "linear projection + L2 norm",
                       "fusion": "masked mean + L2 norm", "text": "mean of word embeddings"},
    }
    _finish(out_dir, manifest)
    # Label embeddings the way the runtime computes them, from the files just written.
    from omnibind_ros.core.backends import embed_labels
    from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend

    bundle = load_bundle(out_dir, verify=False)
    backend = OnnxRuntimeBackend(bundle, threads=1, modalities=modalities[:1], fusion=False)
    try:
        embeddings = embed_labels(backend, list(labels))
    finally:
        backend.close()
    np.save(out_dir / "labels" / "label_embeddings.npy", embeddings, allow_pickle=False)
    _finish(out_dir, manifest)
    return out_dir


def label_input(bundle: ModelBundle | str | Path, modality: str,
                label: str | np.ndarray) -> np.ndarray:
    """A model input of ``modality`` that the test bundle's encoder maps onto a label.

    Parameters
    ----------
    bundle : a bundle written by :func:`write_test_bundle` (or its path).
    modality : one of its array modalities.
    label : a label name of the bundle, or any vector ``[D]`` (normalised here).

    Returns
    -------
    float32 ``[*sample_shape]``: the minimum-norm input whose encoding is the label's embedding
    (cosine 1 up to float32 rounding), scaled so that its values have a root mean square of 1.
    Adding noise to it moves the encoding away from the label gradually.

    Raises
    ------
    ValueError
        Unknown modality or label, or an encoder not written by :func:`write_test_bundle`.
    """
    import onnx
    from onnx import numpy_helper

    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle)
    modality = getattr(modality, "value", modality)
    if modality not in bundle.modalities:
        raise ValueError(f"bundle {bundle.root} has no {modality!r} encoder; it has "
                         f"{list(bundle.modalities)}")
    if isinstance(label, str):
        if label not in bundle.label_names:
            raise ValueError(f"{label!r} is not a label of {bundle.root}: "
                             f"{list(bundle.label_names)}")
        target = np.asarray(bundle.label_embeddings[bundle.label_names.index(label)],
                            dtype=np.float64)
    else:
        target = np.asarray(label, dtype=np.float64).reshape(-1)
        if target.shape != (bundle.dim,) or not np.linalg.norm(target) > 0:
            raise ValueError(f"a target vector must be a non-zero [{bundle.dim}], got "
                             f"{list(np.shape(label))}")
    spec = bundle.modalities[modality]
    weights = {t.name: t for t in onnx.load(str(spec.file)).graph.initializer}
    if _PROJECTION not in weights:
        raise ValueError(f"{spec.file} has no {_PROJECTION!r} weight: not an encoder written by "
                         "omnibind_ros.testing.write_test_bundle")
    projection = numpy_helper.to_array(weights[_PROJECTION]).astype(np.float64)  # [F, D]
    target /= np.linalg.norm(target)
    # The minimum-norm x with x @ P = target: x = P (P^T P)^-1 target.
    flat = projection @ np.linalg.solve(projection.T @ projection, target)
    flat *= math.sqrt(flat.size) / max(float(np.linalg.norm(flat)), 1e-12)
    return flat.reshape(spec.sample_shape).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Graphs


def _rng(seed: int, component: str) -> np.random.Generator:
    """A generator seeded by (seed, component): each component's weights stand alone."""
    return np.random.default_rng([int(seed), zlib.crc32(component.encode())])


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], initializers: list[Any],
           name: str) -> Any:
    from onnx import checker, helper

    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="omnibind_ros.testing", ir_version=_IR_VERSION)
    checker.check_model(model)
    return model


def _save(model: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())


def _constants() -> list[Any]:
    """Scalars and axes shared by the graphs' L2 norm and masked means."""
    from onnx import numpy_helper

    return [numpy_helper.from_array(np.array([-1], np.int64), "last_axis"),
            numpy_helper.from_array(np.array([1], np.int64), "token_axis"),
            numpy_helper.from_array(np.array([2], np.int64), "feature_axis"),
            numpy_helper.from_array(np.array(1e-12, np.float32), "eps"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero")]


def _l2_normalise(source: str, target: str) -> list[Any]:
    """``target = source / max(||source||, eps)`` over the last axis."""
    from onnx import helper

    return [helper.make_node("Mul", [source, source], ["squares"]),
            helper.make_node("ReduceSum", ["squares", "last_axis"], ["sum_squares"],
                             keepdims=1),
            helper.make_node("Sqrt", ["sum_squares"], ["norm"]),
            helper.make_node("Max", ["norm", "eps"], ["safe_norm"]),
            helper.make_node("Div", [source, "safe_norm"], [target])]


def _masked_mean(values: str, mask: str, target: str) -> list[Any]:
    """``target = sum(values where mask) / max(count(mask), 1)`` over axis 1.

    ``values`` is ``[B, N, D]``, ``mask`` bool ``[B, N, 1]``; masked-out values may be NaN.
    """
    from onnx import TensorProto, helper

    return [helper.make_node("Where", [mask, values, "zero"], ["live_values"]),
            helper.make_node("ReduceSum", ["live_values", "token_axis"], ["value_sum"],
                             keepdims=0),
            helper.make_node("Cast", [mask], ["mask_float"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["mask_float", "token_axis"], ["live_count"],
                             keepdims=0),
            helper.make_node("Max", ["live_count", "one"], ["safe_count"]),
            helper.make_node("Div", ["value_sum", "safe_count"], [target])]


def _tensor_spec(name: str, shape: Sequence[int | str], dtype: str) -> dict[str, Any]:
    return {"name": name, "shape": list(shape), "dtype": dtype}


def _projection(features: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``[features, dim]`` with orthonormal columns (Gaussian columns when features < dim)."""
    gaussian = rng.standard_normal((features, dim))
    if features < dim:
        return (gaussian / math.sqrt(features)).astype(np.float32)
    # G L^-T with G^T G = L L^T (Cholesky) has orthonormal columns; cheaper than a QR.
    lower = np.linalg.cholesky(gaussian.T @ gaussian)
    return (gaussian @ np.linalg.inv(lower).T).astype(np.float32)


def _write_encoder(root: Path, modality: str, preprocess: dict[str, Any], dim: int,
                   seed: int) -> dict[str, Any]:
    from onnx import TensorProto, helper, numpy_helper

    shape = tuple(build_preprocessor(modality, preprocess).output_shape)
    features = math.prod(shape)
    weights = _projection(features, dim, _rng(seed, f"encoder:{modality}"))
    nodes = [helper.make_node("Flatten", [_ENCODER_INPUT], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", _PROJECTION], ["projected"]),
             *_l2_normalise("projected", _EMBEDDING_OUTPUT)]
    model = _model(
        nodes,
        [helper.make_tensor_value_info(_ENCODER_INPUT, TensorProto.FLOAT, ["batch", *shape])],
        [helper.make_tensor_value_info(_EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(weights, _PROJECTION), *_constants()],
        f"{modality}_encoder")
    rel = f"encoders/{modality}.onnx"
    _save(model, root / rel)
    return {"encoder": {"file": rel,
                        "input": _tensor_spec(_ENCODER_INPUT, ["batch", *shape], "float32"),
                        "output": _tensor_spec(_EMBEDDING_OUTPUT, ["batch", dim], "float32")},
            "preprocess": preprocess,
            "encoder_config": {"modality": modality, "kind": "linear", "features": features,
                               "embed_dim": dim}}


def _write_fusion(root: Path, dim: int) -> dict[str, Any]:
    from onnx import TensorProto, helper

    tokens, mask = _FUSION_INPUTS
    nodes = [helper.make_node("Unsqueeze", [mask, "feature_axis"], ["mask3"]),
             *_masked_mean(tokens, "mask3", "mean"),
             *_l2_normalise("mean", _FUSION_OUTPUT)]
    model = _model(
        nodes,
        [helper.make_tensor_value_info(tokens, TensorProto.FLOAT, ["batch", "tokens", dim]),
         helper.make_tensor_value_info(mask, TensorProto.BOOL, ["batch", "tokens"])],
        [helper.make_tensor_value_info(_FUSION_OUTPUT, TensorProto.FLOAT, ["batch", dim])],
        _constants(), "mean_fusion")
    rel = "fusion/mean_head.onnx"
    _save(model, root / rel)
    return {"file": rel, "kind": "mean", "config": {"kind": "mean", "dim": dim},
            "inputs": [_tensor_spec(tokens, ["batch", "tokens", dim], "float32"),
                       _tensor_spec(mask, ["batch", "tokens"], "bool")],
            "output": _tensor_spec(_FUSION_OUTPUT, ["batch", dim], "float32")}


# ---------------------------------------------------------------------------------------------
# Text


def _words(texts: Sequence[str]) -> list[str]:
    """The words the tokenizer's normaliser and pre-tokeniser cut ``texts`` into."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    pre = pre_tokenizers.BertPreTokenizer()
    return [w for t in texts for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(t))]


def _vocabulary(labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    words = set(_COMMON_WORDS) | set(_words([*labels, *(t.replace("{}", " ") for t in templates)]))
    words = {w for w in words if w.isascii()} - set(_CHARACTERS)
    return [_PAD, _UNK, *sorted(words), *_CHARACTERS, *(f"##{c}" for c in _CHARACTERS)]


def _tokenizer(vocab: Sequence[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token=_UNK,
                                           max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def _write_text(root: Path, preprocess: dict[str, Any], labels: Sequence[str],
                templates: Sequence[str], dim: int, seed: int) -> dict[str, Any]:
    from onnx import TensorProto, helper, numpy_helper

    vocab = _vocabulary(labels, templates)
    function_words = _FUNCTION_WORDS | set(_words([t.replace("{}", " ") for t in templates]))
    table = _rng(seed, "text:embeddings").standard_normal((len(vocab), dim))
    for i, word in enumerate(vocab):
        if word in function_words:
            table[i] *= FUNCTION_WORD_SCALE
    table[vocab.index(_PAD)] = 0.0
    ids, attention = _TEXT_INPUTS
    nodes = [helper.make_node("Gather", ["word_embeddings", ids], ["token_embeddings"], axis=0),
             helper.make_node("Unsqueeze", [attention, "feature_axis"], ["attention3"]),
             helper.make_node("Cast", ["attention3"], ["live3"], to=TensorProto.BOOL),
             *_masked_mean("token_embeddings", "live3", "mean"),
             *_l2_normalise("mean", _EMBEDDING_OUTPUT)]
    model = _model(
        nodes,
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
         for n in _TEXT_INPUTS],
        [helper.make_tensor_value_info(_EMBEDDING_OUTPUT, TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(table.astype(np.float32), "word_embeddings"), *_constants()],
        "text_encoder")
    rel = "text/text_encoder.onnx"
    _save(model, root / rel)
    (root / "text" / "tokenizer").mkdir(parents=True, exist_ok=True)
    _tokenizer(vocab).save(str(root / "text" / "tokenizer" / "tokenizer.json"))
    return {"encoder": {"file": rel,
                        "inputs": [_tensor_spec(n, ["batch", "sequence"], "int64")
                                   for n in _TEXT_INPUTS],
                        "output": _tensor_spec(_EMBEDDING_OUTPUT, ["batch", dim], "float32")},
            "tokenizer": {"dir": "text/tokenizer", "file": "text/tokenizer/tokenizer.json",
                          "files": ["tokenizer.json"],
                          "max_length": int(preprocess["max_length"]),
                          "pad_id": vocab.index(_PAD), "pad_token": _PAD},
            "preprocess": preprocess,
            "encoder_config": {"kind": "mean of word embeddings", "vocab_size": len(vocab),
                               "embed_dim": dim}}


def _write_labels(root: Path, labels: Sequence[str], templates: Sequence[str], dim: int,
                  logit_scale: float | None) -> dict[str, Any]:
    (root / "labels").mkdir(parents=True, exist_ok=True)
    content = {"names": list(labels), "prompt_templates": list(templates)}
    (root / "labels" / "labels.yaml").write_text(
        yaml.safe_dump(content, sort_keys=False, allow_unicode=True), encoding="utf-8")
    # A placeholder until the text encoder can embed the labels (write_test_bundle).
    np.save(root / "labels" / "label_embeddings.npy", np.zeros((len(labels), dim), np.float32),
            allow_pickle=False)
    section: dict[str, Any] = {"file": "labels/labels.yaml",
                               "embeddings": "labels/label_embeddings.npy",
                               "count": len(labels)}
    if logit_scale is not None:
        section["logit_scale"] = float(logit_scale)
    return section


def _versions() -> dict[str, Any]:
    import onnx
    import tokenizers

    return {"omnibind_ros": omnibind_ros.__version__, "onnx": onnx.__version__,
            "tokenizers": tokenizers.__version__, "opset": OPSET}


def _finish(root: Path, manifest: dict[str, Any]) -> None:
    manifest["files"] = checksum_tree(root)
    dump_manifest(manifest, root / BUNDLE_FILE)
