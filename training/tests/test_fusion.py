"""Fusion heads: AF masking and permutation invariance, baselines, CLS/negatives, ONNX parity."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from omnibind_train.models import (
    MODALITY_SLOTS,
    AdaptiveFusion,
    ConcatFusion,
    FusionConfig,
    LinearFusion,
    MeanFusion,
    classify,
    export_fusion_onnx,
    select_negative_labels,
    stack_modalities,
)

D = 16


def _af() -> AdaptiveFusion:
    # zero_init=False: a trained-looking head, so attention actually changes the output
    return AdaptiveFusion(dim=D, num_heads=4, zero_init=False).eval()


def _batch(b: int = 3, n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.nn.functional.normalize(torch.randn(b, n, D), dim=-1)
    mask = torch.rand(b, n) > 0.4
    mask[:, 0] = True
    return tokens, mask


def test_af_output_is_unit_norm_and_not_the_mean():
    tokens, mask = _batch()
    fused = _af()(tokens, mask)
    assert fused.shape == (3, D)
    torch.testing.assert_close(fused.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(fused, MeanFusion()(tokens, mask), atol=1e-3)


def test_af_zero_init_starts_as_the_mean_baseline():
    tokens, mask = _batch()
    head = AdaptiveFusion(dim=D, num_heads=4)
    torch.testing.assert_close(head(tokens, mask), MeanFusion()(tokens, mask))


def test_af_padding_tokens_do_not_change_the_output():
    head = _af()
    tokens, mask = _batch()
    garbage = tokens.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), D) * 100
    garbage[0, -1] = float("nan") if not mask[0, -1] else garbage[0, -1]
    torch.testing.assert_close(head(garbage, mask), head(tokens, mask))
    # ... and equals running the sample alone with its padding removed
    for i in range(tokens.shape[0]):
        alone = tokens[i, mask[i]].unsqueeze(0)
        torch.testing.assert_close(head(alone, torch.ones(1, alone.shape[1], dtype=torch.bool)),
                                   head(tokens, mask)[i:i + 1], atol=1e-6, rtol=1e-5)


def test_af_is_permutation_invariant_over_tokens():
    head = _af()
    tokens, mask = _batch()
    perm = torch.randperm(tokens.shape[1])
    torch.testing.assert_close(head(tokens[:, perm], mask[:, perm]), head(tokens, mask),
                               atol=1e-6, rtol=1e-5)


def test_af_sample_without_live_tokens_is_finite():
    tokens, mask = _batch()
    mask[1] = False
    fused = _af()(tokens, mask)
    assert torch.isfinite(fused).all()
    assert torch.equal(fused[1], torch.zeros(D))


def test_af_trains():
    head = AdaptiveFusion(dim=D, num_heads=4)  # zero-init projection must still get gradients
    tokens, mask = _batch()
    (head(tokens, mask) * torch.randn(3, D)).sum().backward()
    assert all(p.grad is not None for p in head.parameters())
    assert head.proj.weight.grad.abs().sum() > 0


def test_mean_baseline_matches_numpy():
    tokens, mask = _batch()
    t, m = tokens.numpy(), mask.numpy()
    expected = np.stack([t[i][m[i]].mean(0) for i in range(len(t))])
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(MeanFusion()(tokens, mask).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("cls", [LinearFusion, ConcatFusion])
def test_slot_baselines_start_at_mean_and_ignore_missing_slots(cls):
    head = cls(num_slots=5, dim=D)
    tokens, mask = _batch()
    torch.testing.assert_close(head(tokens, mask), MeanFusion()(tokens, mask))
    with torch.no_grad():  # move away from the mean-equivalent init
        for p in head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    garbage = tokens.clone()
    garbage[~mask] = 50.0
    torch.testing.assert_close(head(garbage, mask), head(tokens, mask))
    assert not torch.allclose(head(tokens, mask), MeanFusion()(tokens, mask), atol=1e-3)


def test_fusion_config_round_trip_builds_every_kind():
    for kind, cls in [("af", AdaptiveFusion), ("mean", MeanFusion), ("linear", LinearFusion),
                      ("concat", ConcatFusion)]:
        config = FusionConfig(kind=kind, dim=D, num_heads=4)
        assert FusionConfig.from_dict(config.to_dict()) == config
        head = config.build()
        assert isinstance(head, cls)
        tokens, mask = _batch(2, len(MODALITY_SLOTS))
        assert head(tokens, mask).shape == (2, D)
    with pytest.raises(ValueError, match="kind"):
        FusionConfig(kind="gated")


def test_stack_modalities_lays_out_slots():
    emb = {"thermal": torch.ones(2, D), "image": 2 * torch.ones(2, D)}
    tokens, mask = stack_modalities(emb, present={"thermal": torch.tensor([True, False])})
    image, thermal = MODALITY_SLOTS.index("image"), MODALITY_SLOTS.index("thermal")
    assert tokens.shape == (2, len(MODALITY_SLOTS), D)
    assert mask.tolist()[0] == [i in (image, thermal) for i in range(len(MODALITY_SLOTS))]
    assert mask[1, image] and not mask[1, thermal]
    assert torch.equal(tokens[:, image], emb["image"])
    with pytest.raises(ValueError, match="smell"):
        stack_modalities({"smell": torch.ones(2, D)})


def test_classify_by_cosine():
    labels = torch.eye(3, D)
    emb = torch.stack([torch.eye(3, D)[2] * 5, torch.eye(3, D)[0] + 0.1 * torch.eye(3, D)[1]])
    assert classify(emb, labels).tolist() == [2, 0]


def test_negative_labels_from_wrong_predictions():
    predictions = torch.tensor([[1, 2, 3], [0, 0, 4], [2, 3, 1]])
    mask = torch.tensor([[True, True, False], [True, True, True], [True, True, True]])
    targets = torch.tensor([1, 0, 2])
    neg = select_negative_labels(predictions, mask, targets, 5)
    assert neg[0].tolist() == [False, False, True, False, False]  # 3 is masked out
    assert neg[2].tolist() == [False, True, False, True, False]
    # sample 1: only the third modality is wrong
    assert neg[1].tolist() == [False, False, False, False, True]


def test_all_correct_sample_gets_one_random_wrong_label():
    predictions = torch.tensor([[2, 2], [2, 2]])
    mask = torch.tensor([[True, True], [True, False]])
    targets = torch.tensor([2, 2])
    seen = set()
    for seed in range(40):
        neg = select_negative_labels(predictions, mask, targets, 4,
                                     generator=torch.Generator().manual_seed(seed))
        assert neg.sum(dim=1).tolist() == [1, 1]
        assert not neg[:, 2].any()
        seen.update(neg.nonzero()[:, 1].tolist())
    assert seen == {0, 1, 3}


def test_af_onnx_parity_with_dynamic_batch_and_tokens(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    head = _af()
    path = export_fusion_onnx(head, tmp_path / "af.onnx", dim=D, example_batch=2,
                              example_tokens=3)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["tokens", "mask"]
    for b, n in [(2, 3), (1, 1), (5, 7), (4, 2)]:
        tokens, mask = _batch(b, n)
        with torch.no_grad():
            expected = head(tokens, mask).numpy()
        (got,) = session.run(None, {"tokens": tokens.numpy(), "mask": mask.numpy()})
        assert got.shape == (b, D)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
