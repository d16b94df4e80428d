"""LAION-CLAP audio-text expert (kind ``"laion_clap"``) in the published checkpoint layout.

Layout followed: github.com/LAION-AI/CLAP, ``src/laion_clap/clap_module/model.py``
(class ``CLAP``), ``htsat.py`` (``HTSAT_Swin_Transformer``), ``feature_fusion.py`` (``AFF``),
the torchlibrosa ``Spectrogram`` / ``LogmelFilterBank`` front end it embeds, and HF
``RobertaModel`` for the text branch. Every parameter and persistent buffer has the published
name, so a published ``.pt`` (``{"state_dict": {"module.<key>": ...}, "epoch": ...,
"optimizer": ...}``) loads strictly:

- ``audio_branch.spectrogram_extractor.stft.conv_{real,imag}.weight`` (Hann-windowed DFT as a
  Conv1d), ``audio_branch.logmel_extractor.melW`` (librosa Slaney mel filterbank),
  ``audio_branch.bn0``, ``audio_branch.patch_embed.{proj,norm}``,
  ``audio_branch.layers.N.blocks.M.{norm1, attn.{qkv, proj, relative_position_bias_table,
  relative_position_index}, attn_mask (shifted blocks only), norm2, mlp.fc1, mlp.fc2}``,
  ``audio_branch.layers.N.downsample.{norm,reduction}``, ``audio_branch.norm``,
  ``audio_branch.tscam_conv``, ``audio_branch.head``; fusion (``aff_2d``) adds
  ``audio_branch.patch_embed.mel_conv2d`` and ``audio_branch.patch_embed.fusion_model.{local_att,
  global_att}.*``.
- ``text_branch.embeddings.{word,position,token_type}_embeddings``, ``text_branch.embeddings.
  LayerNorm``, ``text_branch.encoder.layer.N.{attention.self.{query,key,value},
  attention.output.{dense,LayerNorm}, intermediate.dense, output.{dense,LayerNorm}}``,
  ``text_branch.pooler.dense`` (RoBERTa-base, post-LayerNorm, eps 1e-5, pad id 1).
- ``text_projection.{0,2}``, ``audio_projection.{0,2}`` (Linear-ReLU-Linear into the 512-d joint
  space), ``text_transform.sequential.{0,3}``, ``audio_transform.sequential.{0,3}`` (training-only
  MLPs, loaded but unused by embeddings), ``logit_scale_a``, ``logit_scale_t``.

Embeddings are what ``CLAP.get_audio_embedding`` / ``get_text_embedding`` return before their
L2 normalisation: ``audio_projection(mean over HTSAT's final normed tokens)`` and
``text_projection(RoBERTa pooler_output)``.

Inputs (``ExpertConfig.preprocess``):

- ``audio``: a 48 kHz mono waveform ``[B, T]`` (float in [-1, 1]). Shorter clips are
  repeat-padded to 10 s (``data_filling="repeatpad"``), longer ones are cut to their first 10 s
  (the published ``rand_trunc`` crops at random; a deterministic crop is chosen here). The
  non-fusion model computes its log-mel inside (``spectrogram_extractor`` ->
  ``logmel_extractor`` -> ``bn0``), as published. The fusion model was trained on the data
  pipeline's torchaudio HTK mel (``training/data.py: get_mel``); for a waveform input it is
  recomputed here in plain torch (``torch.stft`` + HTK filterbank, power to dB) and fed as the
  four identical ``mel_fusion`` channels of a clip of at most 10 s (``longer=False``). For the
  published long-audio fusion path pass a mapping ``{"mel_fusion": [B, 4, T, n_mels],
  "longer": [B] bool}`` prepared like ``get_audio_features`` (random chunks + shrunk global
  view); the attentional feature fusion (``AFF``) then runs on the longer items.
  The published hook also round-trips waveforms through int16; do that in the pipeline if wanted.
- ``text``: ``{"input_ids": [B, L], "attention_mask": [B, L]}`` from the RoBERTa tokenizer
  (``roberta-base``, max length 77, padding to max length); a bare id tensor gets the mask
  ``ids != pad_id``. :meth:`ClapSpace.tokenize` uses a local tokenizer directory
  (``preprocess["text"]["tokenizer"]``) via ``transformers.AutoTokenizer`` if one is set.

Not supported (fails loudly): PANN audio branches, BERT/BART/transformer text branches, the 1-D
fusion variants (``daf_1d``/``aff_1d``/``iaff_1d``, which add ``audio_branch.mel_conv1d``),
``channel_map`` / ``daf_2d`` / ``iaff_2d`` fusion, absolute position embeddings (``ape``),
training-time SpecAugment / mixup. ``tscam_conv`` and ``head`` (the AudioSet tagging head) are
loaded but not evaluated: they do not feed the embedding. Published checkpoints also carry the
derived buffer ``text_branch.embeddings.position_ids`` (older transformers); it is dropped on load
as the reference loader does. Checkpoints without the STFT / mel front-end tensors get them
computed from the config (they are fixed functions of it).

This module is the family: config, joint space, loading, registration. The branches live in
:mod:`.clap_htsat` (audio) and :mod:`.clap_roberta` (text).
"""
from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...models.vit import read_checkpoint
from .clap_htsat import HTSAT, htk_mel_filterbank
from .clap_roberta import RobertaModel
from .common import ExpertConfig, ExpertSpace, register_expert, register_expert_kind

__all__ = ["ClapSpace", "HTSAT", "RobertaModel", "build_clap", "read_clap_checkpoint",
           "CLAP_DEFAULT_ARCH"]

KIND = "laion_clap"

#: HTSAT-tiny / RoBERTa-base defaults (``model_configs/HTSAT-tiny.json`` + ``htsat.py``).
CLAP_DEFAULT_ARCH: dict[str, Any] = {
    # audio front end (audio_cfg)
    "sample_rate": 48000, "clip_samples": 480000, "n_fft": 1024, "hop_length": 480,
    "n_mels": 64, "fmin": 50.0, "fmax": 14000.0,
    # HTSAT (create_htsat_model)
    "spec_size": 256, "patch_size": 4, "patch_stride": 4, "htsat_dim": 96,
    "depths": [2, 2, 6, 2], "num_heads": [4, 8, 16, 32], "swin_window": 8, "mlp_ratio": 4.0,
    "num_classes": 527, "enable_fusion": False, "fusion_type": "aff_2d",
    # RoBERTa-base text branch
    "text_vocab_size": 50265, "text_max_positions": 514, "text_type_vocab_size": 1,
    "text_width": 768, "text_layers": 12, "text_heads": 12, "text_mlp_dim": 3072,
    "text_ln_eps": 1e-5, "text_pad_id": 1,
    # joint space
    "joint_embed_dim": 512, "mlp_act": "relu",
}

#: Derived tensors some checkpoints carry that the model recomputes (dropped on load).
_DERIVED_KEYS = ("text_branch.embeddings.position_ids", "text_branch.embeddings.token_type_ids")
_FRONTEND_KEYS = ("audio_branch.spectrogram_extractor.stft.conv_real.weight",
                  "audio_branch.spectrogram_extractor.stft.conv_imag.weight",
                  "audio_branch.logmel_extractor.melW")


def _arch(cfg: ExpertConfig) -> dict[str, Any]:
    unknown = sorted(set(cfg.arch) - set(CLAP_DEFAULT_ARCH))
    if unknown:
        raise ValueError(f"{KIND}: unknown arch key(s) {unknown}; known: "
                         f"{sorted(CLAP_DEFAULT_ARCH)}")
    return {**CLAP_DEFAULT_ARCH, **cfg.arch}


class _MLPLayers(nn.Module):
    """CLAP ``MLPLayers(units=[d, d, d])``: ``sequential.{0,3}`` (Linear-ReLU-Dropout-Linear)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.sequential = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(0.1),
                                        nn.Linear(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sequential(x)


def _projection(d_in: int, d_out: int, act: str) -> nn.Sequential:
    acts = {"relu": nn.ReLU, "gelu": nn.GELU}
    if act not in acts:
        raise ValueError(f"{KIND}: mlp_act must be one of {sorted(acts)}, got {act!r}")
    return nn.Sequential(nn.Linear(d_in, d_out), acts[act](), nn.Linear(d_out, d_out))


# --- the space ---------------------------------------------------------------------------------

class _EncoderView(nn.Module):
    """An ``encoders[m]`` entry: calls the space without registering it again as a child (so
    the state_dict keeps exactly the published names)."""

    def __init__(self, space: nn.Module, method: str) -> None:
        super().__init__()
        self.__dict__["_space"] = space
        self._method = method

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return getattr(self.__dict__["_space"], self._method)(*args, **kwargs)


class ClapSpace(ExpertSpace):
    """LAION-CLAP's joint audio-text space (modules at the published root names)."""

    def __init__(self, config: ExpertConfig) -> None:
        a = _arch(config)
        super().__init__(config, int(a["joint_embed_dim"]))
        self.arch = a
        self.audio_branch = HTSAT(a)
        self.text_branch = RobertaModel(a)
        joint = int(a["joint_embed_dim"])
        self.text_transform = _MLPLayers(joint)
        self.text_projection = _projection(int(a["text_width"]), joint, a["mlp_act"])
        self.audio_transform = _MLPLayers(joint)
        self.audio_projection = _projection(self.audio_branch.num_features, joint, a["mlp_act"])
        self.logit_scale_a = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.logit_scale_t = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.register_buffer("_htk_mel", htk_mel_filterbank(
            int(a["sample_rate"]), int(a["n_fft"]), int(a["n_mels"]), float(a["fmin"]),
            float(a["fmax"])), persistent=False)
        wanted = config.modalities or ["audio", "text"]
        bad = sorted(set(wanted) - {"audio", "text"})
        if bad:
            raise ValueError(f"{KIND}: no encoder for modalities {bad}; it embeds audio, text")
        for m in wanted:
            self.encoders[m] = _EncoderView(self, f"embed_{m}")

    # audio ------------------------------------------------------------------------------------
    def _fit_clip(self, waveform: torch.Tensor) -> torch.Tensor:
        """Repeat-pad short clips to ``clip_samples``, keep the first ``clip_samples`` of long."""
        n = int(self.arch["clip_samples"])
        t = waveform.shape[-1]
        if t > n:
            return waveform[..., :n]
        if t < n:
            waveform = waveform.repeat(1, n // t)
            waveform = F.pad(waveform, (0, n - waveform.shape[-1]))
        return waveform

    def htk_logmel(self, waveform: torch.Tensor) -> torch.Tensor:
        """The fusion models' input mel (torchaudio ``MelSpectrogram`` HTK, no norm, power 2,
        ``AmplitudeToDB``): ``[B, T]`` -> ``[B, frames, n_mels]``."""
        n_fft, hop = int(self.arch["n_fft"]), int(self.arch["hop_length"])
        window = torch.hann_window(n_fft, device=waveform.device, dtype=waveform.dtype)
        spec = torch.stft(waveform, n_fft, hop_length=hop, win_length=n_fft, window=window,
                          center=True, pad_mode="reflect", onesided=True, return_complex=True)
        mel = spec.abs().pow(2).transpose(1, 2) @ self._htk_mel.to(waveform.dtype)
        return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))

    def embed_audio(self, waveform: torch.Tensor | None = None,
                    mel_fusion: torch.Tensor | None = None,
                    longer: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, embed_dim]`` audio embeddings (before L2 normalisation).

        ``waveform``: ``[B, T]`` mono at ``sample_rate``; or (fusion models) ``mel_fusion``
        ``[B, 4, frames, n_mels]`` with ``longer`` ``[B]`` bool, as ``get_audio_features`` makes.
        """
        branch = self.audio_branch
        if mel_fusion is not None:
            if not branch.enable_fusion:
                raise ValueError(f"{KIND}: mel_fusion input needs a fusion model "
                                 "(arch enable_fusion=True)")
            idx = None if longer is None else torch.nonzero(longer.bool(), as_tuple=False)[:, 0]
            feats = branch(mel_fusion, idx)
        else:
            if waveform is None:
                raise ValueError(f"{KIND}: audio needs a waveform [B, T] (or mel_fusion)")
            if waveform.ndim != 2:
                raise ValueError(f"{KIND}: waveform must be [B, T], got {tuple(waveform.shape)}")
            waveform = self._fit_clip(waveform.float())
            if branch.enable_fusion:
                mel = self.htk_logmel(waveform)[:, None].expand(-1, 4, -1, -1)
                feats = branch(mel, None)
            else:
                feats = branch(branch.logmel(waveform), None)
        return self.audio_projection(feats)

    # text -------------------------------------------------------------------------------------
    def embed_text(self, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, embed_dim]`` text embeddings (before L2 normalisation) from RoBERTa ids."""
        return self.text_projection(self.text_branch(input_ids.long(), attention_mask))

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """RoBERTa ids + mask (max length 77) with the local tokenizer directory named in
        ``preprocess["text"]["tokenizer"]`` (``transformers`` tokenizer, offline)."""
        text_cfg = self.config.preprocess.get("text", {})
        path = text_cfg.get("tokenizer")
        if not path:
            raise ValueError(f"{KIND}: set preprocess['text']['tokenizer'] to a local "
                             "roberta-base tokenizer directory")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        out = tok(list(texts), padding="max_length", truncation=True,
                  max_length=int(text_cfg.get("context_length", 77)), return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def read_clap_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """A published CLAP ``.pt`` (full training checkpoint) read weights-only.

    The released files hold numpy scalars next to the weights; they are allow-listed for the
    weights-only unpickler (no arbitrary code runs).
    """
    try:
        return read_checkpoint(path)
    except pickle.UnpicklingError:
        import numpy as np

        try:  # numpy >= 2 (importing numpy.core there warns)
            from numpy._core.multiarray import scalar
        except ImportError:  # numpy 1.x
            from numpy.core.multiarray import scalar
        allowed: list[Any] = [np.dtype, (scalar, "numpy.core.multiarray.scalar"),
                              (scalar, "numpy._core.multiarray.scalar")]
        allowed += [getattr(np.dtypes, n) for n in ("Float32DType", "Float64DType", "Int64DType")
                    if hasattr(getattr(np, "dtypes", None), n)]
        with torch.serialization.safe_globals(allowed):
            return read_checkpoint(path)


def build_clap(cfg: ExpertConfig, load_weights: bool) -> ClapSpace:
    """Builder for kind ``"laion_clap"``: the space, with its published checkpoint if asked."""
    space = ClapSpace(cfg)
    if load_weights:
        assert cfg.checkpoint is not None
        state = {k: v for k, v in read_clap_checkpoint(cfg.checkpoint).items()
                 if k not in _DERIVED_KEYS}
        own = space.state_dict()
        for key in _FRONTEND_KEYS:  # fixed functions of the config: fill if absent
            state.setdefault(key, own[key])
        space.load_published(state, what=f"{KIND} checkpoint {cfg.checkpoint}")
    return space


register_expert_kind(KIND, build_clap)


def _preprocess(arch: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    a = {**CLAP_DEFAULT_ARCH, **arch}
    return {
        "audio": {"input": "waveform [B, T], mono float in [-1, 1]",
                  "sample_rate": a["sample_rate"], "clip_seconds": a["clip_samples"] / a[
                      "sample_rate"], "clip_samples": a["clip_samples"], "n_mels": a["n_mels"],
                  "window": a["n_fft"], "hop": a["hop_length"], "fmin": a["fmin"],
                  "fmax": a["fmax"], "fill": "repeatpad", "truncate": "first clip"},
        "text": {"input": "input_ids + attention_mask [B, L]", "tokenizer": None,
                 "tokenizer_name": "roberta-base", "context_length": 77,
                 "pad_id": a["text_pad_id"]},
    }


#: ``630k-fusion-best.pt``: HTSAT-tiny, aff_2d fusion (``CLAP_Module(enable_fusion=True)``).
_FUSION_ARCH = {"htsat_dim": 96, "depths": [2, 2, 6, 2], "enable_fusion": True,
                "fusion_type": "aff_2d"}
#: ``music_speech_audioset_epoch_15_esc_89.98.pt``: HTSAT-base, no fusion.
_MSA_ARCH = {"htsat_dim": 128, "depths": [2, 2, 12, 2], "enable_fusion": False}

register_expert("laion_clap_630k_fusion", ExpertConfig(
    kind=KIND, arch=dict(_FUSION_ARCH), preprocess=_preprocess(_FUSION_ARCH)))
register_expert("laion_clap_music_speech_audioset", ExpertConfig(
    kind=KIND, arch=dict(_MSA_ARCH), preprocess=_preprocess(_MSA_ARCH)))
