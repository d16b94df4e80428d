"""Checks of a staged bundle: the ONNX checker, and ONNX Runtime (and the rebuilt torch fallback)
against the torch modules within a tolerance, on the real sample inputs at batch B and batch 1.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnibind_ros.core.bundle import ModelBundle

from ..models.build import build_torch_module
from .components import _fusion_example, _fusion_token_count
from .onnx_io import ExportError
from .plan import _Plan

PARITY_ATOL = 1e-4


class ExportParityError(ExportError):
    """ONNX Runtime disagrees with torch beyond the tolerance.

    Attributes
    ----------
    diffs : component -> max abs difference, for every component checked.
    failures : the components above ``tolerance``.
    tolerance : the max abs difference allowed.
    """

    def __init__(self, diffs: Mapping[str, float], tolerance: float, detail: str = "") -> None:
        self.diffs = dict(diffs)
        self.tolerance = tolerance
        self.failures = {k: v for k, v in self.diffs.items() if not v <= tolerance}
        worst = ", ".join(f"{k}: {v:.3g}" for k, v in self.failures.items())
        super().__init__(f"ONNX export parity check failed for {worst} (max abs difference to "
                         f"torch; tolerance {tolerance:g}){'; ' + detail if detail else ''}. "
                         "The exported graph does not compute what the torch module does; "
                         "nothing was written.")


def _check_onnx_files(tmp: Path) -> None:
    import onnx

    for path in sorted(tmp.rglob("*.onnx")):
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"onnx.checker rejects {path.relative_to(tmp)}: {exc}") from exc


def _max_diff(a: np.ndarray, b: torch.Tensor) -> float:
    ref = b.detach().cpu().float().numpy()
    if a.shape != ref.shape:
        return float("inf")
    return float(np.abs(a.astype(np.float32) - ref).max()) if a.size else 0.0


def _run_checked(component: str, call: Any, *args: Any, atol: float = PARITY_ATOL
                 ) -> np.ndarray:
    """Run the ONNX side; a graph that fails at a shape other than the traced one (a size
    baked in by the tracer) is a parity failure, reported as such."""
    try:
        return call(*args)
    except Exception as exc:  # onnxruntime raises its own exception types
        shapes = [f"{len(a)} texts" if isinstance(a, list) else list(np.shape(a))
                  for a in args if not isinstance(a, str)]
        raise ExportParityError({component: float("inf")}, atol,
                                f"ONNX Runtime failed on inputs {shapes}: {exc}") from exc


def _encoder_parity(plan: _Plan, backend: Any) -> dict[str, float]:
    diffs = {}
    for modality, encoder in plan.encoders.items():
        x = plan.samples[modality]
        ref = encoder(x)
        key = f"encoder:{modality}"
        full = _max_diff(_run_checked(key, backend.encode, modality, x.numpy()), ref)
        one = _max_diff(_run_checked(key, backend.encode, modality, x[:1].numpy()),
                        encoder(x[:1]))  # another batch size than the traced one
        diffs[key] = max(full, one)
    return diffs


def _fusion_parity(plan: _Plan, backend: Any) -> float:
    dynamic, n = _fusion_token_count(plan)
    tokens, mask = _fusion_example(plan.dim, n)
    cases = [(tokens, mask)]
    if dynamic:  # other token counts than the traced one, down to a single live sensor
        cases += [(tokens[:2, :2], mask[:2, :2]), (tokens[:1, :1], mask[:1, :1])]
    return max(_max_diff(_run_checked("fusion", backend.fuse, t.numpy(), m.numpy()),
                         plan.fusion(t, m)) for t, m in cases)


def _text_prompts(plan: _Plan) -> list[str]:
    prompts = [t.format(n) for n in plan.label_names[:3] for t in plan.prompt_templates]
    return prompts + ["a", "a long description of a small object lying on the floor in the "
                           "corner of a dimly lit room, seen from above"]


def _text_parity(plan: _Plan, backend: Any) -> float:
    prompts = _text_prompts(plan)
    batch = plan.tokenizer(prompts)
    ids, _ = backend.tokenizer(prompts)
    if ids.shape != tuple(batch["input_ids"].shape) or not np.array_equal(
            ids, batch["input_ids"].numpy()):
        raise ExportParityError({"text:tokenizer": float("inf")}, 0.0,
                                "the bundle's tokenizer.json tokenises differently from the "
                                "training tokenizer")
    ref = plan.text(batch["input_ids"], batch["attention_mask"])
    diff = _max_diff(_run_checked("text", backend.embed_text, prompts), ref)
    single = plan.tokenizer(prompts[:1])  # batch 1 at another sequence length
    one = _max_diff(_run_checked("text", backend.embed_text, prompts[:1]),
                    plan.text(single["input_ids"], single["attention_mask"]))
    return max(diff, one)


def _parity(plan: _Plan, bundle: ModelBundle, *, threads: int) -> dict[str, float]:
    from omnibind_ros.core.backends.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(bundle, threads=threads, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        diffs = _encoder_parity(plan, backend)
        diffs["fusion"] = _fusion_parity(plan, backend)
        diffs["text"] = _text_parity(plan, backend)
    backend.close()
    return diffs


def _torch_weights_parity(plan: _Plan, bundle: ModelBundle, *, threads: int) -> float:
    """The torch fallback rebuilds every module from bundle.yaml + safetensors: check it does."""
    from omnibind_ros.core.backends.torch_backend import TorchBackend

    previous = torch.get_num_threads()
    # this package's builder, passed explicitly: the one the runtime finds through the
    # omnibind_ros.torch_builders entry point, without depending on installed metadata
    backend = TorchBackend(bundle, threads=threads, builder=build_torch_module)
    torch.set_num_threads(previous)  # TorchBackend sets it process-wide
    with torch.no_grad():
        diffs = [_max_diff(backend.encode(m, x.numpy()), plan.encoders[m](x))
                 for m, x in plan.samples.items()]
        tokens, mask = _fusion_example(plan.dim, _fusion_token_count(plan)[1])
        diffs.append(_max_diff(backend.fuse(tokens.numpy(), mask.numpy()),
                               plan.fusion(tokens, mask)))
        batch = plan.tokenizer(_text_prompts(plan))
        diffs.append(_max_diff(backend.embed_text(_text_prompts(plan)),
                               plan.text(batch["input_ids"], batch["attention_mask"])))
    backend.close()
    return max(diffs)
