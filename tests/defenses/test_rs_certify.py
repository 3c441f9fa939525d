"""Randomized-smoothing CERTIFY / PREDICT (Cohen et al. 2019) on classifiers whose smoothed
radius is known exactly: for a linear f(x) = 1[w.x + b > 0], g = f and the exact l2 radius is
|w.x + b| / ||w|| (docs/certificates.md)."""

from __future__ import annotations

from statistics import NormalDist

import pytest
import torch
from torch import nn

import robustbench_mm
from robustbench_mm.defenses.rs_certify import clopper_pearson_lower, predict

SIGMA = 0.25


class Linear2(nn.Module):
    """Two-class logits ``[0, w.x + b]`` on ``[B,1,4,4]`` inputs; optional normalisation inside
    (``(x - 0.5) / std``) so sigma must stay in pixel units."""

    def __init__(self, seed: int = 0, std: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(16, generator=g, dtype=torch.float64)
        self.b, self.std = 0.1, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = ((x.flatten(1).double() - 0.5) / self.std) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], dim=1)

    def distance(self, x: torch.Tensor) -> torch.Tensor:  # exact l2 radius in pixel units
        s = ((x.flatten(1).double() - 0.5) / self.std) @ self.w + self.b
        return s.abs() / (self.w.norm() / self.std)


def _inputs(model: Linear2, dists: list[float]) -> torch.Tensor:
    """Points at prescribed signed pixel-space distances from the boundary."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(len(dists), 16, generator=g, dtype=torch.float64)
    unit = model.w / model.w.norm()
    s = ((x0 - 0.5) / model.std) @ model.w + model.b
    on_boundary = x0 - (s / (model.w.norm() / model.std)).unsqueeze(1) * unit  # project onto w.x' + b = 0
    return (on_boundary + torch.tensor(dists, dtype=torch.float64).unsqueeze(1) * unit).view(-1, 1, 4, 4)


@pytest.mark.parametrize("std", [1.0, 0.25])
def test_linear_radii_are_sound_and_tight(std: float) -> None:
    model = Linear2(std=std)
    dists = [-0.6, -0.3, -0.1, -0.02, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55]
    x = _inputs(model, dists)
    exact = model.distance(x)
    assert torch.allclose(exact, torch.tensor(dists, dtype=torch.float64).abs(), atol=1e-9)
    cert = robustbench_mm.certify(model, x, sigma=SIGMA, n0=100, n=100_000, alpha=0.001, batch_size=200_000,
                                  seeds=list(range(len(x))))
    truth = torch.tensor([int(d > 0) for d in dists])
    ok = ~cert.abstain
    assert (cert.prediction[ok] == truth[ok]).all(), "certified the wrong class"
    assert (cert.radius <= exact + 1e-12).all(), f"radius beyond the exact boundary distance: {cert.radius} {exact}"
    high = torch.tensor([NormalDist().cdf(abs(d) / SIGMA) for d in dists]) >= 0.8
    assert high.sum() >= 6
    assert (cert.radius[high] >= 0.9 * exact[high]).all(), f"not within 10%: {cert.radius[high]} {exact[high]}"


def test_clopper_pearson_is_one_sided_at_alpha() -> None:
    # k = n: the exact one-sided lower bound solves p^n = alpha
    assert clopper_pearson_lower(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100), rel=1e-9)
    assert clopper_pearson_lower(0, 100, 0.001) == 0.0
    # coverage is close to 1 - alpha (a two-sided alpha would miss at most alpha / 2)
    g = torch.Generator().manual_seed(0)
    p, n, alpha, trials = 0.7, 200, 0.2, 4000
    ks = torch.binomial(torch.full((trials,), float(n)), torch.full((trials,), p), generator=g)
    misses = sum(clopper_pearson_lower(int(k), n, alpha) > p for k in ks) / trials
    assert 0.12 < misses <= alpha + 0.02, misses


class Boundary(nn.Module):
    """Every input sits on the boundary: each class has probability exactly 1/2 under the noise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1)[:, 0].double() - 0.5
        return torch.stack([-s, s], dim=1)


def test_no_false_certificates_beyond_alpha_on_the_boundary() -> None:
    """At p_A = 1/2 any certificate is false; their rate must stay <= alpha. Selecting c_A from the
    estimation draws themselves (instead of fresh ones) doubles it."""
    x = torch.full((2000, 1, 1, 1), 0.5)
    alpha = 0.2
    cert = robustbench_mm.certify(Boundary(), x, sigma=SIGMA, n0=20, n=20, alpha=alpha, batch_size=100_000,
                                  seeds=list(range(len(x))))
    rate = float((~cert.abstain).double().mean())
    assert rate <= alpha, f"false-certificate rate {rate} > alpha {alpha}"


def test_selection_and_estimation_draws_are_fresh() -> None:
    seen: list[torch.Tensor] = []

    def logits(z: torch.Tensor) -> torch.Tensor:
        seen.append(z.clone())
        return torch.stack([z.flatten(1)[:, 0], -z.flatten(1)[:, 0]], 1)

    x = torch.zeros(3, 1, 2, 2)
    robustbench_mm.certify(logits, x, sigma=1.0, n0=7, n=11, alpha=0.01, batch_size=9, seeds=[0, 1, 2])
    draws = torch.cat(seen).flatten(1)
    assert len(draws) == 3 * (7 + 11)
    assert len(torch.unique(draws, dim=0)) == len(draws), "noise reused between selection and estimation"


def test_certificate_does_not_depend_on_batch_mates() -> None:
    model = Linear2()
    x = _inputs(model, [0.1, 0.3, -0.2])
    full = robustbench_mm.certify(model, x, sigma=SIGMA, n0=10, n=300, seeds=[5, 6, 7], batch_size=64)
    alone = robustbench_mm.certify(model, x[1:2], sigma=SIGMA, n0=10, n=300, seeds=[6], batch_size=7)
    assert full.p_lower[1] == alone.p_lower[0] and full.radius[1] == alone.radius[0]


def test_predict_two_sided_test_abstains_near_the_boundary() -> None:
    model = Linear2()
    x = _inputs(model, [0.4, -0.4, 0.0])
    pred = predict(model, x, sigma=SIGMA, n=256, alpha=0.001, seeds=[0, 1, 2])
    assert pred.tolist()[:2] == [1, 0]
    assert pred[2] == -1


def test_rescaled_logits_gain_no_certificate() -> None:
    """Masking control: multiplying logits by 1000 changes no argmax, hence no certificate."""
    model = Linear2()
    x = _inputs(model, [0.05, 0.2, -0.3])
    a = robustbench_mm.certify(model, x, sigma=SIGMA, n0=20, n=500, seeds=[1, 2, 3])
    b = robustbench_mm.certify(lambda z: 1000 * model(z), x, sigma=SIGMA, n0=20, n=500, seeds=[1, 2, 3])
    assert torch.equal(a.radius, b.radius) and torch.equal(a.prediction, b.prediction)


@pytest.mark.parametrize("kw, msg", [({"sigma": 0.0}, "sigma"), ({"n": 0}, "positive"), ({"alpha": 1.0}, "alpha")])
def test_bad_budgets_fail_with_one_clear_error(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        robustbench_mm.certify(Linear2(), torch.zeros(1, 1, 4, 4), **kw)
