"""What teaching needs of the input bundle and of the run that trained it.

* :func:`torch_modules`: the bundle's encoders, text encoder and fusion head rebuilt as torch
  modules from its ``torch/*.safetensors`` (the same builder the runtime's torch backend uses),
  so the taught bundle is exported, parity-checked, from the weights the robot ran;
* :func:`student_encoder`: the new sensor's student, from the registry or the bundle;
* :func:`new_preprocess_config`: its preprocessing config;
* :func:`run_workspace`: the training run behind the bundle (its provenance names the pipeline
  config), when it is in the cache and its checkpoints are the bundle's weights: its data set
  embeddings of the other modalities keep stage II's training data.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from omnibind_ros.core.bundle import ModelBundle

from ..models.build import build_torch_module
from ..models.encoders import ModalityEncoder
from ..models.registry import DEFAULT_ENCODERS, EncoderConfig, build_encoder, get_encoder_config
from ..trainers.common import derive_seed
from .config import TeachConfig

__all__ = ["TeachError", "new_preprocess_config", "run_workspace", "student_encoder",
           "torch_modules"]


class TeachError(ValueError):
    """Teaching cannot proceed; the message says what is missing and what would work."""


def _load(bundle: ModelBundle, component: str, config: Mapping[str, Any], weights: Any,
          what: str) -> nn.Module:
    from safetensors.torch import load_model

    if weights is None:
        raise TeachError(f"bundle {bundle.root} carries no torch weights for {what}: teaching "
                         "re-exports every component from them (export the bundle with "
                         "include_torch_weights=True)")
    module = build_torch_module(component, config, bundle)
    load_model(module, str(weights), strict=True)
    return module.eval()


def torch_modules(bundle: ModelBundle, skip: tuple[str, ...] = ()
                  ) -> tuple[dict[str, ModalityEncoder], ModalityEncoder, nn.Module]:
    """(modality -> encoder, text encoder, fusion head) rebuilt from the bundle's weights.

    ``skip`` leaves modalities out (the one being taught anew). Raises :class:`TeachError` when
    a component has no torch weights, or the bundle has no text encoder or fusion head.
    """
    if bundle.text is None or bundle.fusion is None:
        raise TeachError(f"bundle {bundle.root} has no "
                         f"{'text encoder' if bundle.text is None else 'fusion head'}: teaching "
                         "embeds labels and retrains the fusion head")
    encoders = {m: _load(bundle, "encoder", spec.config, spec.torch_weights, f"encoder {m}")
                for m, spec in bundle.modalities.items() if m not in skip}
    for m, enc in encoders.items():
        if not (hasattr(enc, "config") and hasattr(enc, "embed_dim")):
            raise TeachError(f"the {m} encoder of bundle {bundle.root} (family "
                             f"{bundle.family or 'unspecified'}) is not a ModalityEncoder; "
                             "teaching re-exports cad_af bundles")
    text = _load(bundle, "text", bundle.text.config, bundle.text.torch_weights, "text")
    if getattr(text, "tokenizer", None) is None:  # towers the runtime tokenises from the bundle
        from ..models.text import TextTokenizer

        try:
            text.tokenizer = TextTokenizer(bundle.text.tokenizer_dir,
                                           max_length=int(bundle.text.max_length))
        except (OSError, ValueError) as exc:
            raise TeachError(f"cannot load the tokenizer of bundle {bundle.root} "
                             f"({bundle.text.tokenizer_dir}): {exc}") from exc
    fusion = _load(bundle, "fusion", bundle.fusion.config, bundle.fusion.torch_weights, "fusion")
    return encoders, text, fusion  # type: ignore[return-value]


def student_encoder(cfg: TeachConfig, bundle: ModelBundle, *, load_weights: bool = True
                    ) -> ModalityEncoder:
    """The new sensor's student before teaching (its "untrained state").

    ``init: registry``: ``cfg.encoder`` or the registry's default for the modality, its head
    initialised from (seed, modality) and projecting into the bundle's D; ``init: bundle``: the
    bundle's encoder of that modality with its weights. ``load_weights=False`` skips the
    pretrained trunk (enough to train a head on cached trunk features).
    """
    m = cfg.modality
    if cfg.init == "bundle":
        if m not in bundle.modalities:
            raise TeachError(f"init: bundle, but bundle {bundle.root} has no {m} encoder (it "
                             f"has {', '.join(bundle.modalities)}); use init: registry")
        spec = bundle.modalities[m]
        return _load(bundle, "encoder", spec.config, spec.torch_weights, f"encoder {m}")  # type: ignore[return-value]
    spec_in = cfg.encoder if cfg.encoder is not None else DEFAULT_ENCODERS[m]
    config = (get_encoder_config(spec_in) if isinstance(spec_in, str)
              else EncoderConfig.from_dict({"modality": m, **spec_in}))
    if config.modality != m:
        raise TeachError(f"encoder {spec_in!r} is a {config.modality} encoder, not {m}")
    config = dataclasses.replace(config, embed_dim=int(bundle.dim))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "init", m))
        enc = build_encoder(config, load_weights=load_weights or not config.trunk.frozen)
    return enc


def new_preprocess_config(cfg: TeachConfig, bundle: ModelBundle) -> dict[str, Any]:
    """The new modality's preprocessing: the bundle's when it has the modality, else the run's
    (its ``data.preprocess`` overrides), else the core defaults; then ``cfg.preprocess``."""
    from omnibind_ros.core.preprocess import build_config, default_configs

    m = cfg.modality
    if m in bundle.modalities:
        base = build_config(m, bundle.preprocess_configs[m]).to_dict()
    else:
        base = default_configs()[m]
        run = (bundle.provenance.get("training_config") or {}).get("data") or {}
        base.update((run.get("preprocess") or {}).get(m) or {})
    base.update(cfg.preprocess)
    return build_config(m, base).to_dict()


def _same(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return set(a) <= set(b) and all(torch.equal(v.float(), b[k].float()) for k, v in a.items())


def run_workspace(cfg: TeachConfig, bundle: ModelBundle, encoders: Mapping[str, nn.Module]
                  ) -> tuple[Any, str]:
    """(the bundle's training run as a :class:`~omnibind_train.pipeline.Workspace`, or None;
    why). The run is used only when its data set and checkpoints are in the cache and its
    checkpoints hold the weights of the bundle's encoders (``encoders``, without the modality
    being taught): otherwise its embeddings would not be the bundle's."""
    if cfg.run_data == "none":
        return None, "run_data: none"
    prov = bundle.provenance
    training = prov.get("training_config")
    if prov.get("family") != "cad_af" or not isinstance(training, Mapping):
        return None, (f"bundle family {prov.get('family')!r} has no cad_af training config in "
                      "its provenance")
    from ..pipeline import PipelineConfig, Workspace
    from ..trainers.checkpoint import load_checkpoint

    try:
        pcfg = PipelineConfig.from_dict({**training, "progress": cfg.progress,
                                         **({"cache_dir": cfg.cache_dir} if cfg.cache_dir
                                            else {})})
        ws = Workspace(pcfg)
        _ = ws.dataset_root  # raises when the data set is absent
        ckpts = {"stage0": load_checkpoint(ws.stage_dir("stage0") / "final"),
                 "cad": load_checkpoint(ws.stage_dir("cad") / "final")}
    except (FileNotFoundError, ValueError, KeyError) as exc:
        return None, f"run {training.get('name')!r} not usable here: {exc}"
    for m, enc in encoders.items():
        part = ckpts["stage0" if m == "image" else "cad"].weights.get(m)
        if part is None or not _same(part, enc.state_dict()):
            return None, (f"run {pcfg.name!r} does not match the bundle: its {m} weights differ "
                          "(the run was retrained after this bundle was exported)")
    return ws, f"run {pcfg.name!r} ({ws.run_dir})"
