"""BindingModel (seed 001 Eq. 1-4): routers' weights and masks, the sigmoid-softmax bound,
route / route_projected / fixed_average, designated inputs, projector mixtures, sizes."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from omnibind_train.binding.model import (
    BindingModel,
    ModalityRouter,
    ProjectorMixture,
    RouterConfig,
    SpaceInfo,
)

D = 8
SPACES = [SpaceInfo("t", D, ("image", "text")), SpaceInfo("a", 6, ("image", "text", "audio")),
          SpaceInfo("b", 5, ("audio",)), SpaceInfo("c", 7, ("image",))]
DEPTHS = ("paper", "code")
GATES = ("sigmoid_softmax", "softmax")


def _model(**router) -> BindingModel:
    torch.manual_seed(0)
    return BindingModel(SPACES, SPACES[0], router=RouterConfig(hidden_dim=16, **router),
                        projector_heads=2, projector_hidden=12).eval()


def _raw(names, n: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    dims = {s.name: s.dim for s in SPACES}
    return {k: F.normalize(torch.randn(n, dims[k], generator=gen), dim=-1) for k in names}


def test_slots_follow_space_order() -> None:
    m = _model()
    assert m.slots == {"image": ["t", "a", "c"], "text": ["t", "a"], "audio": ["a", "b"]}
    assert m.modalities == ("image", "text", "audio")
    assert m.dim == D


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("gate", GATES)
def test_router_weights_sum_to_one_and_absent_spaces_get_exactly_zero(depth, gate) -> None:
    m = _model(depth=depth, gate=gate)
    full = _raw(["t", "a", "c"])
    bound, w, g = m.route("image", full)
    assert w.shape == g.shape == (6, 3)
    assert torch.allclose(w.sum(1), torch.ones(6), atol=1e-6)
    assert (w > 0).all()
    assert ((g > 0) & (g < 1)).all()  # the sigmoid gate L_dec supervises
    assert torch.allclose(bound.norm(dim=-1), torch.ones(6), atol=1e-5)
    partial = {k: full[k] for k in ("t", "c")}  # a absent
    bound_p, w_p, _ = m.route("image", partial)
    assert (w_p[:, 1] == 0).all()
    assert torch.allclose(w_p.sum(1), torch.ones(6), atol=1e-6)
    assert torch.allclose(bound_p.norm(dim=-1), torch.ones(6), atol=1e-5)
    # one space alone: all its weight, and the bound embedding is its (normalised) projection
    only_c = {"c": full["c"]}
    bound_c, w_c, _ = m.route("image", only_c)
    assert torch.equal(w_c, torch.tensor([[0.0, 0.0, 1.0]]).expand(6, -1))
    assert torch.allclose(bound_c, F.normalize(m.project("c", full["c"]), dim=-1), atol=1e-5)


def test_route_without_any_space_is_an_error() -> None:
    with pytest.raises(ValueError, match="none of its spaces"):
        _model().route("audio", _raw(["t"]))


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_sigmoid_softmax_bounds_weight_ratios_by_e_to_the_scale(scale) -> None:
    router = ModalityRouter(4, 3, gate="sigmoid_softmax", hidden_dim=8, scale=scale)
    soft = ModalityRouter(4, 3, gate="softmax", hidden_dim=8)
    for r in (router, soft):  # extreme logits: +20, -20, 0
        with torch.no_grad():
            r.mlp[-1].bias.copy_(torch.tensor([20.0, -20.0, 0.0]))
    x = torch.randn(32, 4)
    w, _ = router(x)
    ratio = (w.max(1).values / w.min(1).values).max().item()
    assert ratio <= math.exp(scale) * (1 + 1e-5)
    assert ratio > math.exp(scale) * 0.9  # nearly saturated: the bound is reached, not loose
    w_soft, _ = soft(x)
    assert (w_soft.max(1).values / w_soft.min(1).values).min().item() > math.exp(10)


def test_router_scale_comes_from_the_config_per_modality() -> None:
    m = _model(scale={"text": 10.0})
    assert m.routers["text"].scale == 10.0 and m.routers["image"].scale == 1.0


@pytest.mark.parametrize("depth", DEPTHS)
def test_route_projected_equals_route(depth) -> None:
    m = _model(depth=depth)
    raw = _raw(["t", "c"])
    projected = m.projected("image", raw)
    assert projected.shape == (6, 3, D)
    assert (projected[:, 1] == 0).all()  # absent slot: zeros
    present = m.present_mask("image", raw)
    assert present.tolist() == [True, False, True]
    a = m.route("image", raw)
    b = m.route_projected("image", projected, present)
    for x, y in zip(a, b, strict=True):
        assert torch.allclose(x, y, atol=1e-6)


def test_fixed_average_uses_equal_weights_over_present_spaces() -> None:
    m = _model()
    raw = _raw(["t", "a", "c"])
    p = {k: m.project(k, v) for k, v in raw.items()}
    expected = F.normalize((p["t"] + p["a"] + p["c"]) / 3, dim=-1)
    assert torch.allclose(m.fixed_average("image", raw), expected, atol=1e-6)
    two = {k: raw[k] for k in ("t", "c")}
    expected2 = F.normalize((p["t"] + p["c"]) / 2, dim=-1)
    assert torch.allclose(m.fixed_average("image", two), expected2, atol=1e-6)


def test_designated_input_reads_only_the_named_space() -> None:
    m = _model(input="designated", designated={"audio": ["b"]})
    assert m.designated("audio") == ["b"]
    assert m.designated("image") == ["t"]  # default: the modality's first space
    assert m.routers["audio"].mlp[0].in_features == 5  # b's raw dim
    assert m.routers["image"].mlp[0].in_features == D
    raw = _raw(["a", "b"])
    _, w, _ = m.route("audio", raw)
    other_a = dict(raw, a=_raw(["a"], seed=9)["a"])
    _, w_a, _ = m.route("audio", other_a)
    assert torch.equal(w, w_a)  # the router never reads a
    other_b = dict(raw, b=_raw(["b"], seed=9)["b"])
    _, w_b, _ = m.route("audio", other_b)
    assert not torch.allclose(w, w_b)
    with pytest.raises(ValueError, match=r"reads \['b'\], absent"):
        m.route("audio", {"a": raw["a"]})


def test_designated_space_must_embed_the_modality() -> None:
    with pytest.raises(ValueError, match="do not embed audio"):
        _model(input="designated", designated={"audio": ["c"]})


def test_concat_router_input_is_every_projected_slot() -> None:
    m = _model()
    assert m.routers["image"].mlp[0].in_features == 3 * D
    assert m.routers["audio"].mlp[0].in_features == 2 * D


def test_projector_mixture_is_the_mean_of_its_heads_not_renormalised() -> None:
    torch.manual_seed(0)
    p = ProjectorMixture(4, 6, heads=3, hidden_dim=8).eval()
    x = torch.randn(5, 4)
    heads = torch.stack([F.normalize(h.net(x), dim=-1) for h in p.heads])
    out = p(x)
    assert torch.allclose(out, heads.mean(0), atol=1e-6)
    assert (out.norm(dim=-1) < 1 - 1e-3).all()  # unit heads, mean not renormalised
    assert len(p.heads) == 3
    with pytest.raises(ValueError, match="at least one head"):
        ProjectorMixture(4, 6, heads=0)


def test_target_projector_is_identity_normalised() -> None:
    m = _model()
    x = torch.randn(3, D) * 5
    assert torch.allclose(m.project("t", x), F.normalize(x, dim=-1))
    assert m.project("a", torch.randn(3, 6)).shape == (3, D)


def test_parameter_counts() -> None:
    m = _model()
    counts = m.parameter_counts()
    h = 12

    def head(i: int, o: int) -> int:  # Linear + BN(h) + Linear + BN(o)
        return i * h + h + 2 * h + h * o + o + 2 * o

    assert counts["projector/t"] == 0
    assert counts["projector/a"] == 2 * head(6, D)
    assert counts["projector/b"] == 2 * head(5, D)
    assert counts["projector/c"] == 2 * head(7, D)

    def router(i: int, s: int, hid: int = 16) -> int:
        return i * hid + hid + hid * s + s

    assert counts["router/image"] == router(3 * D, 3)
    assert counts["router/text"] == router(2 * D, 2)
    assert counts["router/audio"] == router(2 * D, 2)
    assert set(counts) == {"projector/t", "projector/a", "projector/b", "projector/c",
                           "router/image", "router/text", "router/audio"}


@pytest.mark.parametrize("field,value", [("depth", "deep"), ("gate", "sigmoid"),
                                         ("input", "sum")])
def test_router_config_rejects_bad_values(field, value) -> None:
    with pytest.raises(ValueError, match=f"router {field} must be one of"):
        RouterConfig(**{field: value})


def test_modality_router_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="depth"):
        ModalityRouter(4, 2, depth="wide")
    with pytest.raises(ValueError, match="gate"):
        ModalityRouter(4, 2, gate="max")


def test_code_depth_router_shape() -> None:
    r = ModalityRouter(10, 3, depth="code")
    linears = [mod for mod in r.mlp if isinstance(mod, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(10, 512), (512, 100),
                                                                       (100, 3)]
    assert any(isinstance(mod, torch.nn.Tanh) for mod in r.mlp)
