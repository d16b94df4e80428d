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

Modules: :mod:`.dataset` (config, generation, fingerprint), :mod:`.preprocess` (core
preprocessing of samples, augmentation), :mod:`.features` (the feature cache), :mod:`.text`
(caption and label embeddings).
"""
from .dataset import DataConfig, dataset_fingerprint, ensure_dataset, hash_json, resolve_path
from .features import (
    FEATURE_FORMAT,
    FeatureJob,
    FeatureSet,
    cached_features,
    extract_features,
    feature_key,
    feature_path,
    load_features,
    onnx_trunk_encode_fn,
    save_features,
    trunk_encode_fn,
)
from .preprocess import (
    PAYLOAD_FIELD,
    STATEFUL,
    SamplePreprocessor,
    augment_input,
    resolve_preprocess_configs,
)
from .text import embed_texts, label_embeddings

__all__ = [
    "FEATURE_FORMAT", "PAYLOAD_FIELD", "STATEFUL", "DataConfig", "FeatureJob", "FeatureSet",
    "SamplePreprocessor", "augment_input", "cached_features", "dataset_fingerprint",
    "embed_texts", "ensure_dataset", "extract_features", "feature_key", "feature_path",
    "hash_json", "label_embeddings", "load_features", "onnx_trunk_encode_fn",
    "resolve_preprocess_configs", "resolve_path", "save_features", "trunk_encode_fn",
]
