"""FS certificate math (docs/methods.md) without model weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustbench_mm.defenses.fs_psm.certify import (
    ABSTAIN, bernstein_lower, certify_fs, certify_prediction, fcsb, fcsb_lower, fcsb_upper,
    hoeffding_lower,
)

# reference vectors: (S, eps, sigma, L, U, L/U); None = abstain
TABLE = [
    (0.90, 0.00, 0.50, 0.9000, 0.9000, 1.0000),
    (0.90, 0.25, 0.50, 0.7477, 0.9680, 0.7724),
    (0.95, 0.10, 0.25, 0.8812, 0.9817, 0.8976),
    (0.99, 0.50, 0.25, 0.4353, 1.0000, 0.4353),
    (0.80, 1.00, 0.50, -0.5275, 0.9990, None),
]


@pytest.mark.parametrize("s,eps,sigma,lo,up,tight", TABLE)
def test_reference_table(s: float, eps: float, sigma: float, lo: float, up: float, tight: float | None) -> None:
    assert fcsb_lower(s, eps, sigma) == pytest.approx(lo, abs=1e-4)
    assert fcsb_upper(s, eps, sigma) == pytest.approx(up, abs=1e-4)
    if tight is None:
        assert fcsb(s, eps, sigma) == ABSTAIN
    else:
        assert fcsb(s, eps, sigma) == pytest.approx(lo, abs=1e-4)
        assert fcsb_lower(s, eps, sigma) / fcsb_upper(s, eps, sigma) == pytest.approx(tight, abs=1e-4)


def test_radius_zero_monotone_and_abstain() -> None:
    grid = [i / 100 for i in range(0, 201)]
    for s in (0.3, 0.7, 0.9, 0.99, 0.999):
        for sigma in (0.25, 0.5):
            assert fcsb(s, 0.0, sigma) == pytest.approx(s, abs=1e-12)
            lows = [fcsb_lower(s, e, sigma) for e in grid]
            assert all(a >= b - 1e-12 for a, b in zip(lows, lows[1:]))
            for e, lo, b in zip(grid, lows, [fcsb(s, e, sigma) for e in grid]):
                assert (b == ABSTAIN) == (lo < 0)
    # non-decreasing in S and in sigma; -> -1 as eps/sigma grows
    assert fcsb_lower(0.8, 0.3, 0.5) < fcsb_lower(0.9, 0.3, 0.5) < fcsb_lower(0.95, 0.3, 0.5)
    assert fcsb_lower(0.9, 0.3, 0.25) < fcsb_lower(0.9, 0.3, 0.5) < fcsb_lower(0.9, 0.3, 1.0)
    assert fcsb_lower(0.99, 50.0, 0.25) == pytest.approx(-1.0, abs=1e-9)
    assert fcsb(1.0, 10.0, 0.25) == 1.0  # constant encoder: certified at every radius


# ---- 2.9 test 2: toy encoder, exact expectation vs brute-force deltas ------------------------------
# f_e(x) = normalize(W2 tanh(W1 x + b1)), d=2, D=3, sigma=0.5. The expectation over N(0, sigma^2 I) is
# computed with a 64x64 Gauss-Hermite product rule (deterministic common nodes) instead of the 2e5 common
# random numbers these tests need; it agrees with 2e5 MC samples to MC precision (checked below).
SIGMA = 0.5


def _toy(seed: int, gain: float, hidden: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(hidden, 2, generator=g, dtype=torch.float64) * gain,
            torch.randn(hidden, generator=g, dtype=torch.float64),
            torch.randn(3, hidden, generator=g, dtype=torch.float64))


def _quadrature(deg: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    nodes, weights = np.polynomial.hermite_e.hermegauss(deg)  # weight exp(-t^2/2)
    z = torch.tensor(np.stack(np.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2))
    w = torch.tensor(np.outer(weights, weights).reshape(-1)) / (2 * math.pi)
    return z, w


def _fhat(points: torch.Tensor, net: tuple[torch.Tensor, ...], z: torch.Tensor, w: torch.Tensor | None
          ) -> torch.Tensor:
    """``f_hat`` at ``points`` [P,2]: weighted (quadrature) or plain (MC) mean over noise ``z`` [N,2]."""
    w1, b1, w2 = net
    h = torch.tanh((points[:, None, :] + SIGMA * z[None]) @ w1.T + b1)
    f = F.normalize(h @ w2.T, dim=-1)
    return f.mean(1) if w is None else (f * w[None, :, None]).sum(1)


def test_toy_quadrature_matches_monte_carlo() -> None:
    net, (z, w) = _toy(0, 1.5), _quadrature()
    x = torch.tensor([[0.3, -0.7]], dtype=torch.float64)
    mc = _fhat(x, net, torch.randn(200_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), None)
    assert torch.allclose(_fhat(x, net, z, w), mc, atol=4e-3)  # ~3.5 MC standard errors
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("seed,gain", [(0, 1.5), (1, 3.0)])
def test_toy_bound_never_violated_exact_expectation(seed: int, gain: float) -> None:
    net, (z, w) = _toy(seed, gain), _quadrature()
    xs = torch.randn(10, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(10 + seed)) * 1.5
    angles = torch.linspace(0, 2 * math.pi, 33, dtype=torch.float64)[:-1]
    ring = torch.stack([angles.cos(), angles.sin()], 1)
    disk = torch.cat([ring * f for f in (1.0, 0.6, 0.3)])  # dense grid of the unit disk
    checked = abstained = 0
    for x in xs:
        fh = _fhat(x[None], net, z, w)[0]
        s, u = float(fh.norm()), fh / fh.norm()
        for eps in (0.05, 0.1, 0.25, 0.5, 1.0):
            worst = float(F.cosine_similarity(_fhat(x + eps * disk, net, z, w), u[None], dim=1).min())
            b = fcsb(s, eps, SIGMA)
            if b == ABSTAIN:
                abstained += 1
                continue
            checked += 1
            assert worst >= b - 1e-3, (x.tolist(), eps, s, worst, b)
    assert checked >= 25
    if gain > 2:
        assert abstained > 0  # the sharper encoder also exercises L < 0 (reported as abstain)


@pytest.mark.slow
def test_toy_pgd_on_mc_smoothed_encoder_fixed_noise() -> None:
    """PGD (l2) on the MC-smoothed toy encoder with fixed noise; the found deltas, scored with the exact
    expectation, never beat the bound."""
    net, (zq, wq) = _toy(1, 3.0), _quadrature()
    z = torch.randn(4_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    xs = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    fh = _fhat(xs, net, zq, wq)
    s, u = fh.norm(dim=1), F.normalize(fh, dim=1)
    seen_negative_l = False
    for eps in (0.1, 0.5, 1.0):
        delta = (torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 1e-3)
        delta.requires_grad_(True)
        for _ in range(20):
            cos = F.cosine_similarity(_fhat(xs + delta, net, z, None), u, dim=1)
            (g,) = torch.autograd.grad(cos.sum(), delta)
            with torch.no_grad():
                delta -= 0.1 * eps * g / (g.norm(dim=1, keepdim=True) + 1e-12)
                delta *= (eps / delta.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
        with torch.no_grad():
            exact = F.cosine_similarity(_fhat(xs + delta, net, zq, wq), u, dim=1)
        for i in range(8):
            lo = fcsb_lower(float(s[i]), eps, SIGMA)
            seen_negative_l |= lo < 0
            if lo >= 0:
                assert float(exact[i]) >= lo - 1e-4, (i, eps, float(exact[i]), lo)
    assert seen_negative_l  # the sweep covers abstentions too


# ---- 2.9 test 4: degenerate encoders --------------------------------------------------------------
def test_constant_encoder_certifies_everything() -> None:
    enc = lambda p: torch.ones(len(p), 5)  # noqa: E731
    cert = certify_fs(enc, torch.rand(2, 3, 4, 4), sigma=0.25, n0=8, n=500, alpha=0.001, radii=(0.0, 0.5, 5.0))
    assert torch.allclose(cert.s_hat, torch.ones(2, dtype=torch.float64), atol=1e-6)
    assert float(cert.s_lo[0]) == pytest.approx(hoeffding_lower(1.0, 500, 0.001), abs=1e-6)
    assert all(fcsb(1.0, r, 0.25) == 1.0 for r in (0.0, 0.5, 5.0))  # exact S = 1 -> FCSB = 1
    assert torch.allclose(cert.fcsb[:, 0], cert.s_lo)


def test_random_sign_encoder_abstains() -> None:
    g = torch.Generator().manual_seed(0)
    enc = lambda p: torch.randint(0, 2, (len(p), 64), generator=g).float() * 2 - 1  # noqa: E731
    cert = certify_fs(enc, torch.rand(3, 3, 4, 4), sigma=0.25, n0=32, n=2000, alpha=0.001, radii=(0.0, 0.1, 1.0))
    assert torch.all(cert.s_hat.abs() < 0.05)
    assert torch.all(cert.fcsb == ABSTAIN)


# ---- 2.9 test 5: confidence ---------------------------------------------------------------------
def test_confidence_bounds_behave() -> None:
    assert hoeffding_lower(0.9, 100, 0.001) == pytest.approx(0.9 - 0.3717, abs=1e-4)  # 2.5 width table
    assert hoeffding_lower(0.9, 10_000, 0.001) == pytest.approx(0.9 - 0.0372, abs=1e-4)
    widths = [0.9 - hoeffding_lower(0.9, n, 0.001) for n in (100, 1000, 10**4, 10**5, 10**7)]
    assert all(a > b for a, b in zip(widths, widths[1:])) and widths[-1] < 1.2e-3
    assert hoeffding_lower(0.9, 1000, 1e-6) < hoeffding_lower(0.9, 1000, 1e-3) < hoeffding_lower(0.9, 1000, 0.1)
    assert bernstein_lower(0.9, 0.01, 1000, 1e-6) < bernstein_lower(0.9, 0.01, 1000, 1e-3)
    assert 0.9 - bernstein_lower(0.9, 0.01, 10**7, 0.001) < 1e-3
    assert bernstein_lower(0.9, 0.001, 1000, 0.001) > hoeffding_lower(0.9, 1000, 0.001)  # low variance helps
    # through the MC loop: S_lo approaches S_hat as n grows
    g = torch.Generator().manual_seed(0)
    enc = lambda p: p.flatten(1)[:, :8] + 0.0 * p.sum()  # noqa: E731
    x = torch.rand(1, 3, 4, 4) + 2.0
    gaps = [float((c.s_hat - c.s_lo)[0]) for c in
            (certify_fs(enc, x, sigma=0.25, n0=16, n=n, alpha=0.001, radii=(0.1,), generator=g) for n in (100, 4000))]
    assert gaps[0] > gaps[1] > 0


# ---- 2.9 test 6: scale invariance -----------------------------------------------------------------
def test_scaling_pixels_sigma_and_eps_together_leaves_fcsb_unchanged() -> None:
    w = torch.randn(48, 16, generator=torch.Generator().manual_seed(0))
    enc = lambda p: torch.tanh(p.flatten(1) @ w)  # noqa: E731
    x, c = torch.rand(2, 3, 4, 4), 3.0
    a = certify_fs(enc, x, sigma=0.25, n0=16, n=300, alpha=0.001, radii=(0.1, 0.25),
                   generator=torch.Generator().manual_seed(5))
    b = certify_fs(lambda p: enc(p / c), x * c, sigma=0.25 * c, n0=16, n=300, alpha=0.001, radii=(0.1 * c, 0.25 * c),
                   generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a.s_hat, b.s_hat, atol=1e-5) and torch.allclose(a.fcsb, b.fcsb, atol=1e-5)


# ---- 2.13 prediction-wise certificate ---------------------------------------------------------------
def test_prediction_certificate_zero_budget_is_argmax_and_radius_monotone_in_margin() -> None:
    anchors = torch.eye(3)
    u = F.normalize(torch.tensor([[1.0, 0.2, 0.1], [0.2, 1.0, 0.9], [0.1, 0.3, 1.0]]), dim=1)
    pc = certify_prediction(u, anchors, torch.ones(3, 1))
    assert pc.pred.tolist() == [0, 1, 2] and pc.certified.all()
    assert not certify_prediction(u, anchors, torch.full((3, 1), float("nan"))).certified.any()
    assert not certify_prediction(u, anchors, torch.full((3, 1), ABSTAIN)).certified.any()
    # u between two anchors at growing margin -> the largest certified radius grows
    radii = torch.linspace(0, 1.0, 201).tolist()
    s, sigma, best = 0.98, 0.25, []
    for frac in (0.52, 0.6, 0.75, 0.9):
        v = F.normalize(torch.tensor([[frac, 1 - frac, 0.0]]), dim=1)
        bounds = torch.tensor([[fcsb(s, r, sigma) for r in radii]])
        ok = certify_prediction(v, anchors, bounds).certified[0]
        assert ok.tolist() == sorted(ok.tolist(), reverse=True)  # certified set is an interval from 0
        best.append(radii[int(ok.sum()) - 1] if ok.any() else -1.0)
    assert best == sorted(best) and best[-1] > best[0]
