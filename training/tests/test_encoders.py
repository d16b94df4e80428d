"""Encoders: EfficientNet weight mapping, text teacher, registry forward/backward, CLIP loading."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from omnibind_train.models import (
    EncoderConfig,
    HeadConfig,
    OpenClipVisionTrunk,
    build_encoder,
    get_encoder_config,
    list_encoders,
    open_clip_text_config,
    open_clip_vision_config,
)
from omnibind_train.models import efficientnet_lite as effnet
from omnibind_train.models.vit import TextTransformer, VisionTransformer

MILITARY_UNIFORM = 652  # ImageNet-1k class index


@pytest.fixture(scope="module")
def lukemelas_state() -> dict[str, torch.Tensor]:
    return torch.load(effnet.packaged_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def imagenet_model(lukemelas_state) -> effnet.EfficientNetLite0:
    model = effnet.EfficientNetLite0()
    effnet.load_lukemelas_state_dict(model, lukemelas_state)
    return model.eval()


# --- EfficientNet-Lite0 ------------------------------------------------------------------------


def test_packaged_state_dict_is_the_expected_one(lukemelas_state):
    assert len(lukemelas_state) == 296
    assert sum(not k.endswith("num_batches_tracked") for k in lukemelas_state) == 247


def test_mapping_consumes_every_tensor_in_order(lukemelas_state):
    model = effnet.EfficientNetLite0()
    assert effnet.load_lukemelas_state_dict(model, lukemelas_state) == 247
    src = [v for k, v in lukemelas_state.items() if not k.endswith("num_batches_tracked")]
    dst = [v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert all(torch.equal(s, d) for s, d in zip(src, dst, strict=True))
    assert torch.equal(model.stem[0].weight, lukemelas_state["_conv_stem.weight"])
    assert torch.equal(model.classifier.bias, lukemelas_state["_fc.bias"])


def test_mapping_without_classifier_skips_fc(lukemelas_state):
    model = effnet.EfficientNetLite0(num_classes=0)
    assert effnet.load_lukemelas_state_dict(model, lukemelas_state) == 245


def test_mapping_fails_loudly(lukemelas_state):
    bad = dict(lukemelas_state)
    bad["_blocks.3._depthwise_conv.weight"] = torch.zeros(144, 1, 3, 3)  # real one is 5x5
    with pytest.raises(ValueError, match="_blocks.3._depthwise_conv.weight"):
        effnet.load_lukemelas_state_dict(effnet.EfficientNetLite0(), bad)
    short = dict(lukemelas_state)
    del short["_bn1.bias"]
    with pytest.raises(ValueError, match="246 tensors"):
        effnet.load_lukemelas_state_dict(effnet.EfficientNetLite0(), short)


@pytest.mark.parametrize("kernel,size,before,after", [(3, 8, 0, 1), (5, 8, 1, 2), (3, 7, 1, 1)])
def test_same_padding_matches_tensorflow(kernel, size, before, after):
    """TF "SAME" at stride 2 pads total = max((ceil(n/2) - 1) * 2 + k - n, 0), the extra pixel
    after (bottom/right); the ImageNet weights were trained with it."""
    conv = effnet.SameConv2d(1, 1, kernel, stride=2, bias=False)
    x = torch.randn(1, 1, size, size)
    pad = (before, after, before, after)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, pad), conv.weight, stride=2)
    torch.testing.assert_close(conv(x), expected)


def _center_crop_224(rgb: np.ndarray) -> torch.Tensor:
    import cv2

    h, w = rgb.shape[:2]
    s = min(h, w)
    rgb = rgb[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    rgb = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float() / 255.0
    mean, std = torch.tensor(effnet.INPUT_MEAN), torch.tensor(effnet.INPUT_STD)
    return ((x - mean[:, None, None]) / std[:, None, None]).unsqueeze(0)


def test_imagenet_prediction_on_a_real_photo(imagenet_model):
    """Grace Hopper (matplotlib's sample photo, a base dependency) is in military uniform."""
    cbook = pytest.importorskip("matplotlib.cbook")
    import cv2

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    with torch.no_grad():
        probs = imagenet_model(_center_crop_224(rgb)).softmax(-1)[0]
    assert probs.argmax().item() == MILITARY_UNIFORM
    assert probs[MILITARY_UNIFORM] > 0.3


# --- text teacher -------------------------------------------------------------------------------


def test_text_similarity(text_encoder):
    tokens = text_encoder.tokenizer(["a photo of a metal mug", "a steel cup", "a wooden duck"])
    with torch.no_grad():
        emb = text_encoder(**tokens)
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.1


def test_text_padding_does_not_change_embedding(text_encoder):
    """Mean pooling must ignore padding: a short caption alone == padded in a batch."""
    short = "a red mug"
    with torch.no_grad():
        alone = text_encoder(**text_encoder.tokenizer([short]))
        batch = text_encoder(**text_encoder.tokenizer(
            [short, "a long caption about a wooden duck sitting on a metal table"]))
    torch.testing.assert_close(alone[0], batch[0], atol=1e-5, rtol=0)


# --- registry: every config -------------------------------------------------------------------


def _example_inputs(encoder) -> tuple[tuple, dict]:
    trunk = encoder.config.trunk
    if encoder.modality == "text":
        if encoder.tokenizer is not None:
            return (), encoder.tokenizer(["a metal mug", "a wooden duck on a table"])
        ids = torch.randint(1, trunk.vocab_size - 1, (2, 6))
        ids[:, -1] = trunk.vocab_size - 1  # CLIP pools at the end-of-text id (the largest)
        return (ids,), {}
    if encoder.modality == "point_cloud":
        return (torch.randn(2, 64, 3),), {}
    if encoder.modality == "audio":
        return (torch.randn(2, 1, 32, 40),), {}
    size = getattr(trunk, "image_size", 64)
    return (torch.randn(2, 3, size, size),), {}


@pytest.mark.parametrize("name", list_encoders())
def test_registered_encoder_forward_backward(name):
    encoder = build_encoder(name, load_weights=False).train()
    assert not encoder.trunk_frozen or not encoder.trunk.training  # BN stats stay frozen
    args, kwargs = _example_inputs(encoder)
    out = encoder(*args, **kwargs)
    assert out.shape == (2, encoder.embed_dim)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))

    counts = encoder.parameter_counts()
    trainable = encoder.trainable_parameters()
    assert counts["total"].trainable == sum(p.numel() for p in trainable)
    assert counts["total"].total == counts["trunk"].total + counts["head"].total
    if encoder.trunk_frozen:
        assert counts["trunk"].trainable == 0
        assert all(not p.requires_grad for p in encoder.trunk.parameters())
    if not trainable:  # frozen teacher with identity head: nothing to train
        assert not out.requires_grad
        return
    (out * torch.randn_like(out)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.head.parameters())
    trunk_grads = [p.grad is not None for p in encoder.trunk.parameters()]
    assert all(trunk_grads) if not encoder.trunk_frozen else not any(trunk_grads)


@pytest.mark.parametrize("name", list_encoders())
def test_config_round_trips_through_json(name):
    config = get_encoder_config(name)
    again = EncoderConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_config_rejects_unknown_fields():
    data = get_encoder_config("thermal_efficientnet_lite0").to_dict()
    data["trunk"]["colour"] = "blue"
    with pytest.raises(TypeError):
        EncoderConfig.from_dict(data)
    data["trunk"] = {"kind": "resnet"}
    with pytest.raises(ValueError, match="resnet"):
        EncoderConfig.from_dict(data)


def test_pretrained_student_uses_imagenet_trunk_and_caches(lukemelas_state):
    encoder = build_encoder("audio_efficientnet_lite0")
    stem = encoder.trunk.net.stem[0].weight
    assert torch.equal(stem, lukemelas_state["_conv_stem.weight"])
    mel = torch.randn(2, 1, 32, 40)
    features = encoder.encode_trunk(mel)
    assert features.shape == (2, 1280)
    torch.testing.assert_close(encoder.encode_features(features), encoder(mel))
    counts = encoder.parameter_counts()
    assert counts["trunk"].total == 3_371_008 and counts["trunk"].trainable == 0


def test_missing_clip_checkpoint_is_a_clear_error():
    with pytest.raises(ValueError, match="checkpoint"):
        build_encoder("image_open_clip_vit_b32")


# --- open_clip-style checkpoints ----------------------------------------------------------------

TINY_VISION = {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "heads": 1,
               "mlp_ratio": 4.0, "embed_dim": 16}
TINY_TEXT = {"context_length": 12, "vocab_size": 100, "width": 64, "layers": 2, "heads": 1,
             "mlp_ratio": 4.0, "embed_dim": 16}


def _tiny_clip_state() -> tuple[VisionTransformer, TextTransformer, dict[str, torch.Tensor]]:
    visual = VisionTransformer(act="gelu", **TINY_VISION).eval()
    text = TextTransformer(act="gelu", **TINY_TEXT).eval()
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    state.update(text.state_dict())
    state["logit_scale"] = torch.tensor(4.6052)
    return visual, text, state


def test_tiny_clip_uses_open_clip_key_names():
    _, _, state = _tiny_clip_state()
    for key in ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
                "visual.ln_pre.weight", "visual.transformer.resblocks.1.attn.in_proj_weight",
                "visual.transformer.resblocks.0.attn.out_proj.bias",
                "visual.transformer.resblocks.0.mlp.c_fc.weight", "visual.ln_post.bias",
                "visual.proj", "token_embedding.weight", "positional_embedding",
                "transformer.resblocks.1.mlp.c_proj.weight", "ln_final.weight",
                "text_projection"):
        assert key in state, key


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_clip_checkpoint_round_trip(tmp_path, fmt):
    visual, text, state = _tiny_clip_state()
    path = tmp_path / f"tiny_clip.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # a DDP-wrapped training checkpoint
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)

    image_cfg = open_clip_vision_config(path, act="gelu")
    assert {k: getattr(image_cfg.trunk, k) for k in TINY_VISION} == TINY_VISION
    image_enc = build_encoder(EncoderConfig.from_dict(image_cfg.to_dict()))
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(image_enc.encode_trunk(pixels), visual(pixels))
    assert image_enc(pixels).shape == (2, 384)  # LiT head into the MiniLM space by default

    text_enc = build_encoder(open_clip_text_config(path, act="gelu"))
    ids = torch.tensor([[5, 17, 99, 0], [8, 99, 0, 0]])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(text(ids), dim=-1)
        torch.testing.assert_close(text_enc(ids), expected)


def test_clip_checkpoint_with_wrong_architecture_fails(tmp_path):
    from safetensors.torch import save_file

    _, _, state = _tiny_clip_state()
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    wrong = OpenClipVisionTrunk(checkpoint=str(path), act="gelu", **{**TINY_VISION, "layers": 3})
    with pytest.raises(ValueError, match="resblocks.2"):
        build_encoder(EncoderConfig("image", wrong, HeadConfig(), 384))
