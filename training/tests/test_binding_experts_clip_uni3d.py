"""Real image-text (open_clip, EVA-CLIP) and point-text (Uni3D) experts: tiny architectures saved
in the published checkpoint layouts load strictly, reproduce their source's embeddings, and a
wrong checkpoint is refused by key name. FPS / kNN grouping on a constructed cloud."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from omnibind_train.binding.experts.common import (
    ExpertConfig,
    build_expert,
    get_expert_config,
    list_experts,
)
from omnibind_train.binding.experts.open_clip_expert import EvaAttention
from omnibind_train.binding.experts.uni3d import farthest_point_sample, group_points, knn_indices

TEXT = {"context_length": 8, "vocab_size": 50, "width": 32, "layers": 2, "heads": 2}
EVA_POSTNORM = {"image_size": 28, "patch_size": 14, "width": 32, "depth": 2, "heads": 2,
                "mlp_hidden": 48, "qkv_bias": True, "postnorm": True}          # E14+-like
EVA02_L = {"image_size": 28, "patch_size": 7, "width": 32, "depth": 2, "heads": 2,
           "mlp_ratio": 2.6667, "subln": True, "swiglu": True, "rope": True,
           "pt_hw_seq_len": 16, "intp_freq": True}                             # EVA02-L-like
EVA_18B = {"image_size": 28, "patch_size": 14, "width": 32, "depth": 2, "heads": 2,
           "mlp_hidden": 40, "qkv_bias": False, "postnorm": True, "norm": "rmsnorm",
           "head_bias": False, "ls_init_value": 0.1, "mean_pool": True}       # 18B-like
UNI3D = {"trans_dim": 32, "embed_dim": 16, "encoder_dim": 24, "num_group": 8, "group_size": 4,
         "depth": 2, "heads": 2, "mlp_hidden": 48, "visual_image_size": 28,
         "visual_patch_size": 14, "visual_num_classes": 10, "qkv_bias": True}


def randomise(module: torch.nn.Module) -> None:
    """Every float parameter / buffer random (BatchNorm variances positive)."""
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand_like(t) + 0.5)
            else:
                t.copy_(0.3 * torch.randn_like(t))


def tokens(b: int = 3, length: int = 8) -> torch.Tensor:
    ids = torch.randint(1, 40, (b, length))
    ids[torch.arange(b), torch.tensor([7, 4, 2])] = 49  # EOT (largest id) at different places
    return ids


def clouds(b: int = 2, n: int = 64) -> torch.Tensor:
    xyz = torch.randn(b, n, 3)
    xyz = xyz / xyz.norm(dim=-1).amax(dim=1, keepdim=True)[..., None]
    return torch.cat((xyz, torch.rand(b, n, 3)), dim=-1)


def assert_same(src, dst, modality: str, inputs) -> None:
    with torch.no_grad():
        a = src.encoders[modality](inputs)
        b = dst.encoders[modality](inputs)
        unit = dst.encode(modality, inputs)
    assert b.shape == (inputs.shape[0], dst.embed_dim)
    assert torch.isfinite(b).all()
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(len(unit)))


# --- open_clip --------------------------------------------------------------------------------

def test_open_clip_safetensors_roundtrip_infers_sizes(tmp_path: Path) -> None:
    cfg = ExpertConfig(kind="open_clip", arch={
        "embed_dim": 16, "act": "quick_gelu",
        "vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2},
        "text": dict(TEXT)})
    src = build_expert(cfg, load_weights=False)
    randomise(src)
    state = src.published_state_dict()
    for key in ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
                "visual.transformer.resblocks.1.attn.in_proj_weight",
                "visual.transformer.resblocks.0.mlp.c_fc.weight", "visual.ln_post.weight",
                "visual.proj", "token_embedding.weight", "positional_embedding",
                "transformer.resblocks.0.attn.out_proj.weight", "ln_final.bias",
                "text_projection", "logit_scale"):
        assert key in state
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    # Sizes come from the checkpoint; only what shapes cannot tell (act, heads) is given.
    lean = ExpertConfig(kind="open_clip", checkpoint=str(path), arch={
        "act": "quick_gelu", "vision": {"heads": 2}, "text": {"heads": 2}})
    dst = build_expert(lean)
    assert dst.embed_dim == 16 and set(dst.modalities) == {"image", "text"}
    assert_same(src, dst, "image", torch.randn(2, 3, 32, 32))
    assert_same(src, dst, "text", tokens())
    ids = tokens()
    with torch.no_grad():  # a mapping with input_ids works too
        torch.testing.assert_close(dst.encode("text", {"input_ids": ids}),
                                   dst.encode("text", ids))
    only_image = build_expert(lean, modalities=["image"])
    assert only_image.modalities == ("image",)


def test_open_clip_wrong_checkpoints_are_named(tmp_path: Path) -> None:
    cfg = ExpertConfig(kind="open_clip", arch={
        "embed_dim": 16, "vision": {"image_size": 32, "patch_size": 8, "width": 32,
                                    "layers": 1, "heads": 2}, "text": {**TEXT, "layers": 1}})
    state = build_expert(cfg, load_weights=False).published_state_dict()
    bad = dict(state)
    bad["ln_final.gamma"] = bad.pop("ln_final.weight")
    path = tmp_path / "renamed.safetensors"
    save_file({k: v.contiguous() for k, v in bad.items()}, str(path))
    with pytest.raises(ValueError, match=r"ln_final\.weight") as err:
        build_expert(cfg, checkpoint=str(path))
    assert "ln_final.gamma" in str(err.value)
    bad = dict(state, logit_bias=torch.zeros(()))  # SigLIP-style extra: not supported
    save_file({k: v.contiguous() for k, v in bad.items()}, str(path))
    with pytest.raises(ValueError, match="logit_bias"):
        build_expert(cfg, checkpoint=str(path))


# --- EVA-CLIP ---------------------------------------------------------------------------------

@pytest.mark.parametrize("vision, published", [
    (EVA_POSTNORM, ("visual.blocks.0.attn.qkv.weight", "visual.blocks.0.attn.q_bias",
                    "visual.blocks.0.attn.v_bias", "visual.blocks.1.mlp.fc1.weight",
                    "visual.norm.weight", "visual.head.bias")),
    (EVA02_L, ("visual.blocks.0.attn.q_proj.weight", "visual.blocks.0.attn.k_proj.weight",
               "visual.blocks.0.attn.v_proj.weight", "visual.blocks.0.attn.q_bias",
               "visual.blocks.0.attn.inner_attn_ln.weight", "visual.blocks.0.mlp.w1.weight",
               "visual.blocks.0.mlp.w3.weight", "visual.blocks.0.mlp.ffn_ln.bias")),
    (EVA_18B, ("visual.blocks.0.attn.qkv.weight", "visual.blocks.0.gamma_1",
               "visual.blocks.0.norm1.weight", "visual.fc_norm.weight", "visual.head.weight")),
], ids=["e14plus_like", "eva02_l_like", "18b_like"])
def test_eva_clip_roundtrip(tmp_path: Path, vision: dict, published: tuple[str, ...]) -> None:
    cfg = ExpertConfig(kind="eva_clip", arch={"embed_dim": 16, "vision": vision, "text": TEXT})
    src = build_expert(cfg, load_weights=False)
    randomise(src)
    state = src.published_state_dict()
    for key in ("visual.patch_embed.proj.weight", "visual.cls_token", "visual.pos_embed",
                "visual.blocks.0.norm1.weight", "visual.blocks.0.attn.proj.weight",
                "text.token_embedding.weight", "text.transformer.resblocks.0.attn.in_proj_weight",
                "text.text_projection", "logit_scale", *published):
        assert key in state, key
    if vision is EVA_18B:
        assert "visual.blocks.0.attn.q_bias" not in state and "visual.head.bias" not in state
        assert "visual.blocks.0.norm1.bias" not in state  # RMSNorm
    if vision.get("rope"):  # EVA stores its (recomputed) rotary tables; they are dropped
        grid = vision["image_size"] // vision["patch_size"]
        table = torch.zeros(grid * grid, vision["width"] // vision["heads"])
        state["visual.rope.freqs_cos"] = state["visual.blocks.0.attn.rope.freqs_sin"] = table
    path = tmp_path / "EVA_CLIP.pt"
    torch.save(state, path)
    dst = build_expert(cfg, checkpoint=str(path))
    image = torch.randn(2, 3, 28, 28)
    assert_same(src, dst, "image", image)
    assert_same(src, dst, "text", tokens())


def test_eva_clip_open_clip_timm_names_and_root_text_load(tmp_path: Path) -> None:
    """open_clip's re-release (``visual.trunk.*``) and a plain-CLIP text layout both load."""
    cfg = ExpertConfig(kind="eva_clip", arch={"embed_dim": 16, "vision": EVA_POSTNORM,
                                              "text": TEXT})
    src = build_expert(cfg, load_weights=False)
    randomise(src)
    state = {("visual.trunk." + k.removeprefix("visual.") if k.startswith("visual.") else
              k.removeprefix("text.")): v for k, v in src.published_state_dict().items()}
    assert "visual.trunk.blocks.0.attn.qkv.weight" in state and "token_embedding.weight" in state
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(state, path)
    dst = build_expert(cfg, checkpoint=str(path))
    assert dst.text_layout == "root"
    assert_same(src, dst, "image", torch.randn(2, 3, 28, 28))
    assert_same(src, dst, "text", tokens())


def test_eva_clip_wrong_checkpoints_are_named(tmp_path: Path) -> None:
    cfg = ExpertConfig(kind="eva_clip", arch={"embed_dim": 16, "vision": EVA_POSTNORM,
                                              "text": TEXT})
    state = build_expert(cfg, load_weights=False).published_state_dict()
    path = tmp_path / "bad.pt"
    renamed = dict(state)
    renamed["visual.blocks.0.attn.qbias"] = renamed.pop("visual.blocks.0.attn.q_bias")
    torch.save(renamed, path)
    with pytest.raises(ValueError, match=r"visual\.blocks\.0\.attn\.q_bias") as err:
        build_expert(cfg, checkpoint=str(path))
    assert "visual.blocks.0.attn.qbias" in str(err.value)
    torch.save(dict(state, **{"text.text_projection": torch.zeros(32, 8)}), path)
    with pytest.raises(ValueError, match=r"text\.text_projection: checkpoint \(32, 8\)"):
        build_expert(cfg, checkpoint=str(path))
    # rotary tables in a checkpoint for a model without rope: the model is not what it says
    torch.save(dict(state, **{"visual.rope.freqs_cos": torch.zeros(4, 16)}), path)
    with pytest.raises(ValueError, match=r"visual\.rope\.freqs_cos"):
        build_expert(cfg, checkpoint=str(path))


def test_eva_fused_and_split_attention_agree() -> None:
    """The fused-qkv form (zero k bias) equals the split q/k/v form with the same weights."""
    fused, split = EvaAttention(32, 4), EvaAttention(32, 4, subln=True)
    split.inner_attn_ln = torch.nn.Identity()  # subln's extra norm aside
    randomise(fused)
    with torch.no_grad():
        q, k, v = fused.qkv.weight.chunk(3)
        split.q_proj.weight.copy_(q), split.k_proj.weight.copy_(k), split.v_proj.weight.copy_(v)
        for name in ("q_bias", "v_bias"):
            getattr(split, name).copy_(getattr(fused, name))
        split.proj.load_state_dict(fused.proj.state_dict())
        x = torch.randn(2, 5, 32)
        torch.testing.assert_close(split(x), fused(x))


# --- Uni3D ------------------------------------------------------------------------------------

def _uni3d_cfg(**extra) -> ExpertConfig:
    clip = {"embed_dim": 16, "vision": EVA_POSTNORM, "text": TEXT}
    return ExpertConfig(kind="uni3d", arch={**UNI3D, "clip": clip, **extra})


def test_uni3d_roundtrip_in_published_layout(tmp_path: Path) -> None:
    src = build_expert(_uni3d_cfg(), load_weights=False)
    randomise(src)
    point_state = src.encoders["point_cloud"].state_dict()
    for key in ("logit_scale", "point_encoder.encoder.first_conv.0.weight",
                "point_encoder.encoder.first_conv.1.running_mean",
                "point_encoder.encoder.first_conv.1.num_batches_tracked",
                "point_encoder.encoder.first_conv.3.weight",
                "point_encoder.encoder.second_conv.0.weight",
                "point_encoder.encoder.second_conv.3.bias", "point_encoder.encoder2trans.weight",
                "point_encoder.trans2embed.weight", "point_encoder.cls_token",
                "point_encoder.cls_pos", "point_encoder.pos_embed.0.weight",
                "point_encoder.pos_embed.2.bias", "point_encoder.visual.blocks.1.attn.qkv.weight",
                "point_encoder.visual.blocks.0.attn.q_bias", "point_encoder.visual.fc_norm.weight",
                "point_encoder.visual.patch_embed.proj.weight", "point_encoder.visual.pos_embed",
                "point_encoder.visual.head.weight"):
        assert key in point_state, key
    assert "point_encoder.visual.norm.weight" not in point_state  # timm avg pool: identity
    uni3d_path, clip_path = tmp_path / "model.pt", tmp_path / "open_clip_pytorch_model.bin"
    # DeepSpeed-style file as released, keys with a DDP "module." prefix, plus other entries
    torch.save({"module": {f"module.{k}": v for k, v in point_state.items()}, "epoch": 3},
               uni3d_path)
    clip_src = build_expert(ExpertConfig(kind="eva_clip", arch=_uni3d_cfg().arch["clip"]),
                            load_weights=False)
    clip_src.encoders["image"], clip_src.encoders["text"] = (src.encoders["image"],
                                                             src.encoders["text"])
    torch.save(clip_src.published_state_dict(), clip_path)

    dst = build_expert(_uni3d_cfg(clip_checkpoint=str(clip_path)), checkpoint=str(uni3d_path))
    assert set(dst.modalities) == {"point_cloud", "image", "text"} and dst.embed_dim == 16
    assert_same(src, dst, "point_cloud", clouds())
    assert_same(src, dst, "image", torch.randn(2, 3, 28, 28))
    assert_same(src, dst, "text", tokens())

    points_only = build_expert(_uni3d_cfg(), checkpoint=str(uni3d_path),
                               modalities=["point_cloud"])
    assert points_only.modalities == ("point_cloud",)
    with pytest.raises(ValueError, match="clip_checkpoint"):
        build_expert(_uni3d_cfg(), checkpoint=str(uni3d_path))


@pytest.mark.parametrize("damage, named", [
    (lambda s: s.pop("point_encoder.cls_pos"), "point_encoder.cls_pos"),
    (lambda s: s.__setitem__("point_encoder.trans2embed.weight", torch.zeros(8, 32)),
     "point_encoder.trans2embed.weight"),
    (lambda s: s.__setitem__("point_encoder.encoder.first_conv.0.w",
                             s.pop("point_encoder.encoder.first_conv.0.weight")),
     "point_encoder.encoder.first_conv.0.weight"),
])
def test_uni3d_wrong_checkpoint_is_named(tmp_path: Path, damage, named: str) -> None:
    cfg = _uni3d_cfg()
    state = dict(build_expert(cfg, load_weights=False).encoders["point_cloud"].state_dict())
    damage(state)
    path = tmp_path / "model.pt"
    torch.save({"module": state}, path)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        build_expert(cfg, checkpoint=str(path), modalities=["point_cloud"])


def test_fps_and_knn_group_a_constructed_cloud() -> None:
    centres = torch.tensor([[0.5, 0, 0], [-0.5, 0, 0], [0, 0.5, 0], [0, 0, -0.5]])
    offsets = 0.01 * torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0.]])
    xyz = (centres[:, None] + offsets[None]).reshape(20, 3)      # cluster c = points 5c..5c+4
    perm = torch.randperm(20)
    perm = torch.cat((perm[perm == 7], perm[perm != 7]))         # start inside cluster 1
    xyz = torch.cat((xyz[perm], torch.zeros(1, 3)))[None]        # + a point at the origin
    cluster = torch.cat((perm // 5, torch.tensor([-1])))
    idx = farthest_point_sample(xyz, 4)
    assert idx[0, 0] == 0
    assert sorted(cluster[idx[0]].tolist()) == [0, 1, 2, 3]      # one centre per cluster
    nbr = knn_indices(xyz, xyz[0, idx[0]][None], 5)
    for g in range(4):                                           # each group = its cluster
        assert set(cluster[nbr[0, g]].tolist()) == {cluster[idx[0, g]].item()}
    # the near-origin point is never a centre (pointnet2_ops behaviour) unless allowed
    assert 20 not in farthest_point_sample(xyz, 21 - 1)[0].tolist()
    assert 20 in farthest_point_sample(xyz, 21, min_sq_norm=-1)[0].tolist()

    rgb = torch.rand(1, 21, 3)
    feats, got_centres = group_points(torch.cat((xyz, rgb), -1), 4, 5)
    assert feats.shape == (1, 4, 5, 6) and got_centres.shape == (1, 4, 3)
    torch.testing.assert_close(feats[0, :, 0, :3], torch.zeros(4, 3))  # nearest = the centre
    torch.testing.assert_close(feats[0, :, 0, 3:], rgb[0, idx[0]])     # its colour kept
    assert feats[..., :3].norm(dim=-1).max() < 0.03                    # local coordinates


def test_named_configs() -> None:
    names = set(list_experts())
    assert {"eva02_clip_e14p", "eva_clip_18b", "openai_clip_vit_b32", "uni3d_g_lvis",
            "uni3d_g_modelnet40", "uni3d_g_scanobjnn"} <= names
    assert not any("siglip" in n for n in names)  # attentional pooling: not supported
    e14 = get_expert_config("eva02_clip_e14p")
    assert e14.kind == "eva_clip" and e14.arch["vision"]["width"] == 1792
    assert e14.arch["embed_dim"] == 1024 and e14.preprocess["image"]["size"] == 224
    assert get_expert_config("eva_clip_18b").arch["embed_dim"] == 1536
    lvis = get_expert_config("uni3d_g_lvis", checkpoint="x.pt")
    assert lvis.preprocess["point_cloud"]["num_points"] == 10000
    assert (lvis.preprocess["point_cloud"]["num_group"],
            lvis.preprocess["point_cloud"]["group_size"]) == (512, 64)
    assert lvis.arch["clip"] == copy.deepcopy(e14.arch)
    assert ExpertConfig.from_dict(lvis.to_dict()) == lvis
