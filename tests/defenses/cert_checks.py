"""Certificate checks shared by the real tests and the mutation tests (which break the certificate
on purpose and assert that these checks notice).

``coverage_violations``: the FS lower confidence bound must hold. A threshold encoder in two input
dimensions, ``f_e(x) = (+1, 0)`` if ``x_1 > 0`` else ``(-1, 0)``, has the exact smoothed feature
``f_hat(x) = (2 Phi(x_1 / sigma) - 1, 0)`` at the declared pixel-unit ``sigma``, so the exact value
``<u, f_hat(x)>`` that ``S_lo`` bounds (and ``FCSB`` at radius 0 equals) is known in closed form.
Its cosines are +-1, the largest variance a cosine can have, so a confidence bound that is too
narrow shows up. Many independent certifications (one batched call, one seed per copy) are
counted: a sound bound is above the exact value in at most about ``alpha`` of them.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

# CLIP's per-channel pixel std (OpenAI preprocessing): what "sigma in normalised units" would scale by
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def threshold_encoder(p: torch.Tensor) -> torch.Tensor:
    """``[k,2,1,1] -> [k,2]``: ``(+1, 0)`` where ``x_1 > 0`` else ``(-1, 0)``."""
    s = torch.where(p[:, 0, 0, 0] > 0, 1.0, -1.0)
    return torch.stack([s, torch.zeros_like(s)], dim=1)


def exact_score(x1: float, sigma: float) -> float:
    """``||f_hat(x)||`` of the threshold encoder at pixel-unit ``sigma``."""
    return abs(2.0 * NormalDist().cdf(x1 / sigma) - 1.0)


def coverage_violations(*, x1: float = 0.05, sigma: float = 0.25, n: int = 400, trials: int = 2000,
                        alpha: float = 0.001, bound: str = "hoeffding", seed: int = 0) -> tuple[int, int]:
    """``(violations, allowed)``: how many of ``trials`` certifications put ``FCSB(radius 0) = S_lo``
    above the exact ``<u, f_hat(x)>``, and how many a sound bound may (``alpha`` plus slack)."""
    from robustbench_mm.defenses.fs_psm.certify import ABSTAIN, certify_fs

    x = torch.zeros(trials, 2, 1, 1)
    x[:, 0] = x1
    cert = certify_fs(threshold_encoder, x, sigma=sigma, n0=32, n=n, alpha=alpha, radii=(0.0,), bound=bound,
                      seeds=[seed * 1_000_003 + i for i in range(trials)], chunk=trials * max(n, 32))
    s = exact_score(x1, sigma)
    exact = cert.u[:, 0].double() * s  # <u, f_hat(x)> with f_hat(x) = (+-s, 0) (the sign of 2 Phi - 1)
    exact = exact * (1.0 if x1 >= 0 else -1.0)
    value = cert.fcsb[:, 0]
    claimed = value != ABSTAIN
    violations = int((claimed & (value > exact + 1e-9)).sum())
    allowed = max(2, math.ceil(5 * alpha * trials))
    return violations, allowed
