"""The Table 8 CLS-only and Table 9 outer-product heads, against literal
re-implementations, and the paper's own CLS(·)-without-SA reading (= the mean head)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omnibind_train.models.fusion import (
    FUSION_KINDS,
    TOKEN_SET_KINDS,
    ClsTokenFusion,
    FusionConfig,
    MeanFusion,
    OuterProductFusion,
    classify,
    export_fusion_onnx,
)
from omnibind_train.trainers.af import AFConfig, FusionData, fused_accuracy, train_fusion
from omnibind_train.trainers.common import LoopConfig, OptimConfig

D = 16


def _batch(b: int = 4, n: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tokens = F.normalize(torch.randn(b, n, D, generator=gen), dim=-1)
    mask = torch.rand(b, n, generator=gen) > 0.4
    mask[:, 0] = True
    mask[1, 1:] = False  # one sample with a single live token
    return tokens, mask


def _randomise(head: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """A trained-looking head: every parameter random (no identity / zero init left)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return head.eval()


def _cls(trained: bool = True) -> ClsTokenFusion:
    head = ClsTokenFusion(dim=D, num_heads=4)
    return _randomise(head) if trained else head


def _outer(trained: bool = True) -> OuterProductFusion:
    head = OuterProductFusion(dim=D, rank=3)
    return _randomise(head) if trained else head


def _cls_literal(head: ClsTokenFusion, x: torch.Tensor) -> torch.Tensor:
    """One sample's live tokens ``[n, D]`` -> fused ``[D]``, written out head by head."""
    h, dh = head.num_heads, D // head.num_heads
    keys = head.key(head.norm(x))
    values = head.value(x)
    outs = []
    for j in range(h):
        sl = slice(j * dh, (j + 1) * dh)
        scores = torch.stack([head.query[sl] @ keys[i, sl] for i in range(x.shape[0])]) / dh ** 0.5
        w = scores.softmax(0)
        outs.append(sum(w[i] * values[i, sl] for i in range(x.shape[0])))
    return F.normalize(head.proj(torch.cat(outs)), dim=0)


def _outer_literal(head: OuterProductFusion, x: torch.Tensor) -> torch.Tensor:
    """One sample's live tokens ``[n, D]`` -> fused ``[D]``: x_i + P vec(z_i (x) mean_{j!=i} z_j),
    averaged, normalised; a lone token passes through."""
    z = [torch.cat([head.reduce(head.norm(xi)), torch.ones(1)]) for xi in x]
    out = []
    for i in range(x.shape[0]):
        others = [z[j] for j in range(x.shape[0]) if j != i]
        if not others:
            out.append(x[i])
            continue
        m = sum(others) / len(others)
        out.append(x[i] + head.proj(torch.outer(z[i], m).flatten()))
    return F.normalize(sum(out) / len(out), dim=0)


@pytest.mark.parametrize("make,literal", [(_cls, _cls_literal), (_outer, _outer_literal)])
def test_heads_match_literal_reimplementation(make, literal):
    head = make()
    tokens, mask = _batch()
    fused = head(tokens, mask)
    for b in range(tokens.shape[0]):
        torch.testing.assert_close(fused[b], literal(head, tokens[b, mask[b]]), atol=1e-5,
                                   rtol=1e-5)


def test_outer_lone_token_passes_through_and_pairs_interact():
    head = _outer()
    tokens, mask = _batch()
    # sample 1 has one live token: exactly that token, although P and its bias are non-zero
    torch.testing.assert_close(head(tokens, mask)[1], tokens[1, 0])
    # two tokens: the output is not the mean any more (the bilinear term is there)
    two = torch.zeros_like(mask)
    two[:, :2] = True
    assert not torch.allclose(head(tokens, two), MeanFusion()(tokens, two), atol=1e-3)


def test_cls_token_has_no_token_residual():
    """AF adds each token to its attended value and averages; the CLS token's output is the
    projected attended value only: with W_o = 0 it is zero whatever the tokens."""
    head = _cls()
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.zero_()
    tokens, mask = _batch()
    assert torch.equal(head(tokens, mask), torch.zeros(tokens.shape[0], D))


@pytest.mark.parametrize("kind", ["cls_token", "outer"])
def test_untrained_head_is_the_mean_baseline(kind):
    tokens, mask = _batch()
    head = FusionConfig(kind=kind, dim=D, num_heads=4, rank=3).build()
    torch.testing.assert_close(head(tokens, mask), MeanFusion()(tokens, mask))


@pytest.mark.parametrize("make", [_cls, _outer])
def test_padding_order_and_empty_samples(make):
    head = make()
    tokens, mask = _batch()
    garbage = tokens.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), D) * 100
    garbage[2, ~mask[2]] = float("nan")
    torch.testing.assert_close(head(garbage, mask), head(tokens, mask))
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(head(tokens[:, perm], mask[:, perm]), head(tokens, mask),
                               atol=1e-6, rtol=1e-5)
    empty = mask.clone()
    empty[0] = False
    fused = head(tokens, empty)
    assert torch.isfinite(fused).all() and torch.equal(fused[0], torch.zeros(D))
    torch.testing.assert_close(fused.norm(dim=-1)[1:], torch.ones(tokens.shape[0] - 1))


def test_config_round_trip_and_old_dicts():
    for kind in ("cls_token", "outer"):
        cfg = FusionConfig(kind=kind, dim=D, num_heads=4, rank=5)
        assert FusionConfig.from_dict(cfg.to_dict()) == cfg
        assert isinstance(cfg.build(), FUSION_KINDS[kind])
        assert kind in TOKEN_SET_KINDS
    assert cfg.build().proj.in_features == 36  # (rank + 1) ** 2
    old = {k: v for k, v in FusionConfig(kind="af", dim=D).to_dict().items() if k != "rank"}
    assert FusionConfig.from_dict(old).rank == 32  # bundles written before the field


def test_paper_cls_without_sa_is_the_mean_head():
    """Table 8's CLS(·) as the paper defines it (Fig. 3b's cosine classification of each
    modality, summed, no SA): the same label ranking as classifying the mean embedding."""
    gen = torch.Generator().manual_seed(3)
    tokens, mask = _batch(b=64, n=5, seed=3)
    labels = F.normalize(torch.randn(7, D, generator=gen), dim=-1)
    per_modality = torch.einsum("bnd,cd->bnc", tokens, labels) * mask.unsqueeze(-1)
    late = per_modality.sum(1)
    mean = MeanFusion()(tokens, mask)
    assert torch.equal(late.argmax(-1), classify(mean, labels))
    torch.testing.assert_close(late.argsort(-1), (mean @ labels.T).argsort(-1))


def _xor_world(n: int = 256, seed: int = 0) -> tuple[FusionData, torch.Tensor]:
    """Two modalities, 4 classes, each modality alone only half-informative: class = (a, b)
    with a read from modality 0's token and b from modality 1's; labels are one-hot axes."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    a, b = y // 2, y % 2
    base = torch.eye(D)
    t0 = F.normalize(base[4 + a] + 0.1 * torch.randn(n, D, generator=gen), dim=-1)
    t1 = F.normalize(base[6 + b] + 0.1 * torch.randn(n, D, generator=gen), dim=-1)
    data = FusionData.build({"image": t0, "text": t1},
                            {"image": torch.ones(n, dtype=torch.bool),
                             "text": torch.ones(n, dtype=torch.bool)}, y, [])
    return data, F.normalize(torch.eye(4, D) + 0.01, dim=-1)


@pytest.mark.parametrize("kind", ["cls_token", "outer"])
def test_heads_learn_what_the_mean_cannot(kind):
    """Label embeddings orthogonal to every token: the mean (and the untrained head) are at
    chance; trained with Eq. 9 both heads separate the four classes."""
    data, label_emb = _xor_world()
    cfg = AFConfig(loop=LoopConfig(epochs=60, batch_size=64, log_every=0, amp=False),
                   optim=OptimConfig(lr=1e-2, weight_decay=0.0, warmup_frac=0.0),
                   fusion=FusionConfig(kind=kind, dim=D, num_heads=4, rank=4),
                   negatives=False, random_subset_prob=0.0, modalities=["image", "text"])
    torch.manual_seed(0)
    head = cfg.fusion.build()
    mean_acc = fused_accuracy(MeanFusion(), data, label_emb)
    assert mean_acc <= 0.5
    train_fusion(head, data, label_emb, cfg, seed=0, progress=False)
    assert fused_accuracy(head, data, label_emb) >= 0.95


@pytest.mark.parametrize("make", [_cls, _outer])
def test_onnx_parity_with_dynamic_batch_and_tokens(tmp_path, make):
    ort = pytest.importorskip("onnxruntime")
    head = make()
    path = export_fusion_onnx(head, tmp_path / "head.onnx", dim=D)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b, n in ((1, 1), (3, 4), (5, 7)):
        tokens = F.normalize(torch.randn(b, n, D), dim=-1)
        mask = torch.rand(b, n) > 0.3
        mask[:, 0] = True
        got = session.run(None, {"tokens": tokens.numpy(), "mask": mask.numpy()})[0]
        np.testing.assert_allclose(got, head(tokens, mask).detach().numpy(), atol=1e-4)


@pytest.mark.parametrize("kind", ["af", "mean", "cls_token", "outer", "linear", "concat"])
def test_bundle_export_gives_token_set_heads_a_dynamic_token_axis(kind):
    """The bundle writer exports every token-set head with a dynamic N (the runtime feeds only
    the live sensors' tokens); only the slot baselines get a fixed N."""
    from types import SimpleNamespace

    from omnibind_train.export.components import _fusion_token_count
    from omnibind_train.models.fusion import TOKEN_SET_KINDS

    plan = SimpleNamespace(fusion_config={"kind": kind}, encoders={"image": None, "audio": None})
    dynamic, n = _fusion_token_count(plan)
    assert dynamic == (kind in TOKEN_SET_KINDS) == (kind not in ("linear", "concat"))
    assert n == (3 if dynamic else len(FusionConfig().slots))
