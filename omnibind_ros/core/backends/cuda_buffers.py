"""Reusable CUDA device buffers and pinned host buffers (torch tensors), one per tensor name.

Each name gets one flat allocation, sized for the largest shape it is asked for (or reserved
for up front) and handed out as views, so a steady stream of same-or-smaller batches allocates
nothing. Pinned (page-locked) host memory lets ``copy_(..., non_blocking=True)`` run
asynchronously on a CUDA stream. ``torch`` is passed in, never imported here.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["BufferPool", "torch_dtype"]

_NP_TO_TORCH = {"float32": "float32", "float16": "float16", "int64": "int64", "int32": "int32",
                "bool": "bool", "int8": "int8", "uint8": "uint8"}


def torch_dtype(torch: Any, dtype: np.dtype | str) -> Any:
    """The torch dtype of a numpy dtype (those TensorRT engines use)."""
    name = np.dtype(dtype).name
    if name not in _NP_TO_TORCH:
        raise ValueError(f"no torch dtype for numpy {name}")
    return getattr(torch, _NP_TO_TORCH[name])


class BufferPool:
    """Device (and pinned host) buffers by name, allocated once per largest shape and reused.

    Parameters
    ----------
    torch : the torch module.
    device : CUDA device of the device buffers (``torch.device`` or ``"cuda:0"``).
    pin_memory : allocate host buffers in page-locked memory (needed for asynchronous copies).

    ``allocations`` counts the allocations made so far.
    """

    def __init__(self, torch: Any, device: Any, *, pin_memory: bool = True) -> None:
        self._torch = torch
        self.device_name = device
        self.pin_memory = pin_memory
        self._flat: dict[tuple[str, str], Any] = {}
        self._reserved: dict[str, int] = {}
        self.allocations = 0

    def reserve(self, name: str, shape: Sequence[int]) -> None:
        """Size the next allocation of ``name`` for ``shape`` (e.g. the profile's max shape)."""
        self._reserved[name] = max(self._reserved.get(name, 0), math.prod(shape))

    def device(self, name: str, shape: Sequence[int], dtype: np.dtype | str) -> Any:
        """A device tensor of ``shape`` (a view of ``name``'s buffer; contents undefined)."""
        return self._take("device", name, shape, dtype)

    def host(self, name: str, shape: Sequence[int], dtype: np.dtype | str) -> Any:
        """A (pinned) host tensor of ``shape`` (a view of ``name``'s host buffer)."""
        return self._take("host", name, shape, dtype)

    def clear(self) -> None:
        """Drop every buffer (they are freed when no view of them is left)."""
        self._flat.clear()

    def _take(self, kind: str, name: str, shape: Sequence[int], dtype: np.dtype | str) -> Any:
        shape = tuple(int(d) for d in shape)
        need = math.prod(shape)
        tdtype = torch_dtype(self._torch, dtype)
        flat = self._flat.get((kind, name))
        if flat is None or flat.dtype != tdtype or flat.numel() < need:
            size = max(need, self._reserved.get(name, 0))
            if kind == "device":
                flat = self._torch.empty((size,), dtype=tdtype, device=self.device_name)
            else:
                flat = self._torch.empty((size,), dtype=tdtype, pin_memory=self.pin_memory)
            self._flat[(kind, name)] = flat
            self.allocations += 1
        return flat[:need].view(shape)
