"""The stage-I weighting follows one source at a time: Eq. 7 (``paper_eq7``) or the appendix
code (``appendix_code``), each against an independent computation of that source; the config
choice, its validation and configs written before it existed."""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from omnibind_train.losses import CAD_WEIGHTINGS, DEFAULT_CAD_WEIGHTING, CADLoss
from omnibind_train.pipeline import PipelineConfig
from omnibind_train.trainers.cad import ABLATION_VARIANTS, CADConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TAU = 1 / float(CADLoss().double().logit_scale())  # 0.07 as its float32 log-scale holds it


def _unit(rows: int, seed: int, dim: int = 6) -> torch.Tensor:
    x = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return F.normalize(x, dim=-1)


def _eq2(student: torch.Tensor, text: torch.Tensor) -> float:
    """Eq. 2 per sample i, averaged over the batch, with loops."""
    k = student.shape[0]
    total = 0.0
    for i in range(k):
        num = math.exp(float(student[i] @ text[i]) / TAU)
        den = sum(math.exp(float(student[i] @ text[j]) / TAU) for j in range(k))
        total -= math.log(num / den)
    return total / k


def _kl_entries(teacher: torch.Tensor, student: torch.Tensor) -> float:
    """``sum_ij p_ij log(p_ij / q_ij)`` over every entry of the row-softmaxed matrices."""
    p, q = teacher.softmax(dim=1), student.softmax(dim=1)
    return sum(float(p[i, j] * math.log(p[i, j] / q[i, j]))
               for i in range(p.shape[0]) for j in range(p.shape[1]))


def test_paper_eq7_is_eq2_to_7_with_per_sample_means() -> None:
    """L_in (Eq. 2, mean over i) + L_cr (Eq. 3-4) + L_se (Eq. 5-6), the KL sums over the k x k
    entries divided by k (mean KL per row), weights 1 : 1 : 1."""
    k = 5
    s, t, v = _unit(k, 1), _unit(k, 2), _unit(k, 3)
    l_in = _eq2(s, t)
    l_cr = _kl_entries(t @ v.T, t @ s.T) / k  # rows: texts; D_t^r = E_l E_v^T
    l_se = _kl_entries((v @ v.T + t @ t.T) / 2, s @ s.T) / k  # Eq. 5: image and text
    out = CADLoss(weighting="paper_eq7").double()(s, t, v)
    assert out["in_loss"].item() == pytest.approx(l_in, rel=1e-9)
    assert out["cr_loss"].item() == pytest.approx(l_cr, rel=1e-9)
    assert out["se_loss"].item() == pytest.approx(l_se, rel=1e-9)
    assert out["loss"].item() == pytest.approx(l_in + l_cr + l_se, rel=1e-9)


def _demo_kdal(v_embeddings: torch.Tensor, t_embeddings: torch.Tensor,
               image: torch.Tensor) -> dict[str, float]:
    """The appendix snippet (DemoKDAL.py) line by line; what it does not print is filled in as
    the losses module documents: ``kldivloss`` = ``nn.KLDivLoss()`` (reduction "mean") on
    log-softmax / softmax rows, ``t_logic`` = image @ text.t(), ``cl_loss`` = Eq. 2."""
    kl = torch.nn.KLDivLoss()  # reduction="mean": over all k * k entries

    def kldivloss(s_logic: torch.Tensor, t_logic: torch.Tensor) -> torch.Tensor:
        return kl(F.log_softmax(s_logic, dim=1), F.softmax(t_logic, dim=1))

    t_logic = image @ t_embeddings.t()
    s_logic = v_embeddings @ t_embeddings.t()
    kl_loss = kldivloss(s_logic, t_logic)
    self_t_logic = t_embeddings @ t_embeddings.t()
    self_s_logic = v_embeddings @ v_embeddings.t()
    self_kl_loss = kldivloss(self_s_logic, self_t_logic)
    cl_loss = _eq2(v_embeddings, t_embeddings)
    loss = (cl_loss + kl_loss * 100 + self_kl_loss * 100) / 3
    return {"loss": float(loss), "in_loss": cl_loss, "cr_loss": float(kl_loss),
            "se_loss": float(self_kl_loss)}


def test_appendix_code_is_the_snippet() -> None:
    k = 5
    s, t, v = _unit(k, 4), _unit(k, 5), _unit(k, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # KLDivLoss warns that "mean" is not the true KL mean
        want = _demo_kdal(s, t, v)
    out = CADLoss(weighting="appendix_code").double()(s, t, v)
    for key, value in want.items():
        assert out[key].item() == pytest.approx(value, rel=1e-9), key
    # the KL is the mean over the k^2 entries, not over the k rows
    assert out["cr_loss"].item() == pytest.approx(_kl_entries(v @ t.T, s @ t.T) / k ** 2,
                                                  rel=1e-9)


def test_the_two_weightings_differ_in_every_part() -> None:
    """Different terms (orientation, L_se teacher), reduction and weights: neither is the other
    rescaled."""
    k = 6
    s, t, v = _unit(k, 7), _unit(k, 8), _unit(k, 9)
    eq7 = CADLoss(weighting="paper_eq7").double()(s, t, v)
    code = CADLoss(weighting="appendix_code").double()(s, t, v)
    assert code["in_loss"].item() == pytest.approx(eq7["in_loss"].item(), rel=1e-12)
    # same reduction, other matrices: the code's L_cr is row-per-sample, its L_se text-only
    assert code["cr_loss"].item() * k != pytest.approx(eq7["cr_loss"].item(), rel=1e-3)
    assert code["se_loss"].item() * k != pytest.approx(eq7["se_loss"].item(), rel=1e-3)
    assert code["se_loss"].item() * k == pytest.approx(_kl_entries(t @ t.T, s @ s.T) / k,
                                                       rel=1e-9)


def test_default_is_paper_eq7_and_configs_name_it() -> None:
    assert DEFAULT_CAD_WEIGHTING == "paper_eq7"
    cfg = CADConfig()
    assert (cfg.weighting, cfg.weights, cfg.divisor, cfg.kl_reduction) == \
        ("paper_eq7", (1.0, 1.0, 1.0), 1.0, "batchmean")
    for name in ("sim_default.yaml", "tiny.yaml"):
        raw = yaml.safe_load((CONFIGS / name).read_text())
        assert raw["cad"]["weighting"] == "paper_eq7", name
        assert not {"weights", "divisor", "kl_reduction"} & set(raw["cad"]), name
        assert PipelineConfig.from_yaml(CONFIGS / name).cad.weighting == "paper_eq7"
    code = PipelineConfig.from_yaml(CONFIGS / "sim_default.yaml",
                                    ["cad.weighting=appendix_code"]).cad
    assert (code.weights, code.divisor, code.kl_reduction) == ((1.0, 100.0, 100.0), 3.0, "mean")


@pytest.mark.parametrize("weighting", ["paper_eq7", "appendix_code"])
def test_a_weighting_fixes_its_values_and_round_trips(weighting) -> None:
    preset = CAD_WEIGHTINGS[weighting]
    cfg = CADConfig(weighting=weighting)
    assert cfg.weights == preset.weights and cfg.kl_reduction == preset.kl_reduction
    again = CADConfig.from_dict(cfg.to_dict())
    assert again == cfg
    # its own values may be repeated; others are refused (they would match neither source)
    assert CADConfig(weighting=weighting, divisor=preset.divisor).weighting == weighting
    with pytest.raises(ValueError, match="weighting: custom"):
        CADConfig(weighting=weighting, kl_reduction="sum")
    with pytest.raises(ValueError, match="kd_temperature"):
        CADConfig(weighting=weighting, kd_temperature=2.0)
    # switching the weighting of a config brings the new source's values
    other = "appendix_code" if weighting == "paper_eq7" else "paper_eq7"
    swapped = cfg.replace(weighting=other)
    assert swapped.weights == CAD_WEIGHTINGS[other].weights
    with pytest.raises(ValueError, match="unknown cad.weighting"):
        CADConfig(weighting="eq7")


def test_ablation_zeroes_terms_and_keeps_the_weighting() -> None:
    for weighting in CAD_WEIGHTINGS:
        for variant, terms in ABLATION_VARIANTS.items():
            cfg = CADConfig(weighting=weighting).replace(terms=list(terms))
            loss = cfg.build_loss()
            preset = CAD_WEIGHTINGS[weighting]
            assert loss.weighting == preset and loss.divisor == preset.divisor, variant
            assert loss.weights == tuple(w if t in terms else 0.0 for t, w in
                                         zip(("in", "cr", "se"), preset.weights, strict=True))


def test_configs_written_before_the_choice_train_as_they_did() -> None:
    """A run's stored config (or a bundle's provenance) with the old explicit weighting and no
    ``weighting`` key reads as ``custom`` and computes the old total,
    ``(L_in + 100 L_cr + 100 L_se) / 3`` with batchmean KLs and Eq. 3-5's terms."""
    old = CADConfig(weighting="custom").to_dict()
    del old["weighting"]
    assert (old["weights"], old["divisor"], old["kl_reduction"]) == ([1.0, 100.0, 100.0], 3.0,
                                                                     "batchmean")
    cfg = CADConfig.from_dict(old)
    assert cfg.weighting == "custom"
    partial = CADConfig.from_dict({"weights": [1.0, 100.0, 100.0], "divisor": 3.0})
    assert (partial.weighting, partial.kl_reduction) == ("custom", "batchmean")
    k = 5
    s, t, v = _unit(k, 10), _unit(k, 11), _unit(k, 12)
    eq7 = CADLoss(weighting="paper_eq7").double()(s, t, v)
    got = cfg.build_loss().double()(s, t, v)
    want = (eq7["in_loss"] + 100 * eq7["cr_loss"] + 100 * eq7["se_loss"]) / 3
    assert got["loss"].item() == pytest.approx(want.item(), rel=1e-12)
