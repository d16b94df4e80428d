"""Image-text experts: open_clip CLIP (kind ``"open_clip"``) and EVA-CLIP (kind ``"eva_clip"``).

Both families are rebuilt as plain torch modules whose parameter names are the published
checkpoint's, and loaded strictly (:func:`.common.check_state_keys` names every missing,
unexpected or mis-shaped key before ``load_state_dict(strict=True)``).

``"open_clip"`` -- open_clip's ``CLIP`` / ``CustomTextCLIP`` with the built-in ViT
(``visual.conv1.weight``, ``visual.class_embedding``, ``visual.transformer.resblocks.N.*``,
``visual.ln_post``, ``visual.proj``) and the CLIP text transformer, either at the root
(``token_embedding.weight``, ``transformer.resblocks.N.attn.in_proj_weight``, ``ln_final``,
``text_projection``: OpenAI / LAION / DFN checkpoints) or under ``text.`` (CustomTextCLIP). The
towers are :mod:`omnibind_train.models.vit`'s. Sizes are inferred from the checkpoint's shapes
(:func:`~omnibind_train.models.vit.infer_vision_config`); entries given in ``arch`` win (a
conflict is then reported as a shape mismatch). The activation cannot be inferred: ``arch["act"]``
(``"quick_gelu"`` for OpenAI and DFN weights, ``"gelu"`` for LAION's). OpenAI's original JIT
state dict extras (``input_resolution``, ``context_length``, ``vocab_size``) are dropped.
Not supported (strict loading names their keys): timm / HF towers (``visual.trunk.*``,
``text.transformer.embeddings.*``), attentional pooling and SigLIP (``logit_bias``,
``visual.trunk.attn_pool.*``), which is why no SigLIP expert is registered here.

``"eva_clip"`` -- BAAI EVA-CLIP (``baaivision/EVA``, ``EVA-CLIP/rei/eva_clip/eva_vit_model.py``
and ``EVA-CLIP-18B/shinji/eva_clip/``): the vision tower is ``EVAVisionTransformer``
(``visual.patch_embed.proj.{weight,bias}``, ``visual.cls_token``, ``visual.pos_embed``,
``visual.blocks.N.norm1``, ``attn.qkv.weight`` + ``attn.q_bias`` / ``attn.v_bias`` or, with
``subln``, ``attn.{q,k,v}_proj.weight`` + ``attn.inner_attn_ln``, ``attn.proj``, ``norm2``,
``mlp.fc1/fc2`` or SwiGLU ``mlp.w1/w2/w3``, ``mlp.ffn_ln`` (subln), optional layer scale
``gamma_1/gamma_2``, ``visual.norm`` (cls-token pooling) or ``visual.fc_norm`` (mean pooling),
``visual.head``); the text tower is the open_clip CLIP text transformer under ``text.``
(CustomCLIP, what ``--force-custom-clip`` training saves) or at the root (plain CLIP); both are
accepted. Switches in ``arch["vision"]``: ``qkv_bias``, ``subln``, ``swiglu`` (EVA's
``naiveswiglu``), ``postnorm``, ``rope`` (+ ``pt_hw_seq_len``, ``intp_freq``: EVA02's 2D
rotary embedding, implemented), ``norm`` (``"layernorm"`` or ``"rmsnorm"``, EVA-CLIP-18B),
``ls_init_value``, ``mean_pool``, ``head_bias``. The rotary tables are recomputed, so the
``*.rope.freqs_cos/freqs_sin`` buffers EVA stores are dropped on load (as EVA-CLIP's own loader
does) when ``rope`` is on, and reported as unexpected when it is off.
open_clip's re-release of EVA weights (``visual.trunk.*``, timm ``Eva`` names: ``attn.norm``,
``mlp.norm``, ``mlp.fc1_g/fc1_x``) is mapped onto the BAAI names (prefix and those renames;
timm's packed ``GluMlp`` is not mapped). Not supported: relative position bias
(``rel_pos_bias``), patch dropout (inference only), xformers (plain SDPA gives the same result).

Preprocessing (``ExpertConfig.preprocess``): ``image``: ``size`` (square input side),
``mean``/``std`` (OpenAI CLIP's for all registered models), ``interpolation`` ("bicubic"),
``resize`` ("shortest_side_then_center_crop"); ``text``: ``tokenizer`` ("clip_bpe", OpenAI's
49,408-token BPE with ``<|startoftext|>``/``<|endoftext|>``, EOT = largest id), ``context_length``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ...models.vit import (
    TextTransformer,
    VisionTransformer,
    infer_text_config,
    infer_vision_config,
    read_checkpoint,
)
from .common import (
    ExpertConfig,
    ExpertSpace,
    check_state_keys,
    register_expert,
    register_expert_kind,
)

__all__ = ["CLIPSpace", "EVA02_E14P_ARCH", "EvaVisionTransformer", "OPENAI_CLIP_MEAN",
           "OPENAI_CLIP_STD", "build_eva_clip", "build_open_clip", "clip_preprocess",
           "from_open_clip_timm_eva", "load_parts", "read_published_state"]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_TEXT_PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final",
               "text_projection")
_OPENAI_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def read_published_state(path: str) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: :func:`read_checkpoint` plus the ``{"module": state_dict}``
    wrapper (DeepSpeed / Uni3D) and its ``module.`` prefix."""
    state: Any = read_checkpoint(path)
    if isinstance(state.get("module"), Mapping):
        state = state["module"]
    return {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}


class _Published(nn.Module):
    """Refers to an expert's modules / parameters under the checkpoint's top-level names, so
    that its ``state_dict`` keys are the published ones (the parameters are shared)."""

    def __init__(self, parts: Mapping[str, nn.Module | nn.Parameter]) -> None:
        super().__init__()
        for name, part in parts.items():
            setattr(self, name, part)


def load_parts(parts: Mapping[str, nn.Module | nn.Parameter],
               state: Mapping[str, torch.Tensor], *, what: str) -> None:
    """Check ``state`` against the published names of ``parts`` and load it strictly."""
    container = _Published(parts)
    check_state_keys(container, state, what=what)
    container.load_state_dict(dict(state), strict=True)


# --- EVA vision tower (BAAI EVAVisionTransformer names) ---------------------------------------

class RMSNorm(nn.Module):
    """T5-style RMS norm (weight only), EVA-CLIP-18B's ``RMSnorm``."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype)


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=1e-6)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=1e-6)
    raise ValueError(f"unknown norm {kind!r}; expected 'layernorm' or 'rmsnorm'")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x = rearrange(x, "... (d r) -> ... d r", r=2)
    x1, x2 = x.unbind(-1)
    return rearrange(torch.stack((-x2, x1), dim=-1), "... d r -> ... (d r)")


class VisionRope(nn.Module):
    """EVA02's 2D rotary embedding (``VisionRotaryEmbeddingFast``): half the head dim rotates
    with the row, half with the column; frequencies ``theta ** (-2i / (head_dim / 2))``. With
    ``intp_freq`` the ``grid`` positions are spread over ``pt_seq_len`` (the pre-training grid).
    The tables are buffers that are not saved (recomputed)."""

    def __init__(self, head_dim: int, grid: int, *, pt_seq_len: int = 16,
                 intp_freq: bool = False, theta: float = 10000.0) -> None:
        super().__init__()
        dim = head_dim // 2
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        ft = grid if intp_freq else pt_seq_len
        t = torch.arange(ft).float() / ft * pt_seq_len
        f = torch.outer(t, freqs).repeat_interleave(2, dim=-1)             # [ft, dim]
        f2d = torch.cat([f[:, None, :].expand(ft, ft, -1), f[None, :, :].expand(ft, ft, -1)], -1)
        f2d = f2d.reshape(ft * ft, -1)                                      # [ft*ft, head_dim]
        self.register_buffer("freqs_cos", f2d.cos(), persistent=False)
        self.register_buffer("freqs_sin", f2d.sin(), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.freqs_cos.to(t.dtype) + _rotate_half(t) * self.freqs_sin.to(t.dtype)


class EvaAttention(nn.Module):
    """EVA attention: fused ``qkv`` (no bias) + ``q_bias``/``v_bias``, or with ``subln``
    separate ``q_proj``/``k_proj``/``v_proj`` and ``inner_attn_ln`` before ``proj``."""

    def __init__(self, dim: int, heads: int, *, qkv_bias: bool = True, subln: bool = False,
                 norm: str = "layernorm") -> None:
        super().__init__()
        self.heads = heads
        self.subln = subln
        if subln:
            self.q_proj = nn.Linear(dim, dim, bias=False)
            self.k_proj = nn.Linear(dim, dim, bias=False)
            self.v_proj = nn.Linear(dim, dim, bias=False)
        else:
            self.qkv = nn.Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.inner_attn_ln = _norm(norm, dim) if subln else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: VisionRope | None = None) -> torch.Tensor:
        if self.subln:
            q = F.linear(x, self.q_proj.weight, self.q_bias)
            k = F.linear(x, self.k_proj.weight)
            v = F.linear(x, self.v_proj.weight, self.v_bias)
        else:
            bias = None
            if self.q_bias is not None:
                bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
            q, k, v = F.linear(x, self.qkv.weight, bias).chunk(3, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        if rope is not None:  # rotate the patch tokens, not the class token
            q = torch.cat((q[:, :, :1], rope(q[:, :, 1:])), dim=2).type_as(v)
            k = torch.cat((k[:, :, :1], rope(k[:, :, 1:])), dim=2).type_as(v)
        x = rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")
        return self.proj(self.inner_attn_ln(x))


class EvaMlp(nn.Module):
    """``fc1`` -> GELU -> ``ffn_ln`` (subln) -> ``fc2``."""

    def __init__(self, dim: int, hidden: int, *, subln: bool = False,
                 norm: str = "layernorm") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.ffn_ln = _norm(norm, hidden) if subln else nn.Identity()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.ffn_ln(self.act(self.fc1(x))))


class EvaSwiGLU(nn.Module):
    """EVA's naive SwiGLU: ``silu(w1 x) * w2 x`` -> ``ffn_ln`` (subln) -> ``w3``."""

    def __init__(self, dim: int, hidden: int, *, subln: bool = False,
                 norm: str = "layernorm") -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.ffn_ln = _norm(norm, hidden) if subln else nn.Identity()
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(self.ffn_ln(self.act(self.w1(x)) * self.w2(x)))


class EvaBlock(nn.Module):
    """EVA block: pre-norm ``x + attn(norm1(x))`` or post-norm ``x + norm1(attn(x))``, with
    optional layer scale ``gamma_1``/``gamma_2``."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, *, qkv_bias: bool = True,
                 subln: bool = False, swiglu: bool = False, postnorm: bool = False,
                 norm: str = "layernorm", ls_init_value: float | None = None) -> None:
        super().__init__()
        self.postnorm = postnorm
        self.norm1 = _norm(norm, dim)
        self.attn = EvaAttention(dim, heads, qkv_bias=qkv_bias, subln=subln, norm=norm)
        self.norm2 = _norm(norm, dim)
        mlp_cls = EvaSwiGLU if swiglu else EvaMlp
        self.mlp = mlp_cls(dim, mlp_hidden, subln=subln, norm=norm)
        if ls_init_value:
            self.gamma_1 = nn.Parameter(ls_init_value * torch.ones(dim))
            self.gamma_2 = nn.Parameter(ls_init_value * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, rope: VisionRope | None = None) -> torch.Tensor:
        a = self.norm1(self.attn(x, rope)) if self.postnorm else self.attn(self.norm1(x), rope)
        x = x + (a if self.gamma_1 is None else self.gamma_1 * a)
        m = self.norm2(self.mlp(x)) if self.postnorm else self.mlp(self.norm2(x))
        return x + (m if self.gamma_2 is None else self.gamma_2 * m)


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, width: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, width, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(x), "b c h w -> b (h w) c")


class EvaVisionTransformer(nn.Module):
    """BAAI ``EVAVisionTransformer`` (also timm ``Eva`` for the fused-qkv, GELU-MLP variants):
    ``[B, 3, S, S]`` -> ``[B, embed_dim]`` through ``head``.

    ``mean_pool`` (EVA's ``use_mean_pooling``) averages all tokens and applies ``fc_norm``
    (``norm`` is then the identity, no keys); otherwise ``norm`` and the class token.
    ``mlp_hidden`` defaults to ``int(width * mlp_ratio)`` as EVA computes it.
    """

    def __init__(self, *, image_size: int = 224, patch_size: int = 14, width: int = 1024,
                 depth: int = 24, heads: int | None = None, head_width: int = 64,
                 mlp_ratio: float = 4.0, mlp_hidden: int | None = None, embed_dim: int = 768,
                 qkv_bias: bool = True, subln: bool = False, swiglu: bool = False,
                 postnorm: bool = False, rope: bool = False, pt_hw_seq_len: int = 16,
                 intp_freq: bool = False, norm: str = "layernorm",
                 ls_init_value: float | None = None, mean_pool: bool = False,
                 head_bias: bool = True) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch_size}")
        heads = heads or max(width // head_width, 1)
        grid = image_size // patch_size
        self.image_size = image_size
        self.output_dim = embed_dim
        self.patch_embed = _PatchEmbed(patch_size, width)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, grid * grid + 1, width))
        self.rope = VisionRope(width // heads, grid, pt_seq_len=pt_hw_seq_len,
                               intp_freq=intp_freq) if rope else None
        hidden = mlp_hidden or int(width * mlp_ratio)
        self.blocks = nn.ModuleList(
            EvaBlock(width, heads, hidden, qkv_bias=qkv_bias, subln=subln, swiglu=swiglu,
                     postnorm=postnorm, norm=norm, ls_init_value=ls_init_value)
            for _ in range(depth))
        self.norm = nn.Identity() if mean_pool else _norm(norm, width)
        self.fc_norm = _norm(norm, width) if mean_pool else None
        self.head = nn.Linear(width, embed_dim, bias=head_bias) if embed_dim > 0 else nn.Identity()

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Run the blocks on a ``[B, T, width]`` token sequence (class token first)."""
        for block in self.blocks:
            x = block(x, self.rope)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got "
                             f"{tuple(x.shape[-2:])}")
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x), dim=1)
        x = self.norm(self.forward_tokens(x + self.pos_embed.to(x.dtype)))
        pooled = self.fc_norm(x.mean(1)) if self.fc_norm is not None else x[:, 0]
        return self.head(pooled)


# --- the space --------------------------------------------------------------------------------

class CLIPSpace(ExpertSpace):
    """An image-text space: ``encoders["image"]`` is the ``visual`` tower, ``encoders["text"]``
    the text tower; ``logit_scale`` is kept so the checkpoint loads strictly.

    ``text_layout`` says where the published text tower lives: ``"root"`` (plain CLIP) or
    ``"text"`` (``text.*``, CustomCLIP); loading adopts the checkpoint's.
    """

    def __init__(self, config: ExpertConfig, embed_dim: int, *, visual: nn.Module | None,
                 text: nn.Module | None, text_layout: str = "root") -> None:
        super().__init__(config, embed_dim)
        if visual is not None:
            self.encoders["image"] = visual
        if text is not None:
            self.encoders["text"] = text
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.text_layout = text_layout

    def published_parts(self) -> dict[str, nn.Module | nn.Parameter]:
        """Top-level published name -> module / parameter (for this space's modalities)."""
        parts: dict[str, nn.Module | nn.Parameter] = {}
        if "image" in self.encoders:
            parts["visual"] = self.encoders["image"]
        if "text" in self.encoders:
            text = self.encoders["text"]
            if self.text_layout == "text":
                parts["text"] = text
            else:
                parts.update({name: getattr(text, name) for name in _TEXT_PARTS})
        parts["logit_scale"] = self.logit_scale
        return parts

    def published_state_dict(self) -> dict[str, torch.Tensor]:
        """This space's weights under the published checkpoint names."""
        return dict(_Published(self.published_parts()).state_dict())

    def load_published(self, state: Mapping[str, torch.Tensor], *, what: str) -> None:
        """Load a published state_dict strictly. Keys of towers this space does not build
        (``modalities`` left one out) are ignored; anything else that does not fit is named."""
        state = dict(state)
        if any(k.startswith("text.") for k in state):
            self.text_layout = "text"
        elif "token_embedding.weight" in state:
            self.text_layout = "root"
        if "image" not in self.encoders:
            state = {k: v for k, v in state.items() if not k.startswith("visual.")}
        if "text" not in self.encoders:
            state = {k: v for k, v in state.items()
                     if k.startswith("visual.") or k == "logit_scale"}
        load_parts(self.published_parts(), state, what=what)


def _wanted(cfg: ExpertConfig, available: tuple[str, ...]) -> tuple[str, ...]:
    if cfg.modalities is None:
        return available
    unknown = sorted(set(cfg.modalities) - set(available))
    if unknown:
        raise ValueError(f"{cfg.kind}: no encoder for {unknown}; it embeds {list(available)}")
    return tuple(m for m in available if m in cfg.modalities)


def _tower_args(arch: Mapping[str, Any], tower: str) -> dict[str, Any]:
    """``arch[tower]`` with the shared ``embed_dim`` / ``act`` filled in."""
    args = dict(arch.get(tower, {}))
    for key in ("embed_dim", "act"):
        if key in arch:
            args.setdefault(key, arch[key])
    return args


def _text_tower(args: Mapping[str, Any]) -> TextTransformer:
    known = ("context_length", "vocab_size", "width", "layers", "heads", "mlp_ratio",
             "embed_dim", "act")
    return TextTransformer(**{k: v for k, v in args.items() if k in known})


def build_open_clip(cfg: ExpertConfig, load_weights: bool) -> CLIPSpace:
    """Builder of kind ``"open_clip"`` (see the module docstring for ``arch``)."""
    mods = _wanted(cfg, ("image", "text"))
    state = None
    if load_weights:
        state = {k: v for k, v in read_published_state(cfg.checkpoint).items()
                 if k not in _OPENAI_JIT_EXTRAS}
    vis_args, txt_args = _tower_args(cfg.arch, "vision"), _tower_args(cfg.arch, "text")
    if state is not None:
        try:
            if "image" in mods:
                vis_args = {**infer_vision_config(state), **vis_args}
            if "text" in mods:
                txt_args = {**infer_text_config(state), **txt_args}
        except KeyError as err:
            raise ValueError(f"open_clip {cfg.checkpoint}: not an open_clip CLIP checkpoint, "
                             f"missing key {err}") from None
    visual = VisionTransformer(**vis_args) if "image" in mods else None
    text = _text_tower(txt_args) if "text" in mods else None
    embed = (visual or text).output_dim
    space = CLIPSpace(cfg, embed, visual=visual, text=text,
                      text_layout=cfg.arch.get("text_layout", "root"))
    if state is not None:
        space.load_published(state, what=f"open_clip {cfg.checkpoint}")
    return space


def from_open_clip_timm_eva(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip's timm-trunk EVA names (``visual.trunk.*``) -> BAAI EVA-CLIP names."""
    if not any(k.startswith("visual.trunk.") for k in state):
        return dict(state)
    swiglu = any(".mlp.fc1_g." in k for k in state)
    out = {}
    for k, v in state.items():
        if k.startswith("visual.trunk."):
            k = "visual." + k.removeprefix("visual.trunk.")
            k = (k.replace(".attn.norm.", ".attn.inner_attn_ln.")
                 .replace(".mlp.norm.", ".mlp.ffn_ln.")
                 .replace(".mlp.fc1_g.", ".mlp.w1.").replace(".mlp.fc1_x.", ".mlp.w2."))
            if swiglu:
                k = k.replace(".mlp.fc2.", ".mlp.w3.")
            k = k.replace(".attn.q_proj.bias", ".attn.q_bias").replace(".attn.v_proj.bias",
                                                                      ".attn.v_bias")
        out[k] = v
    return out


def build_eva_clip(cfg: ExpertConfig, load_weights: bool) -> CLIPSpace:
    """Builder of kind ``"eva_clip"``: ``arch = {"embed_dim", "vision": {...EvaVisionTransformer
    kwargs}, "text": {...TextTransformer kwargs}}`` (sizes are not inferred: EVA variants
    differ in switches the shapes do not show)."""
    mods = _wanted(cfg, ("image", "text"))
    arch = cfg.arch
    vis_args = dict(arch.get("vision", {}))
    if "embed_dim" in arch:
        vis_args.setdefault("embed_dim", arch["embed_dim"])
    txt_args = dict(arch.get("text", {}))
    if "embed_dim" in arch:
        txt_args.setdefault("embed_dim", arch["embed_dim"])
    txt_args.setdefault("act", "gelu")
    visual = EvaVisionTransformer(**vis_args) if "image" in mods else None
    text = _text_tower(txt_args) if "text" in mods else None
    embed = visual.output_dim if visual is not None else text.output_dim
    space = CLIPSpace(cfg, embed, visual=visual, text=text,
                      text_layout=arch.get("text_layout", "text"))
    if load_weights:
        state = from_open_clip_timm_eva(read_published_state(cfg.checkpoint))
        if visual is not None and visual.rope is not None:
            state = {k: v for k, v in state.items()
                     if not k.endswith((".freqs_cos", ".freqs_sin"))}
        space.load_published(state, what=f"eva_clip {cfg.checkpoint}")
    return space


register_expert_kind("open_clip", build_open_clip)
register_expert_kind("eva_clip", build_eva_clip)


# --- named configs ----------------------------------------------------------------------------

def clip_preprocess(size: int, context_length: int = 77) -> dict[str, dict[str, Any]]:
    """The image/text input contract of the CLIP-family experts registered here."""
    return {
        "image": {"size": size, "mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD),
                  "interpolation": "bicubic", "resize": "shortest_side_then_center_crop"},
        "text": {"tokenizer": "clip_bpe", "context_length": context_length},
    }


_TEXT_1280 = {"context_length": 77, "vocab_size": 49408, "width": 1280, "layers": 32,
              "heads": 20}

#: EVA02-CLIP-bigE-14-plus (EVA-CLIP ``EVA02-CLIP-bigE-14-plus.json``; open_clip
#: ``EVA02-E-14-plus``): post-norm, fused qkv with q/v bias, GELU MLP 15360, cls pooling.
EVA02_E14P_ARCH: dict[str, Any] = {
    "embed_dim": 1024,
    "vision": {"image_size": 224, "patch_size": 14, "width": 1792, "depth": 64, "heads": 16,
               "mlp_hidden": 15360, "qkv_bias": True, "postnorm": True},
    "text": dict(_TEXT_1280),
}

register_expert("eva02_clip_e14p", ExpertConfig(
    kind="eva_clip", arch=EVA02_E14P_ARCH, preprocess=clip_preprocess(224)))

#: EVA-CLIP-18B (``EVA-CLIP-18B.json``): 48 post-norm blocks of width 5120 (40 heads of 128),
#: RMSNorm, no q/v bias, MLP 25600, head without bias; the binding target (1536-d).
register_expert("eva_clip_18b", ExpertConfig(
    kind="eva_clip",
    arch={"embed_dim": 1536,
          "vision": {"image_size": 224, "patch_size": 14, "width": 5120, "depth": 48,
                     "heads": 40, "mlp_hidden": 25600, "qkv_bias": False, "postnorm": True,
                     "norm": "rmsnorm", "head_bias": False},
          "text": dict(_TEXT_1280)},
    preprocess=clip_preprocess(224)))

register_expert("openai_clip_vit_b32", ExpertConfig(
    kind="open_clip",
    arch={"embed_dim": 512, "act": "quick_gelu",
          "vision": {"image_size": 224, "patch_size": 32, "width": 768, "layers": 12,
                     "heads": 12},
          "text": {"context_length": 77, "vocab_size": 49408, "width": 512, "layers": 12,
                   "heads": 8}},
    preprocess=clip_preprocess(224)))

#: Apple DFN5B-CLIP ViT-H/14 (open_clip ``ViT-H-14-quickgelu`` / ``-378-quickgelu``, "dfn5b").
#: Which resolution OmniBind's ``DFN_H14`` is is not stated; both are registered.
for _name, _size in (("dfn5b_clip_vit_h14", 224), ("dfn5b_clip_vit_h14_378", 378)):
    register_expert(_name, ExpertConfig(
        kind="open_clip",
        arch={"embed_dim": 1024, "act": "quick_gelu",
              "vision": {"image_size": _size, "patch_size": 14, "width": 1280, "layers": 32,
                         "heads": 16},
              "text": {"context_length": 77, "vocab_size": 49408, "width": 1024, "layers": 24,
                       "heads": 16}},
        preprocess=clip_preprocess(_size)))
