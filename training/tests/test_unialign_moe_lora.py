"""UniAlign's MoE of LoRA experts (Eq. 3-9): a fresh block is the frozen FFN, routing is by
modality (grouped) or over every expert (global), top-k, LoRA scale, trainable set."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from omnibind_train.unialign.moe_lora import LoRA, MoELoRA, MoELoRAFFN, load_balance_loss

MODS = ["image", "audio", "point_cloud"]


def ffn(d: int = 16, hidden: int = 64, seed: int = 0) -> tuple[nn.Linear, nn.Linear, nn.Module]:
    torch.manual_seed(seed)
    return nn.Linear(d, hidden), nn.Linear(hidden, d), nn.GELU()


@pytest.mark.parametrize("placement", ["parallel", "fc"])
@pytest.mark.parametrize("routing", ["grouped", "global"])
def test_fresh_block_is_the_frozen_ffn_and_only_moe_trains(placement, routing):
    fc1, fc2, act = ffn()
    block = MoELoRAFFN(fc1, fc2, act, MODS, placement=placement, routing=routing)
    x = torch.randn(2, 5, 16)
    expected = fc2(act(fc1(x)))
    for m in MODS:  # LoRA B starts at zero: the MoE adds exactly nothing
        assert torch.equal(block(x, m), expected)
    trainable = {n for n, p in block.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("moe.") for n in trainable)
    # after a step the experts of the routed modality change the output
    for name, p in block.named_parameters():
        if name.endswith("B.weight"):
            nn.init.normal_(p, std=0.1)
    assert not torch.allclose(block(x, "audio"), expected)


def test_lora_scale_and_rank():
    lora = LoRA(8, 6, r=4, alpha=32.0)
    nn.init.normal_(lora.B.weight)
    x = torch.randn(3, 8)
    assert lora.scale == 8.0
    assert torch.allclose(lora(x), 8.0 * x @ lora.A.weight.T @ lora.B.weight.T, atol=1e-5)
    with pytest.raises(ValueError, match="rank"):
        LoRA(8, 6, r=0)


def test_grouped_routing_uses_only_the_modalitys_own_experts():
    moe = MoELoRA(8, 8, MODS, experts=2, top_k=2, routing="grouped")
    assert moe.expert_indices("audio") == [2, 3]
    for p in moe.experts.parameters():
        nn.init.normal_(p)
    x = torch.randn(4, 8)
    before = moe(x, "audio")
    with torch.no_grad():  # experts of other modalities do not matter to audio tokens
        for i in (0, 1, 4, 5):
            moe.experts[i].B.weight.mul_(10)
    assert torch.allclose(moe(x, "audio"), before)
    with pytest.raises(KeyError, match="depth"):
        moe(x, "depth")


def test_global_routing_sees_every_expert_and_top_k_keeps_k():
    moe = MoELoRA(8, 8, MODS, experts=2, top_k=3, routing="global")
    assert moe.expert_indices("image") == list(range(6))
    g = moe.gates(torch.randn(10, 8), "image")
    assert g.shape == (10, 6)
    assert torch.allclose(g.sum(-1), torch.ones(10))
    assert ((g > 0).sum(-1) == 3).all()
    with pytest.raises(ValueError, match="top_k"):
        MoELoRA(8, 8, MODS, experts=2, top_k=3, routing="grouped")


def test_dense_softmax_when_top_k_is_n_and_parameter_count():
    moe = MoELoRA(768, 3072, ["audio"], experts=2, top_k=2, r=4)
    g = moe.gates(torch.randn(5, 768), "audio")
    assert (g > 0).all() and torch.allclose(g.sum(-1), torch.ones(5))
    # the code's fc1 count per modality: 2 experts x r(768 + 3072) + router 768 x 2
    assert sum(p.numel() for p in moe.parameters()) == 2 * 4 * (768 + 3072) + 768 * 2


def test_load_balance_loss_is_one_when_balanced_and_larger_when_collapsed():
    balanced = torch.eye(4).repeat(8, 1)
    collapsed = torch.zeros(32, 4)
    collapsed[:, 0] = 1
    assert load_balance_loss(balanced).item() == pytest.approx(1.0)
    assert load_balance_loss(collapsed).item() == pytest.approx(4.0)
