"""UniAlign's model: the frozen backbone with MoE-LoRA (LoRA B = 0 leaves it unchanged, frozen
parameters get no gradient), the CLIP checkpoint loaders (open_clip and timm layouts), the
tokenizers, the parameter formula against built modules, and the label vocabularies."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from omnibind_train.binding.experts.uni3d import farthest_point_sample
from omnibind_train.models.vit import VisionTransformer
from omnibind_train.unialign.backbone import (
    BackboneConfig,
    MoEConfig,
    UniViT,
    build_clip_visual,
    load_clip_visual,
)
from omnibind_train.unialign.model import UniAlignModel, UniAlignModelConfig
from omnibind_train.unialign.params import lora_moe_params, paper_accounting, parameter_report
from omnibind_train.unialign.tokenizers import PatchTokenizer, PointTokenizer, farthest_points
from omnibind_train.unialign.vocab import DATASET_CLASSES, vocab_for

TINY = BackboneConfig(image_size=32, patch_size=8, width=32, layers=2, heads=2, embed_dim=16,
                      text_dim=12)
SHAPES = {"image": [3, 32, 32], "thermal": [3, 32, 32], "audio": [1, 24, 40],
          "point_cloud": [64, 3]}
TOKENIZERS = {"thermal": {"channels": [0], "patch": 8, "stride": 8},
              "audio": {"channels": [0], "patch": 8, "stride": 6},
              "point_cloud": {"kind": "point", "groups": 4, "group_size": 8,
                              "point_widths": [8, 16, 16]}}


def tiny_model(**moe) -> UniAlignModel:
    torch.manual_seed(0)
    cfg = UniAlignModelConfig.from_dict({
        "backbone": TINY.to_dict(), "modalities": ["thermal", "audio", "point_cloud"],
        "moe": moe, "tokenizers": TOKENIZERS, "input_shapes": SHAPES,
        "teacher_dims": {"thermal": 10, "point_cloud": 6}})
    return UniAlignModel(cfg).freeze()


def test_fresh_lora_leaves_the_frozen_clip_unchanged() -> None:
    """B = 0: any modality's routing through the experts computes exactly the frozen tower."""
    torch.manual_seed(1)
    visual = build_clip_visual(TINY).eval()
    reference = copy.deepcopy(visual)
    uni = UniViT(visual, ["thermal", "audio"], MoEConfig())
    x = torch.randn(3, 3, 32, 32)
    want = reference(x)
    for modality in ("thermal", "audio", "image"):
        got = uni(uni.image_tokens(x), modality) @ uni.visual.proj
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_trained_experts_change_only_their_modality() -> None:
    torch.manual_seed(2)
    uni = UniViT(build_clip_visual(TINY).eval(), ["thermal", "audio"], MoEConfig())
    tokens = uni.image_tokens(torch.randn(2, 3, 32, 32))
    before = {m: uni(tokens, m) for m in ("thermal", "audio", "image")}
    for block in uni.visual.transformer.resblocks:
        moe = block.mlp.moe["ffn"]
        for i in moe.expert_indices("thermal"):
            torch.nn.init.normal_(moe.experts[i].B.weight)
    after = {m: uni(tokens, m) for m in ("thermal", "audio", "image")}
    assert not torch.allclose(before["thermal"], after["thermal"])
    torch.testing.assert_close(before["audio"], after["audio"])
    torch.testing.assert_close(before["image"], after["image"])


@pytest.mark.parametrize("placement", ["parallel", "fc"])
def test_frozen_parameters_receive_no_gradient(placement: str) -> None:
    model = tiny_model(placement=placement).train()
    loss = 0
    for m in ("thermal", "audio", "point_cloud"):
        x = torch.randn(4, *SHAPES[m])
        loss = loss + sum(v.square().sum() for v in model.outputs(m, x).values())
    loss.backward()
    trainable = {id(p) for ps in model.trainable_parameters().values() for p in ps}
    for name, p in model.named_parameters():
        if id(p) in trainable:
            continue
        assert p.grad is None, f"frozen {name} got a gradient"
    assert all(p.grad is not None for p in model.tokenizers.parameters())
    lora_b = [p for n, p in model.backbone.named_parameters() if n.endswith(".B.weight")]
    assert lora_b and any(p.grad.abs().sum() > 0 for p in lora_b)


def _open_clip_state(visual: VisionTransformer) -> dict[str, torch.Tensor]:
    return {f"visual.{k}": v.clone() for k, v in visual.state_dict().items()}


def _timm_state(visual: VisionTransformer) -> dict[str, torch.Tensor]:
    """The same weights under timm's ``vit_*_clip_*`` names (written out by hand here)."""
    s = visual.state_dict()
    out = {"patch_embed.proj.weight": s["conv1.weight"],
           "cls_token": s["class_embedding"][None, None],
           "pos_embed": s["positional_embedding"][None], "norm_pre.weight": s["ln_pre.weight"],
           "norm_pre.bias": s["ln_pre.bias"], "norm.weight": s["ln_post.weight"],
           "norm.bias": s["ln_post.bias"], "head.weight": s["proj"].T.contiguous()}
    names = {"ln_1": "norm1", "ln_2": "norm2", "attn.in_proj_weight": "attn.qkv.weight",
             "attn.in_proj_bias": "attn.qkv.bias", "attn.out_proj": "attn.proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    for k, v in s.items():
        if not k.startswith("transformer.resblocks."):
            continue
        idx, rest = k.removeprefix("transformer.resblocks.").split(".", 1)
        for old, new in names.items():
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        out[f"blocks.{idx}.{rest}"] = v
    return out


@pytest.mark.parametrize("layout", ["open_clip", "timm"])
def test_clip_checkpoint_loads_strictly_in_both_layouts(layout: str, tmp_path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(3)
    visual = VisionTransformer(image_size=32, patch_size=16, width=64, layers=2, heads=1,
                               embed_dim=24, act="quick_gelu").eval()
    state = _open_clip_state(visual) if layout == "open_clip" else _timm_state(visual)
    path = tmp_path / f"clip-{layout}.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded, _ = load_clip_visual(path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.eval()(x), visual(x))
    bad = dict(state)
    bad.pop(next(iter(bad)))
    save_file({k: v.contiguous() for k, v in bad.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises((ValueError, KeyError)):
        load_clip_visual(tmp_path / "bad.safetensors")


def test_tokenizers_shapes_and_clip_initialisation() -> None:
    visual = build_clip_visual(TINY)
    audio = PatchTokenizer([0], patch=8, stride=6, input_hw=(24, 40), width=32)
    assert audio.grid == (3, 6)     # overlapping: (24 - 8) // 6 + 1, (40 - 8) // 6 + 1
    assert audio(torch.randn(2, 1, 24, 40)).shape == (2, 1 + 18, 32)
    thermal = PatchTokenizer([0], patch=8, stride=8, input_hw=(32, 32), width=32)
    assert thermal.init_from_clip(visual)
    torch.testing.assert_close(thermal.conv.weight, visual.conv1.weight.sum(1, keepdim=True))
    grey = torch.rand(2, 1, 32, 32)
    # a grey image through CLIP's RGB patch embedding == its 1-channel version here
    clip_tokens = visual.conv1(grey.expand(-1, 3, -1, -1)).flatten(2).transpose(1, 2)
    ours = thermal(torch.cat([grey, torch.zeros(2, 2, 32, 32)], 1))[:, 1:] - thermal.pos[1:]
    torch.testing.assert_close(ours, clip_tokens, rtol=1e-4, atol=1e-5)
    assert not audio.init_from_clip(visual)           # other grid: stays random
    cloud = torch.randn(3, 64, 3)
    torch.testing.assert_close(farthest_points(cloud, 8),
                               farthest_point_sample(cloud, 8, min_sq_norm=-1.0))
    points = PointTokenizer(groups=4, group_size=8, width=32, widths=(8, 16, 16)).eval()
    out = points(cloud)
    assert out.shape == (3, 5, 32)
    perm = torch.randperm(64)
    # FPS starts at point 0: keep it first, shuffle the rest -> the same group set
    perm = torch.cat([torch.tensor([0]), perm[perm != 0]])
    torch.testing.assert_close(points(cloud[:, perm]).sort(1).values, out.sort(1).values,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("moe", [{"placement": "parallel", "routing": "grouped"},
                                 {"placement": "fc", "routing": "global", "experts": 3,
                                  "top_k": 2}])
def test_parameter_formula_matches_the_built_module(moe: dict) -> None:
    model = tiny_model(**moe)
    report = parameter_report(model)
    assert report["groups"]["lora_moe"] == report["lora_moe_formula_total"]
    per = lora_moe_params(width=32, layers=2, ffn=128, r=4, experts=moe.get("experts", 2),
                          placement=moe["placement"], routing=moe["routing"],
                          routed_modalities=3)
    assert report["lora_moe_formula_per_modality"] == per
    assert report["total_trainable"] == sum(
        p.numel() for p in model.parameters() if p.requires_grad)


def test_paper_accounting_arithmetic() -> None:
    acc = paper_accounting()
    # 12 blocks x 2 experts x (2 x 4 x (768 + 3072) + (768 + 3072)) (the spec's 829,440)
    assert acc["lora_moe_per_modality"]["fc"] == 829_440
    assert acc["lora_moe_per_modality"]["parallel"] == 12 * 2 * (2 * 4 * 768 + 768)
    assert acc["totals"]["fc, 4 modalities"] == 4 * 829_440 + 4_130_820
    assert acc["closest"] == "fc, 4 modalities" and acc["closest_gap"] != 0


def test_vocabularies_overlap_partly_and_name_what_the_sensor_tells() -> None:
    sizes = {"thermal": 12, "event": 6, "audio": 3, "tactile": 3, "point_cloud": 6}
    kept = {}
    for m, n_labels in sizes.items():
        v = vocab_for(m, seed=0)
        kept[m] = set(v.kept_classes)
        assert len(kept[m]) == DATASET_CLASSES
        assert len(v.names) <= n_labels and len(v.names) == len(set(v.names))
        labels = v.labels_of(np.arange(18))
        assert ((labels >= 0) == np.isin(np.arange(18), list(kept[m]))).all()
        assert set(labels[labels >= 0]) == set(range(len(v.names)))
    assert len(set(map(frozenset, kept.values()))) > 1       # not all the same subset
    sound = vocab_for("audio", keep=None).labels_of([0, 3, 1])   # metal mug, metal duck, wood
    assert sound[0] == sound[1] != sound[2]                        # a sound names a material
    shape = vocab_for("point_cloud", keep=None).labels_of([0, 1, 3])  # metal/wooden mug, duck
    assert shape[0] == shape[1] != shape[2]                        # geometry names a shape
    full = vocab_for("image", seed=0)
    assert len(full.names) == 18 and full.kept_classes == list(range(18))
