"""Bound encoders (seed 001/003 export): a tiny BindingModel over tiny SimSpaces becomes one graph
per modality (trunk once -> towers -> projectors -> router); it equals the training-side
computation, exports to ONNX with ORT-vs-torch parity, and the torch fallback rebuilds it from
its recorded config alone."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from omnibind_train.binding.export import (
    BoundEncoder,
    BoundEncoderConfig,
    bound_encoder_from_trained,
)
from omnibind_train.binding.model import BindingModel, RouterConfig, SpaceInfo
from omnibind_train.binding.specialists import SimSpace, SpecialistSpec
from omnibind_train.export import PARITY_ATOL
from omnibind_train.export.onnx_io import _ArrayGraph, _export
from omnibind_train.models.build import build_torch_module
from omnibind_train.models.registry import OpenClipVisionTrunk

TARGET_DIM = 16
#: a stand-in image trunk: a 1-layer ViT with EfficientNet's 1280-d output (the trunk towers'
#: input size), fast to build and export
TRUNK = OpenClipVisionTrunk(image_size=32, patch_size=16, width=32, layers=1, heads=2,
                            embed_dim=1280, act="gelu")


def _mlp(hidden: int = 32) -> dict:
    return {"kind": "mlp", "hidden_dim": hidden, "layers": 2}


def _pointnet() -> dict:
    return {"kind": "pointnet", "widths": [8, 16], "hidden_dim": 16}


SPECS = [
    SpecialistSpec("t", "target", TARGET_DIM, {"image": _mlp(), "text": _mlp()}),
    SpecialistSpec("a", "tiny cnn", 12, {"image": {"kind": "tiny_cnn", "widths": [4, 8]},
                                         "text": _mlp()}),
    SpecialistSpec("b", "mlp", 10, {"image": _mlp(24), "point_cloud": _pointnet()}),
    SpecialistSpec("p", "points", 12, {"point_cloud": _pointnet(), "text": _mlp()}),
]


@pytest.fixture(scope="module")
def trained() -> tuple[list[SimSpace], BindingModel]:
    """Tiny spaces and a BindingModel whose BatchNorm statistics are not the defaults (so eval
    and train mode give different outputs)."""
    torch.manual_seed(0)
    spaces = [SimSpace(s).eval() for s in SPECS]
    infos = [SpaceInfo(s.name, s.embed_dim, s.modalities) for s in spaces]
    model = BindingModel(infos, infos[0], router=RouterConfig(hidden_dim=16),
                         projector_heads=2, projector_hidden=8)
    model.train()
    with torch.no_grad():
        for _ in range(3):  # move the BN running statistics away from (0, 1)
            for s in spaces:
                if s.name != "t":
                    model.project(s.name, 3 * torch.randn(8, s.embed_dim) + 1)
        for r in model.routers.values():  # a router that does not weigh spaces equally
            r.mlp[-1].bias.normal_(0, 2.0)
    return spaces, model.eval()


def _trunk_dict() -> dict:
    return {"kind": TRUNK.kind, **dataclasses.asdict(TRUNK)}


@pytest.fixture(scope="module")
def encoders(trained) -> dict[str, BoundEncoder]:
    spaces, model = trained
    torch.manual_seed(1)
    trunk = TRUNK.build(load_weights=False)
    return {
        "image": bound_encoder_from_trained("image", spaces, model, trunk=_trunk_dict(),
                                            trunk_module=trunk, variant="tiny"),
        "point_cloud": bound_encoder_from_trained("point_cloud", spaces, model, trunk=None,
                                                  trunk_module=None, variant="tiny"),
    }


def _inputs(modality: str, n: int = 3, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if modality == "image":
        return torch.randn(n, 3, 32, 32, generator=gen)
    return torch.randn(n, 64, 3, generator=gen) * 0.5


def _by_hand(modality: str, x: torch.Tensor, trained, trunk: torch.nn.Module | None
             ) -> torch.Tensor:
    """What training computes: every space's tower on its input kind, then route()."""
    spaces, model = trained
    raw = {}
    with torch.no_grad():
        feats = trunk(x) if trunk is not None else None
        for s in spaces:
            if modality not in s.modalities or modality not in model.slots:
                continue
            kind = s.spec.input_kind(modality)
            raw[s.name] = s.encode(modality, feats if kind == "trunk" else x)
        return model.route(modality, raw)[0]


def test_bound_encoder_config_records_its_spaces(encoders, trained) -> None:
    _, model = trained
    img = encoders["image"].config
    assert [s["name"] for s in img.spaces] == model.slots["image"] == ["t", "a", "b"]
    assert [s["dim"] for s in img.spaces] == [16, 12, 10]
    assert img.target == {"name": "t", "dim": TARGET_DIM} and img.embed_dim == TARGET_DIM
    assert img.family == "binding" and img.variant == "tiny"
    assert img.projector == {"heads": 2, "hidden_dim": 8}
    assert img.router["hidden_dim"] == 16 and img.trunk["kind"] == "open_clip_vision"
    pcd = encoders["point_cloud"].config
    assert pcd.trunk is None and [s["name"] for s in pcd.spaces] == ["b", "p"]
    assert encoders["image"].input_kinds == {"t": "trunk", "a": "pixels", "b": "trunk"}


@pytest.mark.parametrize("modality", ["image", "point_cloud"])
def test_bound_encoder_equals_the_training_side_computation(encoders, trained, modality) -> None:
    enc = encoders[modality]
    assert not enc.training and not any(m.training for m in enc.modules())
    x = _inputs(modality)
    with torch.no_grad():
        got = enc(x)
    want = _by_hand(modality, x, trained, enc.trunk)
    assert got.shape == (3, TARGET_DIM)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(3), atol=1e-5)
    # every space matters: a router that weighs spaces unequally and differs from space t alone
    names = trained[1].slots[modality]
    raw = {n: torch.randn(3, d["dim"]) for n, d in zip(names, enc.config.spaces, strict=True)}
    _, w, _ = trained[1].route(modality, raw)
    assert not torch.allclose(w, torch.full_like(w, 1 / w.shape[1]), atol=1e-3)


@pytest.mark.parametrize("modality", ["image", "point_cloud"])
def test_onnx_export_parity(encoders, modality, tmp_path) -> None:
    import onnxruntime as ort

    enc = encoders[modality]
    sample = _inputs(modality, n=2, seed=3)
    path = tmp_path / f"{modality}.onnx"
    with torch.no_grad():
        used = _export(_ArrayGraph(enc), (sample,), path, exporter="torchscript", opset=17,
                       input_names=["input"], output_names=["embedding"],
                       dynamic_axes={"input": {0: "batch"}})
    assert used == "torchscript"
    # exporting must leave the encoder in eval mode (BatchNorm in the projectors)
    assert not any(m.training for m in enc.modules()), "export switched the encoder to train"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (2, 1, 5):  # the traced batch and others
        x = _inputs(modality, n=n, seed=10 + n)
        with torch.no_grad():
            ref = enc(x).numpy()
        out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert out.shape == (n, TARGET_DIM)
        assert np.abs(out - ref).max() <= PARITY_ATOL


@pytest.mark.parametrize("modality", ["image", "point_cloud"])
def test_torch_fallback_rebuilds_from_the_recorded_config(encoders, modality) -> None:
    enc = encoders[modality]
    # the config as bundle.yaml stores it: plain JSON types (tuples become lists)
    recorded = json.loads(json.dumps(enc.config.to_dict()))
    rebuilt = build_torch_module("encoder", recorded)
    assert isinstance(rebuilt, BoundEncoder)
    assert rebuilt.config == BoundEncoderConfig.from_dict(recorded)
    assert list(rebuilt.state_dict()) == list(enc.state_dict())
    for k, v in rebuilt.state_dict().items():
        assert v.shape == enc.state_dict()[k].shape, k
    rebuilt.load_state_dict(enc.state_dict(), strict=True)
    rebuilt.eval()
    x = _inputs(modality, n=4, seed=7)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), enc(x), atol=1e-6)
        # fresh weights give another embedding: the comparison above is not vacuous
        fresh = build_torch_module("encoder", recorded).eval()
        assert not torch.allclose(fresh(x), enc(x), atol=1e-3)


def test_absent_modality_has_no_bound_encoder(trained) -> None:
    spaces, model = trained
    with pytest.raises(KeyError):
        bound_encoder_from_trained("audio", spaces, model, trunk=None, trunk_module=None,
                                   variant="tiny")
