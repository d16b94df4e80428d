"""Rebuild a bundle's torch modules from their recorded configs: the runtime's torch builder.

The runtime's torch fallback (``omnibind_ros.core.backends.torch_backend``) loads each bundle
component's safetensors weights into a module rebuilt from the config dict in ``bundle.yaml``.
It cannot import this package (core never depends on training), so this package registers
:func:`build_torch_module` under the entry-point group ``omnibind_ros.torch_builders`` as
``default`` (``training/pyproject.toml``); the backend finds it with
``importlib.metadata.entry_points(group="omnibind_ros.torch_builders")``.

Contract of a builder: ``builder(component, config, bundle) -> torch.nn.Module`` where
``component`` is ``"encoder"``, ``"text"`` or ``"fusion"``, ``config`` the component's config
dict from ``bundle.yaml`` and ``bundle`` the loaded ``ModelBundle``; the module has freshly
initialised weights whose ``state_dict`` keys are the ones the bundle's safetensors hold.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from .fusion import FusionConfig
from .registry import EncoderConfig, build_encoder

if TYPE_CHECKING:
    from omnibind_ros.core.bundle import ModelBundle

__all__ = ["COMPONENTS", "build_torch_module"]

#: The bundle components a builder rebuilds.
COMPONENTS = ("encoder", "text", "fusion")


def build_torch_module(component: str, config: Mapping[str, Any],
                       bundle: ModelBundle | None = None) -> nn.Module:
    """Rebuild a bundle component with fresh weights (the torch backend's default builder).

    Parameters
    ----------
    component : ``"encoder"``, ``"text"`` or ``"fusion"``.
    config : the encoder config dict / fusion config dict from ``bundle.yaml``.
    bundle : the bundle; text trunks then read their model config and tokenizer from the
        bundle's ``text/tokenizer`` directory instead of the exporting machine's paths.

    Raises
    ------
    ValueError
        An unknown ``component``.
    """
    if component == "fusion":
        return FusionConfig.from_dict(config).build()
    if component not in ("encoder", "text"):
        raise ValueError(f"unknown bundle component {component!r}; expected one of "
                         f"{COMPONENTS}")
    data = copy.deepcopy(dict(config))
    trunk = data.get("trunk") or {}
    if component == "text" and bundle is not None and bundle.text is not None:
        local = bundle.text.tokenizer_dir
        if trunk.get("kind") == "minilm" and (local / "config.json").is_file():
            trunk["path"] = str(local)
        if trunk.get("kind") == "open_clip_text":
            trunk["tokenizer"] = None  # the runtime tokenises with the bundle's tokenizer.json
    if data.get("family") == "binding":  # a bound encoder (seed 001/003): spaces + router
        from ..binding.export import build_bound_encoder

        return build_bound_encoder(data)
    if data.get("family") == "imported":  # a tower of a user's checkpoint (omnibind-train import)
        from ..byo.encoders import build_imported_encoder

        return build_imported_encoder(component, data)
    if data.get("family") == "unialign":  # a UniAlign path (seed 002): tokenizer + MoE-LoRA ViT
        from ..unialign.export import build_unialign_encoder

        return build_unialign_encoder(data)
    return build_encoder(EncoderConfig.from_dict(data), load_weights=False)
