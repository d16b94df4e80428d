"""torch backend: the fallback (and the reference the benchmarks compare against).

ONNX graphs cannot be run by torch, and a pickled module is not something a robot should load,
so a bundle exported with ``include_torch_weights=True`` also carries each component's weights
as safetensors (``torch/*.safetensors``, listed and checksummed like every file). This backend
rebuilds each module from the config dict recorded in ``bundle.yaml`` and loads those weights.

Rebuilding needs the model code, which lives in the training package: the default ``builder``
is ``omnibind_train.export.build_torch_module``, imported when a TorchBackend is created (never
at import time: core does not depend on training). Pass your own ``builder`` to use other code.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from omnibind_ros.core.backends.base import BackendBase, import_runtime
from omnibind_ros.core.bundle import ModelBundle
from omnibind_ros.core.errors import BackendUnavailableError

__all__ = ["ModuleBuilder", "TorchBackend", "default_builder"]

#: ``builder(component, config, bundle) -> torch.nn.Module`` with freshly initialised weights;
#: component is ``"encoder"``, ``"text"`` or ``"fusion"``, config the dict from bundle.yaml.
ModuleBuilder = Callable[[str, Mapping[str, Any], ModelBundle], Any]


def default_builder() -> ModuleBuilder:
    """``omnibind_train.export.build_torch_module`` (BackendUnavailableError if missing)."""
    try:
        from omnibind_train.export import build_torch_module
    except ImportError as exc:
        raise BackendUnavailableError(
            "the torch backend rebuilds the bundle's modules with the omnibind_train package "
            f"(training/), which cannot be imported here: {exc}. Install it "
            "(pip install -e training) or pass builder=...") from exc
    return build_torch_module


class TorchBackend(BackendBase):
    """Run a bundle's modules eagerly in torch.

    Parameters
    ----------
    bundle : a bundle exported with torch weights.
    threads : ``torch.set_num_threads`` (process-wide in torch; None leaves it alone).
    device : torch device string.
    builder : rebuilds an uninitialised module (default :func:`default_builder`).
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
