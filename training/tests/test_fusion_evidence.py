"""The AF head that weighs its evidence: the evidence gate and the lone-token passthrough start
as Eq. 8, survive ONNX, and, trained with degraded twins in the mix, discount a degraded token
that the mean baseline cannot."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omnibind_train.models.fusion import MODALITY_SLOTS, FusionConfig
from omnibind_train.trainers import AFConfig, FusionData, LoopConfig, OptimConfig, train_fusion
from omnibind_train.trainers.af import degrade_tokens, make_batch

D, C = 32, 8
SLOTS = ("image", "audio", "point_cloud")  # the live modalities of the synthetic world
INDEX = [MODALITY_SLOTS.index(m) for m in SLOTS]


def _head(**options):
    torch.manual_seed(0)
    return FusionConfig(kind="af", dim=D, num_heads=4, zero_init=False,
                        **options).build().eval()


def test_untrained_gate_is_eq8_and_a_lone_token_passes_through():
    tokens = F.normalize(torch.randn(5, 3, D), dim=-1)  # any N: the head is token-set based
    mask = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    plain, gated = _head(), _head(evidence_gate=True)
    with torch.no_grad():
        assert torch.allclose(plain(tokens, mask), gated(tokens, mask), atol=1e-6)
        lone = _head(single_passthrough=True)(tokens, mask)
        reference = plain(tokens, mask)
    assert torch.allclose(lone[2], tokens[2, 1], atol=1e-6)  # one live token: itself
    assert torch.allclose(lone[4], tokens[4, 2], atol=1e-6)
    assert not torch.allclose(reference[2], tokens[2, 1], atol=1e-3)  # Eq. 8 moves it
    assert torch.allclose(lone[:2], reference[:2], atol=1e-6)  # several tokens: unchanged


def test_gated_head_exports_to_onnx_with_the_same_contract(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    head = _head(evidence_gate=True, single_passthrough=True)
    with torch.no_grad():
        head.gate[-1].weight.normal_(0, 0.5)  # a trained-looking gate
    tokens = F.normalize(torch.randn(2, 3, D), dim=-1)
    mask = torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    path = tmp_path / "af.onnx"
    torch.onnx.export(head, (tokens, mask), path, input_names=["tokens", "mask"],
                      output_names=["fused"], dynamo=False,
                      dynamic_axes={"tokens": {0: "b", 1: "n"}, "mask": {0: "b", 1: "n"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = F.normalize(torch.randn(4, 5, D), dim=-1)  # other batch and token count
    other_mask = torch.rand(4, 5) > 0.3
    other_mask[:, 0] = True
    got = session.run(None, {"tokens": other.numpy(), "mask": other_mask.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, head(other, other_mask).numpy(), atol=1e-5)


def _world(n: int, seed: int):
    """Clean tokens near their class centre; degraded twins dominated by a per-modality
    'degradation' direction plus a wrong class (a blinded camera that sees something else)."""
    gen = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(C, D, generator=torch.Generator().manual_seed(7)), dim=-1)
    looks = F.normalize(torch.randn(3, D, generator=torch.Generator().manual_seed(8)), dim=-1)
    labels = torch.arange(n) % C
    clean = F.normalize(centres[labels][:, None] + 0.9 * torch.randn(n, 3, D, generator=gen)
                        / D ** 0.5 * 4, dim=-1)
    wrong = (labels + torch.randint(1, C, (n,), generator=gen)) % C
    degraded = F.normalize(0.15 * clean + 0.8 * looks[None] + 0.9 * centres[wrong][:, None],
                           dim=-1)
    present = {m: torch.ones(n, dtype=torch.bool) for m in SLOTS}
    data = FusionData.build({m: clean[:, i] for i, m in enumerate(SLOTS)}, present, labels, [])
    data = data.with_degraded({m: degraded[:, i] for i, m in enumerate(SLOTS)}, {})
    return data, centres


def _one_degraded_accuracy(head, data: FusionData, centres: torch.Tensor) -> float:
    """All three live, each in turn seen degraded: the mean accuracy over the three."""
    hits = []
    mask = data.present
    with torch.no_grad():
        for slot in INDEX:
            tokens = data.tokens.clone()
            tokens[:, slot] = data.degraded[:, slot]
            pred = (head(tokens, mask) @ centres.T).argmax(dim=1)
            hits.append((pred == data.labels).float().mean().item())
    return float(np.mean(hits))


@pytest.mark.slow
def test_trained_gate_discounts_the_degraded_token_the_mean_cannot():
    train, centres = _world(800, seed=1)
    test, _ = _world(400, seed=2)
    head = FusionConfig(kind="af", dim=D, num_heads=4, evidence_gate=True,
                        single_passthrough=True).build()
    cfg = AFConfig(loop=LoopConfig(epochs=12, batch_size=64), modalities=list(SLOTS),
                   optim=OptimConfig(lr=3e-3, weight_decay=0.0),
                   fusion=FusionConfig(kind="af", dim=D), degrade_prob=0.3)
    train_fusion(head, train, centres, cfg, progress=False, seed=0)
    mean = FusionConfig(kind="mean", dim=D).build()
    gated, baseline = (_one_degraded_accuracy(h.eval(), test, centres) for h in (head, mean))
    assert gated >= baseline + 0.10, (gated, baseline)
    # the degraded token gets the smallest weight in most rows
    audio = INDEX[1]
    tokens = test.tokens.clone()
    tokens[:, audio] = test.degraded[:, audio]
    with torch.no_grad():
        weights = head.evidence_weights(tokens, head.attend(tokens, test.present), test.present)
    live = weights[:, INDEX]
    assert (live.argmin(dim=1) == 1).float().mean() > 0.8


def test_degrade_tokens_swaps_live_tokens_only():
    data, _ = _world(64, seed=3)
    mask = data.present.clone()
    mask[:, INDEX[2]] = False
    sample = torch.arange(64)
    tokens = torch.where(mask.unsqueeze(-1), data.tokens, 0.0)
    out = degrade_tokens(data, sample, tokens, mask, 0.5, torch.Generator().manual_seed(0))
    swapped = ~torch.isclose(out, tokens).all(dim=-1)
    assert swapped.sum() == swapped[:, INDEX[:2]].sum()  # only live tokens, never padding
    assert 0.3 < swapped[:, INDEX[:2]].float().mean() < 0.7
    assert torch.equal(out[swapped], data.degraded[swapped])
    cfg = AFConfig(modalities=list(SLOTS), degrade_prob=0.0)
    batch = make_batch(data, torch.arange(8), F.normalize(torch.randn(C, D), dim=-1), cfg,
                       torch.Generator().manual_seed(0))
    clean = data.tokens[data.records[torch.arange(8)]]
    assert torch.equal(batch.tokens, torch.where(batch.mask.unsqueeze(-1), clean, 0.0))
