"""Point-text expert: Uni3D (kind ``"uni3d"``), with EVA02-E14+ image/text towers.

Published layout followed (``baaivision/Uni3D``, ``models/uni3d.py`` and
``models/point_encoder.py``; the transformer is ``timm.create_model(args.pc_model)``, for
Uni3D-g ``eva_giant_patch14_560.m30m_ft_in22k_in1k``, timm ``Eva``). The released checkpoint is
a DeepSpeed-style ``{"module": state_dict}`` (``main.py``'s ``test_zeroshot_3d`` reads
``checkpoint["module"]`` and strips ``module.``) with the keys

- ``logit_scale``
- ``point_encoder.encoder.first_conv.{0,1,3}.*`` (Conv1d 6->128, BatchNorm1d, Conv1d 128->256)
  and ``point_encoder.encoder.second_conv.{0,1,3}.*`` (Conv1d 512->512, BN, Conv1d 512->C):
  the mini-PointNet group encoder (BatchNorm running stats and ``num_batches_tracked`` included)
- ``point_encoder.encoder2trans.*``, ``point_encoder.trans2embed.*``,
  ``point_encoder.cls_token``, ``point_encoder.cls_pos``,
  ``point_encoder.pos_embed.{0,2}.*`` (MLP 3->128->width on the group centres, GELU)
- ``point_encoder.visual.*``: the whole timm ``Eva`` -- ``blocks.N.{norm1, attn.qkv.weight,
  attn.q_bias, attn.v_bias, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``fc_norm`` (timm's default
  ``global_pool="avg"``, so ``norm`` is the identity), and the parts Uni3D stores but never uses:
  ``patch_embed.proj`` (560 px, patch 14), ``cls_token``, ``pos_embed``, ``head`` (1000 classes).
  They are modelled (so loading is strict) and ignored by the forward pass, as in Uni3D.
  timm's non-persistent ``attn.k_bias`` (zeros) is dropped if a checkpoint carries it.

The forward is Uni3D's ``encode_pc``: ``[B, N, 6]`` xyz+rgb -> FPS ``num_group`` centres ->
kNN ``group_size`` neighbours (xyz relative to the centre, rgb as is) -> group encoder ->
``encoder2trans`` + ``pos_embed(centre)``, class token + ``cls_pos`` -> EVA blocks ->
``fc_norm`` of the class token -> ``trans2embed`` -> ``[B, embed_dim]``. Farthest point sampling
reproduces ``pointnet2_ops.furthest_point_sample`` (starts at point 0; points with squared norm
<= 1e-3 are never picked, as in its CUDA kernel), in torch, looping over the centres only.
Patch dropout is a training feature and is not modelled.

Image and text come from the EVA02-E14+ CLIP model Uni3D was trained against (open_clip
``EVA02-E-14-plus``, ``laion2b_s9b_b144k``): its checkpoint is ``arch["clip_checkpoint"]`` (either
the BAAI EVA-CLIP layout or open_clip's ``visual.trunk.*`` re-release; see
:mod:`.open_clip_expert`), its architecture ``arch["clip"]`` (``eva_clip`` arch, default
:data:`~.open_clip_expert.EVA02_E14P_ARCH`). With ``modalities=["point_cloud"]`` no CLIP
checkpoint is needed.

``arch`` (Uni3D-g defaults): ``trans_dim`` 1408, ``embed_dim`` 1024, ``encoder_dim`` 512,
``num_group`` 512, ``group_size`` 64, ``depth`` 40, ``heads`` 16, ``mlp_hidden`` 6144,
``visual_image_size`` 560, ``visual_patch_size`` 14, ``visual_num_classes`` 1000,
``qkv_bias`` True. ``preprocess["point_cloud"]``: 10,000 points, xyz+rgb (rgb assumed in
[0, 1] as in the OpenShape-format data Uni3D reads; not checked against its loader), xyz
centred and scaled into the unit sphere (the caller does that; the encoder takes the batch as
given). Named configs ``uni3d_g_lvis`` / ``uni3d_g_modelnet40`` / ``uni3d_g_scanobjnn`` (the
paper's Uni3D-L/M/S) share the architecture and differ in the checkpoint the user supplies.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from .common import (
    ExpertConfig,
    ExpertSpace,
    check_state_keys,
    register_expert,
    register_expert_kind,
)
from .open_clip_expert import (
    EVA02_E14P_ARCH,
    EvaVisionTransformer,
    build_eva_clip,
    clip_preprocess,
    read_published_state,
)

__all__ = ["PointGroupEncoder", "Uni3DPointModel", "Uni3DSpace", "build_uni3d",
           "farthest_point_sample", "group_points", "knn_indices"]


# --- grouping ---------------------------------------------------------------------------------

def farthest_point_sample(xyz: torch.Tensor, num: int, *, min_sq_norm: float = 1e-3
                          ) -> torch.Tensor:
    """``[B, N, 3]`` -> ``[B, num]`` indices of farthest point sampling, starting at point 0.

    Like ``pointnet2_ops``' kernel, points whose squared norm is ``<= min_sq_norm`` are never
    chosen after the first (set ``min_sq_norm=-1`` to consider every point).
    """
    b, n, _ = xyz.shape
    if num > n:
        raise ValueError(f"cannot sample {num} centres from {n} points")
    xyz = xyz.float()
    eligible = xyz.pow(2).sum(-1) > min_sq_norm                       # [B, N]
    rows = torch.arange(b, device=xyz.device)
    idx = torch.zeros(b, num, dtype=torch.long, device=xyz.device)
    dist = torch.full((b, n), float("inf"), device=xyz.device)
    far = torch.zeros(b, dtype=torch.long, device=xyz.device)
    for i in range(num):
        idx[:, i] = far
        d = (xyz - xyz[rows, far][:, None, :]).pow(2).sum(-1)
        dist = torch.minimum(dist, d)
        far = torch.where(eligible, dist, torch.full_like(dist, -1.0)).argmax(-1)
    return idx


def knn_indices(xyz: torch.Tensor, centres: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, G, k]`` indices of each centre's ``k`` nearest points (nearest first)."""
    d = torch.cdist(centres.float(), xyz.float()).pow(2)               # [B, G, N]
    return d.topk(k, dim=-1, largest=False, sorted=True).indices


def group_points(points: torch.Tensor, num_group: int, group_size: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Uni3D's ``Group``: ``[B, N, 6]`` xyz+rgb -> (features ``[B, G, M, 6]`` with xyz relative
    to the group centre, centres ``[B, G, 3]``)."""
    xyz = points[..., :3]
    centre_idx = farthest_point_sample(xyz, num_group)
    rows = torch.arange(points.shape[0], device=points.device)[:, None]
    centres = xyz[rows, centre_idx]                                     # [B, G, 3]
    nbr = knn_indices(xyz, centres, group_size)                         # [B, G, M]
    groups = points[rows[:, :, None], nbr]                              # [B, G, M, 6]
    rel = groups[..., :3] - centres[:, :, None, :]
    return torch.cat((rel, groups[..., 3:]), dim=-1), centres


# --- the published modules --------------------------------------------------------------------

class PointGroupEncoder(nn.Module):
    """Uni3D's ``Encoder``: a mini-PointNet over each group, ``[B, G, M, 6]`` -> ``[B, G, C]``."""

    def __init__(self, encoder_channel: int) -> None:
        super().__init__()
        self.encoder_channel = encoder_channel
        self.first_conv = nn.Sequential(nn.Conv1d(6, 128, 1), nn.BatchNorm1d(128),
                                        nn.ReLU(inplace=True), nn.Conv1d(128, 256, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512),
                                         nn.ReLU(inplace=True),
                                         nn.Conv1d(512, encoder_channel, 1))

    def forward(self, groups: torch.Tensor) -> torch.Tensor:
        b, g, m, c = groups.shape
        x = self.first_conv(groups.reshape(b * g, m, c).transpose(1, 2))   # [BG, 256, M]
        x = torch.cat((x.amax(dim=2, keepdim=True).expand(-1, -1, m), x), dim=1)
        x = self.second_conv(x).amax(dim=2)                                 # [BG, C]
        return x.reshape(b, g, self.encoder_channel)


class PointcloudEncoder(nn.Module):
    """Uni3D's ``PointcloudEncoder`` (``point_encoder.*``)."""

    def __init__(self, *, trans_dim: int, embed_dim: int, encoder_dim: int, num_group: int,
                 group_size: int, visual: EvaVisionTransformer) -> None:
        super().__init__()
        self.num_group, self.group_size = num_group, group_size
        self.encoder = PointGroupEncoder(encoder_dim)
        self.encoder2trans = nn.Linear(encoder_dim, trans_dim)
        self.trans2embed = nn.Linear(trans_dim, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, trans_dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, trans_dim))
        self.visual = visual

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        features, centres = group_points(points, self.num_group, self.group_size)
        tokens = self.encoder2trans(self.encoder(features.to(self.cls_token.dtype)))
        b = tokens.shape[0]
        x = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)
        pos = torch.cat((self.cls_pos.expand(b, -1, -1),
                         self.pos_embed(centres.to(self.cls_token.dtype))), dim=1)
        x = self.visual.forward_tokens(x + pos)
        x = self.visual.norm(x[:, 0])
        if self.visual.fc_norm is not None:
            x = self.visual.fc_norm(x)
        return self.trans2embed(x)


class Uni3DPointModel(nn.Module):
    """Uni3D's ``Uni3D`` module: state_dict keys are the checkpoint's (``logit_scale``,
    ``point_encoder.*``); forward is ``encode_pc``: ``[B, N, 6]`` -> ``[B, embed_dim]``."""

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        a = {**_UNI3D_G, **arch}
        visual = EvaVisionTransformer(
            image_size=a["visual_image_size"], patch_size=a["visual_patch_size"],
            width=a["trans_dim"], depth=a["depth"], heads=a["heads"],
            mlp_hidden=a["mlp_hidden"], embed_dim=a["visual_num_classes"],
            qkv_bias=a["qkv_bias"], mean_pool=True)
        self.embed_dim = int(a["embed_dim"])
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.point_encoder = PointcloudEncoder(
            trans_dim=a["trans_dim"], embed_dim=a["embed_dim"], encoder_dim=a["encoder_dim"],
            num_group=a["num_group"], group_size=a["group_size"], visual=visual)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if points.ndim != 3 or points.shape[-1] != 6:
            raise ValueError(f"Uni3D expects [B, N, 6] xyz+rgb points, got {tuple(points.shape)}")
        return self.point_encoder(points)


_UNI3D_G: dict[str, Any] = {
    "trans_dim": 1408, "embed_dim": 1024, "encoder_dim": 512, "num_group": 512,
    "group_size": 64, "depth": 40, "heads": 16, "mlp_hidden": 6144,
    "visual_image_size": 560, "visual_patch_size": 14, "visual_num_classes": 1000,
    "qkv_bias": True,
}


class Uni3DSpace(ExpertSpace):
    """``encoders["point_cloud"]``: :class:`Uni3DPointModel`; ``"image"``/``"text"``: the
    EVA02-E14+ towers (from :func:`.open_clip_expert.build_eva_clip`)."""


def build_uni3d(cfg: ExpertConfig, load_weights: bool) -> Uni3DSpace:
    """Builder of kind ``"uni3d"`` (see the module docstring for ``arch``)."""
    available = ("point_cloud", "image", "text")
    mods = available if cfg.modalities is None else tuple(cfg.modalities)
    unknown = sorted(set(mods) - set(available))
    if unknown:
        raise ValueError(f"uni3d: no encoder for {unknown}; it embeds {list(available)}")
    arch = dict(cfg.arch)
    clip_arch = arch.pop("clip", None) or copy.deepcopy(EVA02_E14P_ARCH)
    clip_ckpt = arch.pop("clip_checkpoint", None)
    embed = int({**_UNI3D_G, **arch}["embed_dim"])
    space = Uni3DSpace(cfg, embed)
    if "point_cloud" in mods:
        point = Uni3DPointModel(arch)
        if load_weights:
            state = {k: v for k, v in read_published_state(cfg.checkpoint).items()
                     if not k.endswith(".attn.k_bias")}
            check_state_keys(point, state, what=f"uni3d {cfg.checkpoint}")
            point.load_state_dict(state, strict=True)
        space.encoders["point_cloud"] = point
    clip_mods = [m for m in ("image", "text") if m in mods]
    if clip_mods:
        if load_weights and clip_ckpt is None:
            raise ValueError("uni3d: image/text need the EVA02-E14+ CLIP weights: set "
                             "arch['clip_checkpoint'] (or modalities=['point_cloud'])")
        clip = build_eva_clip(ExpertConfig(kind="eva_clip", checkpoint=clip_ckpt, arch=clip_arch,
                                           modalities=clip_mods), load_weights)
        clip_embed = clip.embed_dim
        if clip_embed != embed:
            raise ValueError(f"uni3d: point embed_dim {embed} != CLIP embed_dim {clip_embed}")
        for m in clip_mods:
            space.encoders[m] = clip.encoders[m]
    return space


register_expert_kind("uni3d", build_uni3d)

_POINT_PREPROCESS = {"num_points": 10000, "channels": ["x", "y", "z", "r", "g", "b"],
                     "rgb_range": [0.0, 1.0], "normalize": "unit_sphere",
                     "num_group": 512, "group_size": 64}

for _name in ("uni3d_g_lvis", "uni3d_g_modelnet40", "uni3d_g_scanobjnn"):
    register_expert(_name, ExpertConfig(
        kind="uni3d", arch={**_UNI3D_G, "clip": copy.deepcopy(EVA02_E14P_ARCH),
                            "clip_checkpoint": None},
        preprocess={"point_cloud": dict(_POINT_PREPROCESS), **clip_preprocess(224)}))
