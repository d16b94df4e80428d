"""Export trained models as a model bundle, check it against torch, build TensorRT engines.

:func:`export_bundle` writes the bundle described in :mod:`omnibind_ros.core.bundle`:

* one ONNX graph per modality encoder (trunk + head + L2 normalisation in one graph), input
  ``[batch, *sample_shape]`` with a dynamic batch and the fixed sample shape the modality's
  preprocessing config produces;
* the fusion head (:func:`~omnibind_train.models.fusion.export_fusion_onnx`): padded tokens
  ``[batch, tokens, D]`` + mask ``[batch, tokens]`` -> ``[batch, D]``;
* the text encoder (``input_ids`` + ``attention_mask`` ``[batch, sequence]``, both dynamic) and
  its tokenizer files, so the runtime embeds new labels without torch;
* the label set (names, prompt templates, cached ``[C, D]`` embeddings) and the logit scale the
  fusion head was trained with (``labels.logit_scale``: ``1 / tau`` of the AF loss, the
  multiplier of the label cosines before the runtime's softmax);
* optional safetensors weights for the runtime's torch fallback (``include_torch_weights``);
* ``bundle.yaml`` with configs, versions, provenance and the SHA-256 of every file.

Everything is written into a hidden staging directory next to ``out_dir``, validated (onnx
checker, :func:`~omnibind_ros.core.bundle.load_bundle`, ONNX Runtime vs torch within ``atol`` on
the real sample inputs, at batch B and at batch 1) and only then renamed into place: a reader
never sees half a bundle, and a failed export leaves the previous bundle untouched.

Modules: :mod:`.plan` validates the inputs, :mod:`.onnx_io` runs the ONNX exporters and checks
the graphs' I/O, :mod:`.components` writes each component, :mod:`.parity` compares ONNX Runtime
with torch, :mod:`.writer` stages and publishes the bundle, :mod:`.engines` builds TensorRT
engines. The torch fallback's module builder lives in :mod:`omnibind_train.models.build`.
"""
from ..models.build import build_torch_module
from .engines import build_tensorrt_engines
from .onnx_io import EXPORTERS, OPSET, ExportError
from .parity import PARITY_ATOL, ExportParityError
from .writer import export_bundle

__all__ = ["EXPORTERS", "OPSET", "PARITY_ATOL", "ExportError", "ExportParityError",
           "build_tensorrt_engines", "build_torch_module", "export_bundle"]
