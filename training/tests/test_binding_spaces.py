"""The simulated specialist spaces: every registered spec builds, every tower runs forward and
backward on its input kind with the space's own loss; spec validation; the occluding cut."""
from __future__ import annotations

import math

import pytest
import torch

from omnibind_train.binding.specialists import (
    PhaseSpec,
    SimSpace,
    SpecialistSpec,
    get_specialist,
    list_specialists,
    register_specialist,
)
from omnibind_train.binding.towers import PIXELS_SIZE, build_tower, tower_input_kind
from omnibind_train.binding.train_spaces import occlude_points

B = 4
EXPECTED_KINDS = {("s3", "image"): "pixels", ("s6", "point_cloud"): "points",
                  ("s7", "point_cloud"): "points"}


def _inputs(kind: str) -> list[torch.Tensor]:
    if kind == "trunk":
        return [torch.randn(B, 1280)]
    if kind == "text":
        return [torch.nn.functional.normalize(torch.randn(B, 384), dim=-1)]
    if kind == "pixels":
        return [torch.randn(B, 3, PIXELS_SIZE, PIXELS_SIZE), torch.randn(B, 3, 160, 160)]
    if kind == "points":
        return [torch.randn(B, 64, 3)]
    raise AssertionError(kind)


def test_registry_holds_the_twelve_spaces() -> None:
    assert list_specialists() == [f"s{i}" for i in range(12)]
    covered = {m for n in list_specialists() for m in get_specialist(n).modalities}
    assert covered == {"image", "text", "audio", "point_cloud", "thermal", "event", "tactile"}


@pytest.mark.parametrize("name", list_specialists())
def test_every_tower_runs_forward_and_backward_with_the_spaces_loss(name: str) -> None:
    spec = get_specialist(name)
    space = SimSpace(spec).train()
    assert space.modalities == tuple(spec.towers)
    for m in space.modalities:
        kind = spec.input_kind(m)
        expected = EXPECTED_KINDS.get((name, m), "text" if m == "text" else "trunk")
        assert kind == expected, (name, m)
        partner = "text" if m != "text" else next(x for x in space.modalities if x != "text")
        for x in _inputs(kind):
            space.zero_grad(set_to_none=True)
            e = space.encode(m, x)
            assert e.shape == (B, spec.dim)
            assert torch.allclose(e.norm(dim=-1), torch.ones(B), atol=1e-5)
            p = space.encode(partner, _inputs(spec.input_kind(partner))[0])
            loss = space.pair_loss(e, p)
            assert loss.ndim == 0 and torch.isfinite(loss)
            loss.backward()
            grads = [q.grad for q in space.towers[m].parameters()]
            if grads:  # the identity text tower of s0 has none
                assert all(g is not None for g in grads), (name, m)
                assert sum(float(g.abs().sum()) for g in grads) > 0, (name, m)
            assert space.log_scale.grad is not None
            if spec.loss == "sigmoid":
                assert space.bias is not None and space.bias.grad is not None


def test_space_losses_by_hand() -> None:
    a = torch.eye(2)
    clip = SimSpace(get_specialist("s1"))
    scale = 2.0  # small enough for float32 to resolve the loss
    with torch.no_grad():
        clip.log_scale.fill_(math.log(scale))
    # InfoNCE over both directions, averaged (CLIP): each row log(e^s / (e^s + e^0))
    per_row = -math.log(math.exp(scale) / (math.exp(scale) + 1))
    assert clip.pair_loss(a, a).item() == pytest.approx(per_row, rel=1e-5)
    sig = SimSpace(get_specialist("s2"))
    assert sig.loss_kind == "sigmoid"
    assert sig.log_scale.exp().item() == pytest.approx(10.0) and sig.bias.item() == -10.0
    # SigLIP: -(1/N) sum_ij log sigmoid(z_ij (t x_i.y_j + b)), z = +1 on the diagonal
    t, b = 10.0, -10.0

    def logsig(v: float) -> float:
        return -math.log1p(math.exp(-v))

    expected = -(2 * logsig(t + b) + 2 * logsig(-(0 + b))) / 2
    assert sig.pair_loss(a, a).item() == pytest.approx(expected, rel=1e-5)


def test_spec_validation_errors() -> None:
    towers = {"point_cloud": {"kind": "pointnet"}, "text": {"kind": "mlp"}}
    with pytest.raises(ValueError, match="'image@s1' is not an anchor"):
        SpecialistSpec("x", "", 256, towers,
                       phases=[PhaseSpec("student", pairs=[["point_cloud", "image@s1"]])])
    with pytest.raises(ValueError, match="'audio' has no tower"):
        SpecialistSpec("x", "", 256, towers, phases=[PhaseSpec(pairs=[["audio", "text"]])])
    with pytest.raises(ValueError, match="loss must be one of"):
        SpecialistSpec("x", "", 256, towers, loss="triplet")
    ok = SpecialistSpec("x", "", 256, towers, anchors={"image": "s1"},
                        phases=[{"data": "student", "pairs": [["point_cloud", "image@s1"]]}])
    assert isinstance(ok.phases[0], PhaseSpec) and ok.modalities == ("point_cloud", "text")
    with pytest.raises(ValueError, match="teacher or student"):
        PhaseSpec("val", pairs=[["image", "text"]])
    with pytest.raises(ValueError, match="subset"):
        PhaseSpec(subset=[0.5, 0.5], pairs=[["image", "text"]])
    with pytest.raises(ValueError, match="at least one contrastive pair"):
        PhaseSpec()


def test_tower_errors() -> None:
    with pytest.raises(ValueError, match="unknown tower kind"):
        build_tower("image", {"kind": "vit"}, 64)
    with pytest.raises(ValueError, match="identity tower"):
        build_tower("image", {"kind": "identity"}, 384)
    with pytest.raises(ValueError, match="identity tower"):
        build_tower("text", {"kind": "identity"}, 256)
    assert tower_input_kind("thermal", {"kind": "tiny_cnn"}) == "pixels"
    assert tower_input_kind("audio", {}) == "trunk"


@pytest.mark.parametrize("name", list_specialists())
def test_spec_round_trips_through_dict(name: str) -> None:
    spec = get_specialist(name)
    again = SpecialistSpec.from_dict(spec.to_dict())
    assert again == spec
    assert again.to_dict() == spec.to_dict()


def test_registry_lookups() -> None:
    with pytest.raises(KeyError, match="unknown specialist 's99'"):
        get_specialist("s99")
    with pytest.raises(ValueError, match="unknown specialist key"):
        SpecialistSpec.from_dict({**get_specialist("s0").to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="already registered"):
        register_specialist(get_specialist("s0"))
    over = get_specialist("s4", {"seed": 40, "corpus": "appearance"})
    assert over.seed == 40 and over.corpus == "appearance"
    assert get_specialist("s4").seed == 4  # the registry's copy is unchanged


@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_occlude_points_removes_one_side_and_keeps_the_shape(fraction: float) -> None:
    b, p = 3, 200
    points = torch.randn(b, p, 3)
    gen = torch.Generator().manual_seed(5)
    out = occlude_points(points, torch.full((b,), fraction), gen)
    assert out.shape == points.shape
    # the cut's plane: the function draws its normal first from the generator
    normal = torch.nn.functional.normalize(
        torch.randn(b, 1, 3, generator=torch.Generator().manual_seed(5)), dim=-1)
    keep = int(p * (1 - fraction))
    for i in range(b):
        depth = (points[i] * normal[i]).sum(-1)
        cutoff = depth.sort().values[keep - 1]
        out_depth = (out[i] * normal[i]).sum(-1)
        assert (out_depth <= cutoff + 1e-6).all()  # nothing beyond the plane survives
        # every output point is an input point, and at most `keep` distinct ones
        assert (out[i][:, None, :] == points[i][None, :, :]).all(-1).any(1).all()
        distinct = torch.unique(out[i], dim=0).shape[0]
        assert 0.5 * keep < distinct <= keep
        # the removed side: the points beyond the plane are the requested fraction
        removed = int((depth > cutoff + 1e-6).sum())
        assert removed == p - keep


def test_occlude_points_keeps_at_least_eight_points() -> None:
    points = torch.randn(2, 40, 3)
    out = occlude_points(points, torch.tensor([0.99, 0.99]), torch.Generator().manual_seed(0))
    assert out.shape == (2, 40, 3)
    for i in range(2):
        assert torch.unique(out[i], dim=0).shape[0] <= 8
