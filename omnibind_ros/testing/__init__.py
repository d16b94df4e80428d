"""Test helpers that ship with the runtime: they need only the base requirements (no torch, no
``omnibind_train``), so a colcon install can run the bundle, backend, node and bag tests.

:func:`write_test_bundle` writes a tiny, complete model bundle (every modality, a fusion head,
a text encoder with its tokenizer, labels) from ``onnx.helper`` graphs in a few tens of
milliseconds. Use it wherever a test needs *a* bundle rather than trained weights::

    import pytest
    from omnibind_ros.core.bundle import load_bundle
    from omnibind_ros.testing import TEST_LABELS, label_input, write_test_bundle

    @pytest.fixture(scope="module")
    def bundle_dir(tmp_path_factory):
        return write_test_bundle(tmp_path_factory.mktemp("bundle") / "tiny")

    def test_camera_recognises_a_label(bundle_dir):
        bundle = load_bundle(bundle_dir)
        x = label_input(bundle, "image", "metal can")   # model input [3, 32, 32]
        ...  # backend.encode("image", x[None]) is the "metal can" label embedding

``test/conftest.py`` also offers the session fixture ``tiny_bundle_dir`` (one shared, read-only
bundle with the defaults); a test that modifies a bundle writes its own.

Defaults (see :mod:`omnibind_ros.testing.bundle` for the graphs and their geometry):

=====================  =========================================================================
D                      :data:`TEST_DIM` = 32
modalities             :data:`TEST_MODALITIES`: image, thermal, event, tactile, audio,
                       point_cloud; inputs from :func:`tiny_preprocess_configs` (32 px images,
                       0.1 s of 16-mel audio ``[1, 16, 8]``, 64 points)
fusion                 kind ``"mean"``: normalised mean of the live tokens, dynamic token count
text                   WordPiece tokenizer (any ASCII word is spelled out, never ``[UNK]``),
                       ``max_length`` :data:`TEST_TEXT_MAX_LENGTH` = 32
labels                 :data:`TEST_LABELS` x :data:`TEST_TEMPLATES`, ``logit_scale``
                       :data:`TEST_LOGIT_SCALE` = 1 / 0.07
torch weights          none: the torch backend cannot run it (use ``omnibind_train.testing``)
=====================  =========================================================================
"""
from omnibind_ros.testing.bundle import (
    FUNCTION_WORD_SCALE,
    OPSET,
    TEST_DIM,
    TEST_LABELS,
    TEST_LOGIT_SCALE,
    TEST_MODALITIES,
    TEST_TEMPLATES,
    TEST_TEXT_MAX_LENGTH,
    label_input,
    tiny_preprocess_configs,
    write_test_bundle,
)

__all__ = [
    "FUNCTION_WORD_SCALE", "OPSET", "TEST_DIM", "TEST_LABELS", "TEST_LOGIT_SCALE",
    "TEST_MODALITIES", "TEST_TEMPLATES", "TEST_TEXT_MAX_LENGTH", "label_input",
    "tiny_preprocess_configs", "write_test_bundle",
]
