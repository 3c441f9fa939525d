"""Certificates are tested by checks that can fail: each mutation below breaks the FS certificate the
way a plausible bug would, and the same check the real test runs must then report violations.

Mutations: FCSB computed from the point estimate ``S_hat`` instead of the lower bound ``S_lo``;
``sigma`` taken in normalised units (the noise is scaled by CLIP's pixel std while the bound still
uses the pixel-unit sigma); the confidence-bound width halved (Hoeffding and empirical Bernstein).
"""

from __future__ import annotations

import math

import pytest
import torch

from cert_checks import CLIP_STD, coverage_violations
from robustbench_mm.defenses.fs_psm import certify as C


@pytest.mark.parametrize("bound,n", [("hoeffding", 400), pytest.param("bernstein", 4000, marks=pytest.mark.slow)])
def test_sound_certificate_passes_the_coverage_check(bound: str, n: int) -> None:
    violations, allowed = coverage_violations(bound=bound, n=n)
    assert violations <= allowed, (bound, violations, allowed)


def test_mutation_fcsb_from_point_estimate_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(C, "lower_bound", lambda mean, var, n, alpha, bound: mean)  # S_lo := S_hat
    violations, allowed = coverage_violations()
    assert violations > allowed, (violations, allowed)


def test_mutation_sigma_in_normalised_units_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    draw = C._NoiseStream.draw
    std = torch.tensor(CLIP_STD[:2]).view(1, 1, 2, 1, 1)

    def normalised(self: C._NoiseStream, m: int) -> torch.Tensor:  # pixel noise = sigma * std * z
        return draw(self, m) * std

    monkeypatch.setattr(C._NoiseStream, "draw", normalised)
    violations, allowed = coverage_violations()
    assert violations > allowed, (violations, allowed)


@pytest.mark.parametrize("bound,n", [("hoeffding", 400), pytest.param("bernstein", 4000, marks=pytest.mark.slow)])
def test_mutation_halved_confidence_width_is_caught(monkeypatch: pytest.MonkeyPatch, bound: str, n: int) -> None:
    hoeffding, bernstein = C.hoeffding_lower, C.bernstein_lower
    monkeypatch.setattr(C, "hoeffding_lower", lambda mean, n, alpha, width=2.0:
                        mean - (mean - hoeffding(mean, n, alpha, width)) / 2)
    monkeypatch.setattr(C, "bernstein_lower", lambda mean, var, n, alpha, width=2.0:
                        mean - (mean - bernstein(mean, var, n, alpha, width)) / 2)
    violations, allowed = coverage_violations(bound=bound, n=n)
    assert violations > allowed, (bound, violations, allowed)


def test_threshold_encoder_exact_score_matches_monte_carlo() -> None:
    """The check's closed form is right: a large plain MC estimate agrees with it."""
    from cert_checks import exact_score, threshold_encoder

    z = torch.randn(200_000, 2, 1, 1, generator=torch.Generator().manual_seed(0))
    x = torch.zeros(1, 2, 1, 1)
    x[:, 0] = 0.05
    mc = float(threshold_encoder(x + 0.25 * z).mean(0)[0])
    assert mc == pytest.approx(exact_score(0.05, 0.25), abs=4 * math.sqrt(1 / 200_000))
