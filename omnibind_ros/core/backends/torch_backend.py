"""torch backend: the fallback (and the reference the benchmarks compare against).

ONNX graphs cannot be run by torch, and a pickled module is not something a robot should load,
so a bundle exported with ``include_torch_weights=True`` also carries each component's weights
as safetensors (``torch/*.safetensors``, listed and checksummed like every file). This backend
rebuilds each module from the config dict recorded in ``bundle.yaml`` and loads those weights.

Rebuilding needs the model code, which core does not have and never imports. It comes from a
*module builder* registered under the entry-point group ``omnibind_ros.torch_builders``
(:data:`BUILDER_GROUP`); the training package (``omnibind_train``, ``training/``) registers its
``omnibind_train.models.build:build_torch_module`` there as ``default``. Any package can
register one in its packaging metadata, e.g. in ``pyproject.toml``::

    [project.entry-points."omnibind_ros.torch_builders"]
    default = "my_models.build:build_module"

The contract (:data:`ModuleBuilder`): ``builder(component, config, bundle) -> torch.nn.Module``,
``component`` one of ``"encoder"``, ``"text"``, ``"fusion"``, ``config`` that component's
config dict from ``bundle.yaml``, ``bundle`` the :class:`~omnibind_ros.core.bundle.ModelBundle`;
the returned module has freshly initialised weights and exactly the ``state_dict`` keys of the
component's safetensors file (it is loaded with ``strict=True``). The entry point is looked up
when a TorchBackend is created, never at import time; pass ``builder=...`` to bypass it.
"""
from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.core.backends.base import BackendBase, import_runtime
from omnibind_ros.core.bundle import ModelBundle
from omnibind_ros.core.errors import BackendUnavailableError

__all__ = ["BUILDER_GROUP", "DEFAULT_BUILDER", "ModuleBuilder", "TorchBackend",
           "default_builder"]

#: ``builder(component, config, bundle) -> torch.nn.Module`` with freshly initialised weights;
#: component is ``"encoder"``, ``"text"`` or ``"fusion"``, config the dict from bundle.yaml.
ModuleBuilder = Callable[[str, Mapping[str, Any], ModelBundle], Any]

#: Entry-point group the module builders are registered under.
BUILDER_GROUP = "omnibind_ros.torch_builders"
#: Name of the builder used when several are registered.
DEFAULT_BUILDER = "default"


def default_builder(name: str | None = None) -> ModuleBuilder:
    """The module builder registered under :data:`BUILDER_GROUP`.

    Parameters
    ----------
    name : entry-point name; None takes ``"default"``, or the only one registered.

    Raises
    ------
    BackendUnavailableError
        No builder is registered (the training package is not installed), ``name`` is not
        registered, several are and none is called ``"default"``, or loading it fails.
    """
    found = {ep.name: ep for ep in importlib.metadata.entry_points(group=BUILDER_GROUP)}
    if not found:
        raise BackendUnavailableError(
            f"the torch backend rebuilds the bundle's modules with a builder registered under "
            f"the entry-point group {BUILDER_GROUP!r}, and none is installed. Install the "
            "training package, which registers one (pip install -e training), or pass "
            "builder=...")
    if name is None:
        name = DEFAULT_BUILDER if DEFAULT_BUILDER in found or len(found) != 1 else next(
            iter(found))
    if name not in found:
        raise BackendUnavailableError(
            f"no torch module builder {name!r} in the entry-point group {BUILDER_GROUP!r}; "
            f"registered: {sorted(found)}")
    entry = found[name]
    try:
        builder = entry.load()
    except Exception as exc:  # a broken install raises anything from ImportError on
        raise BackendUnavailableError(
            f"the torch module builder {entry.name} = {entry.value} (entry-point group "
            f"{BUILDER_GROUP!r}) cannot be loaded: {type(exc).__name__}: {exc}. Reinstall the "
            "package that provides it (pip install -e training) or pass builder=...") from exc
    if not callable(builder):
        raise BackendUnavailableError(
            f"the torch module builder {entry.name} = {entry.value} is not callable")
    return builder


class TorchBackend(BackendBase):
    """Run a bundle's modules eagerly in torch.

    Parameters
    ----------
    bundle : a bundle exported with torch weights.
    threads : ``torch.set_num_threads`` (process-wide in torch; None leaves it alone).
    device : torch device string.
    builder : rebuilds an uninitialised module (see :data:`ModuleBuilder`); default: the one
        registered under :data:`BUILDER_GROUP` (:func:`default_builder`).
    modalities, fusion, text : what to load (default everything in the bundle).
    """

    name = "torch"

    def __init__(self, bundle: ModelBundle, *, threads: int | None = 2, device: str = "cpu",
                 builder: ModuleBuilder | None = None, modalities: Sequence[str] | None = None,
                 fusion: bool = True, text: bool = True) -> None:
        super().__init__(bundle, modalities)
        self._torch = import_runtime("torch", backend=self.name,
                                     hint="pip install torch (CPU wheel is enough)")
        import_runtime("safetensors", backend=self.name, hint="pip install safetensors")
        if threads is not None:
            self._torch.set_num_threads(threads)
        self.device = self._torch.device(device)
        build = builder or default_builder()
        self._modules: dict[str, Any] = {}
        for modality in self.modalities:
            spec = bundle.modalities[modality]
            self._modules[modality] = self._load(build, "encoder", spec.config,
                                                 spec.torch_weights, modality)
        if fusion and bundle.fusion is not None:
            self._modules["<fusion>"] = self._load(build, "fusion", bundle.fusion.config,
                                                   bundle.fusion.torch_weights, "fusion")
        if text and bundle.text is not None:
            self._modules["<text>"] = self._load(build, "text", bundle.text.config,
                                                 bundle.text.torch_weights, "text")

    @property
    def providers(self) -> tuple[str, ...]:
        return (str(self.device),)

    def close(self) -> None:
        self._modules.clear()

    def _load(self, build: ModuleBuilder, component: str, config: Mapping[str, Any],
              weights: Path | None, what: str) -> Any:
        from safetensors.torch import load_model

        if weights is None:
            raise BackendUnavailableError(
                f"bundle {self.bundle.root} carries no torch weights for {what}; re-export it "
                "with include_torch_weights=True or use the onnxruntime backend")
        module = build(component, config, self.bundle)
        load_model(module, str(weights), strict=True)
        return module.to(self.device).eval()

    def _call(self, key: str, *arrays: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            args = [torch.from_numpy(a).to(self.device) for a in arrays]
            return self._modules[key](*args).float().cpu().numpy()

    def _run_encoder(self, modality: str, batch: np.ndarray) -> np.ndarray:
        return self._call(modality, batch)

    def _run_fusion(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if "<fusion>" not in self._modules:
            raise ValueError("this backend was created with fusion=False")
        return self._call("<fusion>", tokens, mask)

    def _run_text(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        if "<text>" not in self._modules:
            raise ValueError("this backend was created with text=False")
        return self._call("<text>", input_ids, attention_mask)
