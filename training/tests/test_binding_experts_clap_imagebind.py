"""LAION-CLAP and ImageBind experts: tiny architectures saved in the published file formats
round-trip through ``build_expert``; wrong checkpoints fail by name; the named configs have the
published tensor shapes (built on the meta device, nothing allocated)."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from omnibind_train.binding.experts import ExpertConfig, build_expert, get_expert_config
from omnibind_train.binding.experts.clap import ClapSpace, read_clap_checkpoint
from omnibind_train.binding.experts.imagebind import ImageBindSpace

CLAP_TINY = {
    "sample_rate": 8000, "clip_samples": 2048, "n_fft": 64, "hop_length": 32, "n_mels": 8,
    "fmin": 50.0, "fmax": 3000.0, "spec_size": 32, "htsat_dim": 16, "depths": [2, 1],
    "num_heads": [2, 4], "swin_window": 4, "num_classes": 10, "text_vocab_size": 100,
    "text_max_positions": 40, "text_width": 32, "text_layers": 1, "text_heads": 2,
    "text_mlp_dim": 64, "joint_embed_dim": 24,
}
IB_TINY = {
    "embed_dim": 16,
    "vision": {"width": 32, "layers": 1, "heads": 2, "image_size": 28},
    "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 8, "vocab_size": 50},
    "audio": {"width": 32, "layers": 1, "heads": 2, "mel_bins": 32, "target_len": 36},
    "depth": {"width": 16, "layers": 1, "heads": 2, "image_size": 32},
    "thermal": {"width": 32, "layers": 1, "heads": 2, "image_size": 32},
    "imu": {"width": 16, "layers": 1, "heads": 2, "length": 40},
}
CLAP_FRONTEND = ("spectrogram_extractor", "logmel_extractor")


def _randomise(module: torch.nn.Module, keep: tuple[str, ...] = ()) -> None:
    """Random weights and BatchNorm statistics, so a dropped or misplaced tensor shows."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if not any(k in name for k in keep):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))


def _assert_unit(out: torch.Tensor, batch: int, dim: int) -> None:
    assert out.shape == (batch, dim)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(batch), atol=1e-5, rtol=0)


# --- LAION-CLAP --------------------------------------------------------------------------------

def _clap_source(fusion: bool) -> tuple[ExpertConfig, ClapSpace]:
    cfg = ExpertConfig(kind="laion_clap", arch={**CLAP_TINY, "enable_fusion": fusion})
    src = build_expert(cfg, load_weights=False)
    _randomise(src, keep=CLAP_FRONTEND)
    return cfg, src.eval()


def _save_clap(state: dict[str, torch.Tensor], path: Path) -> Path:
    """The published .pt shape: a training checkpoint with DDP-prefixed keys (and, like the
    released files, numpy scalars beside them)."""
    import numpy as np

    torch.save({"epoch": 3, "best_metric": np.float64(0.9),
                "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    return path


def _clap_inputs() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(2)
    wave = 0.3 * torch.randn(3, 1500, generator=gen)  # shorter than a clip: repeat-padded
    ids = torch.randint(3, 100, (3, 10), generator=gen)
    ids[:, 0] = 0
    ids[0, 7:] = 1  # RoBERTa padding
    mask = ids.ne(1).long()
    return wave, {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("fusion", [False, True], ids=["htsat", "htsat_fusion"])
def test_clap_published_checkpoint_round_trip(tmp_path: Path, fusion: bool) -> None:
    cfg, src = _clap_source(fusion)
    state = src.state_dict()
    state["text_branch.embeddings.position_ids"] = torch.arange(40)[None]  # older transformers
    path = _save_clap(state, tmp_path / "clap.pt")

    saved = read_clap_checkpoint(str(path))  # weights-only, numpy scalars allow-listed
    saved = {"module." + k: v for k, v in saved.items()}
    for key in ("text_branch.encoder.layer.0.attention.self.query.weight",
                "text_branch.encoder.layer.0.attention.output.LayerNorm.weight",
                "text_branch.encoder.layer.0.intermediate.dense.weight",
                "text_branch.encoder.layer.0.output.dense.weight",
                "text_branch.embeddings.word_embeddings.weight",
                "text_branch.embeddings.token_type_embeddings.weight",
                "text_branch.pooler.dense.weight",
                "audio_branch.spectrogram_extractor.stft.conv_real.weight",
                "audio_branch.logmel_extractor.melW", "audio_branch.bn0.running_var",
                "audio_branch.patch_embed.proj.weight",
                "audio_branch.layers.0.blocks.1.attn.qkv.weight",
                "audio_branch.layers.0.blocks.1.attn.relative_position_bias_table",
                "audio_branch.layers.0.blocks.1.attn_mask",
                "audio_branch.layers.0.blocks.0.mlp.fc2.weight",
                "audio_branch.layers.0.downsample.reduction.weight",
                "audio_branch.norm.weight", "audio_branch.tscam_conv.weight",
                "audio_branch.head.weight", "text_projection.0.weight", "text_projection.2.weight",
                "audio_projection.2.weight", "text_transform.sequential.3.weight",
                "audio_transform.sequential.0.weight", "logit_scale_a", "logit_scale_t"):
        assert "module." + key in saved, key
    fusion_key = "module.audio_branch.patch_embed.fusion_model.local_att.0.weight"
    assert (fusion_key in saved) is fusion
    assert ("module.audio_branch.patch_embed.mel_conv2d.weight" in saved) is fusion

    loaded = build_expert(cfg, checkpoint=str(path))
    assert isinstance(loaded, ClapSpace) and loaded.modalities == ("audio", "text")
    wave, text = _clap_inputs()
    with torch.no_grad():
        for modality, inputs in (("audio", wave), ("text", text)):
            raw_src = src.encoders[modality](**inputs) if isinstance(inputs, dict) \
                else src.encoders[modality](inputs)
            raw_dst = loaded.encoders[modality](**inputs) if isinstance(inputs, dict) \
                else loaded.encoders[modality](inputs)
            torch.testing.assert_close(raw_dst, raw_src, rtol=0, atol=0)
            out = loaded.encode(modality, inputs)
            torch.testing.assert_close(out, src.encode(modality, inputs), rtol=0, atol=0)
            _assert_unit(out, 3, 24)
        # text padding is masked: changing a padded id leaves that item's embedding alone
        changed = {k: v.clone() for k, v in text.items()}
        changed["input_ids"][0, 8] = 5
        torch.testing.assert_close(loaded.encode("text", changed)[0],
                                   loaded.encode("text", text)[0], atol=1e-5, rtol=0)
        if fusion:  # the published long-audio path: mel_fusion chunks + AFF on 'longer' items
            mel = torch.randn(3, 4, 65, 8, generator=torch.Generator().manual_seed(3))
            inputs = {"mel_fusion": mel, "longer": torch.tensor([True, False, True])}
            out = loaded.encode("audio", inputs)
            torch.testing.assert_close(out, src.encode("audio", inputs), rtol=0, atol=0)
            _assert_unit(out, 3, 24)
            short = loaded.encode("audio", {"mel_fusion": mel, "longer": torch.zeros(3).bool()})
            assert not torch.allclose(out[0], short[0])  # the fusion branch acts
            torch.testing.assert_close(out[1], short[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("fault", ["renamed", "missing", "shape"])
def test_clap_wrong_checkpoint_is_named(tmp_path: Path, fault: str) -> None:
    cfg, src = _clap_source(False)
    state = src.state_dict()
    key = "audio_branch.layers.0.blocks.1.attn.qkv.weight"
    if fault == "renamed":
        state["audio_branch.layers.0.blocks.1.attn.qkv_w"] = state.pop(key)
    elif fault == "missing":
        del state[key]
    else:
        state[key] = torch.zeros(5, 5)
    path = _save_clap(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"qkv") as err:
        build_expert(cfg, checkpoint=str(path))
    assert key in str(err.value)
    assert {"renamed": "unexpected", "missing": "missing", "shape": "shape mismatch"}[fault] \
        in str(err.value)


def test_clap_frontend_matches_librosa() -> None:
    librosa = pytest.importorskip("librosa")
    import numpy as np

    cfg, src = _clap_source(False)
    branch = src.audio_branch
    ref = librosa.filters.mel(sr=8000, n_fft=64, n_mels=8, fmin=50, fmax=3000).T
    np.testing.assert_allclose(branch.logmel_extractor.melW.numpy(), ref, atol=1e-6)
    # torchlibrosa's STFT: reflect-pad n_fft // 2 each side, periodic Hann, |rfft|^2 per hop
    wave = np.random.default_rng(0).standard_normal(800)
    padded = np.pad(wave, 32, mode="reflect")
    window = librosa.filters.get_window("hann", 64, fftbins=True)
    frames = np.stack([padded[i * 32:i * 32 + 64] * window for i in range(1 + 800 // 32)])
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    ours = branch.spectrogram_extractor(torch.from_numpy(wave).float()[None])[0, 0].numpy()
    np.testing.assert_allclose(ours, power, atol=1e-5 * power.max())
    # HTK mel (fusion input) agrees with librosa's htk=True, norm=None filterbank
    htk = librosa.filters.mel(sr=8000, n_fft=64, n_mels=8, fmin=50, fmax=3000, htk=True,
                              norm=None).T
    np.testing.assert_allclose(src._htk_mel.numpy(), htk, atol=1e-6)


def test_clap_named_configs_have_published_shapes() -> None:
    expect = {
        "laion_clap_630k_fusion": {  # HTSAT-tiny + aff_2d fusion
            "audio_projection.0.weight": (512, 768),
            "audio_branch.patch_embed.proj.weight": (96, 1, 4, 4),
            "audio_branch.patch_embed.mel_conv2d.weight": (96, 1, 4, 12),
            "audio_branch.patch_embed.fusion_model.global_att.1.weight": (24, 96, 1, 1),
            "audio_branch.layers.2.blocks.5.attn.qkv.weight": (1152, 384),
            "audio_branch.layers.2.blocks.5.attn.relative_position_bias_table": (225, 16),
            "audio_branch.tscam_conv.weight": (527, 768, 2, 3),
        },
        "laion_clap_music_speech_audioset": {  # HTSAT-base
            "audio_projection.0.weight": (512, 1024),
            "audio_branch.layers.2.blocks.11.attn.qkv.weight": (1536, 512),
            "audio_branch.layers.3.blocks.1.attn.relative_position_bias_table": (225, 32),
            "audio_branch.tscam_conv.weight": (527, 1024, 2, 3),
        },
    }
    common = {"audio_branch.spectrogram_extractor.stft.conv_real.weight": (513, 1, 1024),
              "audio_branch.logmel_extractor.melW": (513, 64), "audio_branch.bn0.weight": (64,),
              "text_branch.embeddings.word_embeddings.weight": (50265, 768),
              "text_branch.embeddings.position_embeddings.weight": (514, 768),
              "text_branch.embeddings.token_type_embeddings.weight": (1, 768),
              "text_branch.encoder.layer.11.intermediate.dense.weight": (3072, 768),
              "text_projection.0.weight": (512, 768), "text_transform.sequential.3.weight":
              (512, 512), "logit_scale_t": ()}
    for name, shapes in expect.items():
        cfg = get_expert_config(name)
        assert cfg.preprocess["audio"]["sample_rate"] == 48000
        assert cfg.preprocess["audio"]["hop"] == 480 and cfg.preprocess["audio"]["n_mels"] == 64
        with torch.device("meta"):
            state = ClapSpace(cfg).state_dict()
        assert "audio_branch.layers.3.blocks.1.attn_mask" not in state  # 8x8 map: no shift
        for key, shape in {**common, **shapes}.items():
            assert tuple(state[key].shape) == shape, key


# --- ImageBind ---------------------------------------------------------------------------------

def _ib_inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(1, 40, (2, 8), generator=gen)
    ids[0, 5], ids[1, 7] = 49, 49  # EOT = the largest id
    return {"vision": torch.randn(2, 3, 28, 28, generator=gen), "text": ids,
            "audio": torch.randn(2, 1, 32, 36, generator=gen),
            "thermal": torch.randn(2, 1, 32, 32, generator=gen),
            "depth": torch.randn(2, 1, 32, 32, generator=gen),
            "imu": torch.randn(2, 6, 40, generator=gen)}


def _ib_source() -> tuple[ExpertConfig, ImageBindSpace]:
    cfg = ExpertConfig(kind="imagebind", arch=copy.deepcopy(IB_TINY))
    src = build_expert(cfg, load_weights=False)
    _randomise(src)
    return cfg, src.eval()


def test_imagebind_published_checkpoint_round_trip(tmp_path: Path) -> None:
    cfg, src = _ib_source()
    path = tmp_path / "imagebind_tiny.pth"
    torch.save(src.state_dict(), path)  # the published file is a plain state dict
    saved = torch.load(path, weights_only=True)
    for key in ("modality_preprocessors.vision.rgbt_stem.proj.1.weight",
                "modality_preprocessors.vision.pos_embedding_helper.pos_embed",
                "modality_preprocessors.vision.cls_token",
                "modality_preprocessors.text.token_embedding.weight",
                "modality_preprocessors.text.pos_embed", "modality_preprocessors.text.mask",
                "modality_preprocessors.audio.rgbt_stem.proj.weight",
                "modality_preprocessors.audio.rgbt_stem.norm_layer.weight",
                "modality_preprocessors.thermal.rgbt_stem.proj.weight",
                "modality_preprocessors.depth.depth_stem.proj.weight",
                "modality_preprocessors.imu.imu_stem.proj.weight",
                "modality_trunks.vision.pre_transformer_layer.0.weight",
                "modality_trunks.vision.blocks.0.attn.in_proj_weight",
                "modality_trunks.vision.blocks.0.attn.out_proj.weight",
                "modality_trunks.text.blocks.0.norm_1.weight",
                "modality_trunks.audio.blocks.0.attn.bias_k",
                "modality_trunks.thermal.blocks.0.attn.bias_v",
                "modality_trunks.audio.blocks.0.mlp.fc1.weight",
                "modality_heads.vision.0.weight", "modality_heads.vision.2.weight",
                "modality_heads.text.proj.1.weight", "modality_heads.audio.2.weight",
                "modality_heads.imu.3.weight",
                "modality_postprocessors.text.1.log_logit_scale",
                "modality_postprocessors.audio.1.log_logit_scale"):
        assert key in saved, key
    assert "modality_trunks.vision.blocks.0.attn.bias_k" not in saved
    assert not any(k.startswith("encoders.") for k in saved)

    loaded = build_expert(cfg, checkpoint=str(path))
    assert loaded.modalities == ("vision", "text", "audio", "depth", "thermal", "imu")
    assert loaded.skipped_keys == []
    inputs = _ib_inputs()
    with torch.no_grad():
        for modality, x in inputs.items():
            torch.testing.assert_close(loaded.encoders[modality](x), src.encoders[modality](x),
                                       rtol=0, atol=0)
            out = loaded.encode(modality, x)
            torch.testing.assert_close(out, src.encode(modality, x), rtol=0, atol=0)
            _assert_unit(out, 2, 16)
        # text takes the tokenizer mapping too (mask unused: causal + EOT pooling)
        mapped = loaded.encode("text", {"input_ids": inputs["text"],
                                        "attention_mask": torch.ones(2, 8)})
        torch.testing.assert_close(mapped, loaded.encode("text", inputs["text"]))
        # causal: tokens after EOT do not change the embedding
        later = inputs["text"].clone()
        later[0, 6:] = 3
        torch.testing.assert_close(loaded.encode("text", later)[0],
                                   loaded.encode("text", inputs["text"])[0], atol=1e-5, rtol=0)
        # S clips per item: the mean of the clips' unit embeddings
        clips = torch.stack([inputs["audio"], inputs["audio"].flip(-1)], dim=1)
        per_clip = torch.nn.functional.normalize(
            torch.stack([loaded.encoders["audio"](clips[:, i]) for i in range(2)], 1), dim=-1)
        torch.testing.assert_close(loaded.encoders["audio"](clips), per_clip.mean(1))
    assert loaded.logit_scale("audio") == pytest.approx(20.0)
    assert loaded.logit_scale("vision") == 1.0


def test_imagebind_modalities_filter_and_errors(tmp_path: Path) -> None:
    cfg, src = _ib_source()
    state = src.state_dict()
    full = tmp_path / "full.pth"
    torch.save(state, full)
    binding = ["vision", "text", "audio", "thermal"]
    sub = build_expert(cfg, checkpoint=str(full), modalities=binding)
    assert sub.modalities == tuple(binding)
    assert sub.skipped_keys and all(".depth." in k or ".imu." in k for k in sub.skipped_keys)
    assert "modality_trunks.imu.blocks.0.attn.bias_k" in sub.skipped_keys
    x = _ib_inputs()["thermal"]
    with torch.no_grad():
        torch.testing.assert_close(sub.encode("thermal", x), src.encode("thermal", x),
                                   rtol=0, atol=0)
    with pytest.raises(KeyError):
        sub.encode("imu", _ib_inputs()["imu"])

    # a checkpoint without the imu tower cannot build all six: the missing keys are named
    no_imu = tmp_path / "no_imu.pth"
    torch.save({k: v for k, v in state.items() if ".imu." not in k}, no_imu)
    with pytest.raises(ValueError, match=r"missing key\(s\): modality_heads\.imu\.0\.bias"):
        build_expert(cfg, checkpoint=str(no_imu))

    bad = dict(state)
    bad["modality_heads.vision.2.w"] = bad.pop("modality_heads.vision.2.weight")
    bad["modality_trunks.audio.blocks.0.attn.bias_k"] = torch.zeros(1, 1, 7)
    bad_path = tmp_path / "bad.pth"
    torch.save(bad, bad_path)
    with pytest.raises(ValueError) as err:
        build_expert(cfg, checkpoint=str(bad_path))
    msg = str(err.value)
    assert "unexpected key(s): modality_heads.vision.2.w" in msg
    assert "missing key(s): modality_heads.vision.2.weight" in msg
    assert "modality_trunks.audio.blocks.0.attn.bias_k: checkpoint (1, 1, 7)" in msg

    with pytest.raises(ValueError, match="tokens"):  # wrong input size: no silent interpolation
        sub.encode("vision", torch.randn(1, 3, 42, 42))


def test_imagebind_huge_has_published_shapes() -> None:
    cfg = get_expert_config("imagebind_huge")
    assert cfg.preprocess["audio"]["mean"] == -4.268 and cfg.preprocess["audio"]["std"] == 9.138
    with torch.device("meta"):
        space = ImageBindSpace(cfg)
    state = space.state_dict()
    assert space.embed_dim == 1024
    expect = {
        "modality_preprocessors.vision.rgbt_stem.proj.1.weight": (1280, 3, 2, 14, 14),
        "modality_preprocessors.vision.pos_embedding_helper.pos_embed": (1, 257, 1280),
        "modality_preprocessors.text.pos_embed": (1, 77, 1024),
        "modality_preprocessors.text.token_embedding.weight": (49408, 1024),
        "modality_preprocessors.audio.rgbt_stem.proj.weight": (768, 1, 16, 16),
        "modality_preprocessors.audio.pos_embedding_helper.pos_embed": (1, 229, 768),
        "modality_preprocessors.thermal.pos_embedding_helper.pos_embed": (1, 197, 768),
        "modality_preprocessors.depth.pos_embedding_helper.pos_embed": (1, 197, 384),
        "modality_preprocessors.imu.pos_embed": (1, 251, 512),
        "modality_trunks.vision.blocks.31.attn.in_proj_weight": (3840, 1280),
        "modality_trunks.text.blocks.23.mlp.fc1.weight": (4096, 1024),
        "modality_trunks.audio.blocks.11.attn.bias_k": (1, 1, 768),
        "modality_trunks.imu.blocks.5.attn.bias_v": (1, 1, 512),
        "modality_heads.vision.2.weight": (1024, 1280),
        "modality_heads.text.proj.1.weight": (1024, 1024),
        "modality_heads.thermal.2.weight": (1024, 768),
        "modality_heads.depth.2.weight": (1024, 384),
    }
    for key, shape in expect.items():
        assert tuple(state[key].shape) == shape, key
    assert "modality_trunks.vision.blocks.32.attn.in_proj_weight" not in state
    assert "modality_trunks.text.blocks.24.attn.in_proj_weight" not in state
