"""FCSB certificates for feature-space smoothing (methods.md 2.3-2.5, 2.13). Pure math + MC loop.

Everything here is model-free except :func:`certify_fs`, which only needs a feature function
``encoder(pixels [k,C,H,W]) -> [k,...]`` (the composite ``normalize(M(E(P(.))))`` encoder, or the
bare one). Paper: Xia et al., arXiv 2601.16200 (FS / PSM). The bound and the two-stage Monte
Carlo procedure are [DERIVED] in methods.md 2.4-2.5 (Salman et al. 2019 Lemma 2 applied to
``(1 + <u, f_e>)/2``; Cohen et al. 2019 CERTIFY for the selection / estimation split).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_N = NormalDist()
ABSTAIN = -1.0  # paper convention (2.3): a negative L is no certificate; tables store NaN + abstain=True


def phi(v: float) -> float:
    """Standard normal CDF (``inf`` -> 1)."""
    return 1.0 if v == math.inf else 0.0 if v == -math.inf else _N.cdf(v)


def phi_inv(p: float) -> float:
    """Inverse standard normal CDF on [0,1] (0 -> -inf, 1 -> +inf)."""
    if p >= 1.0:
        return math.inf
    if p <= 0.0:
        return -math.inf
    return _N.inv_cdf(p)


def _shift(score: float, eps: float, sigma: float) -> float:
    """``2 Phi(Phi^{-1}((1+S)/2) + eps/sigma) - 1``; S is clipped to [-1,1]."""
    if sigma <= 0:
        raise ValueError(f"sigma={sigma} must be > 0")
    s = min(1.0, max(-1.0, float(score)))
    return 2.0 * phi(phi_inv((1.0 + s) / 2.0) + eps / sigma) - 1.0


def fcsb_lower(score: float, eps: float, sigma: float) -> float:
    """Raw ``L(S, eps/sigma) = 2 Phi(Phi^{-1}((1+S)/2) - eps/sigma) - 1`` (may be negative)."""
    return _shift(score, -float(eps), sigma)


def fcsb_upper(score: float, eps: float, sigma: float) -> float:
    """``U(S, eps/sigma) = 2 Phi(Phi^{-1}((1+S)/2) + eps/sigma) - 1``: bound on ``||f_hat(x+delta)||``."""
    return _shift(score, float(eps), sigma)


def fcsb(score: float, eps: float, sigma: float) -> float:
    """FCSB (methods 2.3): ``cos(f_hat(x), f_hat(x+delta)) >= L`` for all ``||delta||_2 <= eps``.

    Args:
        score: Gaussian robustness score S in [0,1] (pass the lower confidence bound ``S_lo``).
        eps: l2 radius in pixel units. sigma: smoothing std in the same units.

    Returns:
        L when ``L >= 0``; else ``ABSTAIN`` (-1): no non-trivial certificate exists.
    """
    lo = fcsb_lower(score, eps, sigma)
    return lo if lo >= 0 else ABSTAIN


def fcsb_tight(score_lo: float, score_hi: float, eps: float, sigma: float) -> float:
    """Tight variant ``L(S_lo) / U(S_hi)`` (methods 2.3-2.4 [DERIVED]); 1 at eps=0 when S_lo=S_hi.

    ``score_hi`` upper-bounds ``||f_hat(x)||`` (clipped to 1). Returns ``ABSTAIN`` when L < 0.
    """
    lo = fcsb_lower(score_lo, eps, sigma)
    if lo < 0:
        return ABSTAIN
    up = fcsb_upper(min(1.0, max(score_hi, score_lo)), eps, sigma)
    return min(1.0, lo / up) if up > 0 else ABSTAIN


# ---- confidence bounds --------------------------------------------------------------------------
def hoeffding_lower(mean: float, n: int, alpha: float, width: float = 2.0) -> float:
    """One-sided Hoeffding lower bound on E[c] for c in an interval of ``width`` (2 for cosines)."""
    return mean - width * math.sqrt(math.log(1.0 / alpha) / (2.0 * n))


def bernstein_lower(mean: float, var: float, n: int, alpha: float, width: float = 2.0) -> float:
    """Empirical-Bernstein lower bound (Maurer & Pontil 2009, Thm 4) for values in a ``width`` range.

    ``var`` is the unbiased sample variance; with ``width`` = 2 this is methods 2.5's formula.
    """
    if n < 2:
        return -math.inf
    log_t = math.log(2.0 / alpha)
    return mean - math.sqrt(2.0 * var * log_t / n) - 7.0 * width * log_t / (3.0 * (n - 1))


def norm_upper(mean_norm: float, n: int, alpha: float) -> float:
    """Upper bound on ``||f_hat(x)||`` from ``||mean of n unit vectors||`` (McDiarmid, methods 2.5)."""
    return min(1.0, mean_norm + (1.0 + math.sqrt(2.0 * math.log(1.0 / alpha))) / math.sqrt(n))


# ---- Monte Carlo certification ------------------------------------------------------------------
Encoder = Callable[[Tensor], Tensor]


class FSCertificate(NamedTuple):
    """Per-input results of :func:`certify_fs` (``B`` inputs, ``R`` radii).

    ``fcsb``/``fcsb_tight``: ``[B,R]`` float64, ``ABSTAIN`` (-1) where no certificate;
    ``u``: ``[B,D]`` reference directions; ``s_hat``, ``s_lo``, ``s_hi``: ``[B]``.
    """

    radii: tuple[float, ...]
    s_hat: Tensor
    s_lo: Tensor
    s_hi: Tensor
    fcsb: Tensor
    fcsb_tight: Tensor
    u: Tensor


def unit_features(encoder: Encoder, pixels: Tensor) -> Tensor:
    """``f_e`` = flattened encoder output divided by its l2 norm, ``[k,D]`` float32."""
    return F.normalize(encoder(pixels).flatten(1).float(), dim=-1)


def sample_unit_features(encoder: Encoder, x: Tensor, sigma: float, k: int, generator: torch.Generator,
                         chunk: int = 256) -> Tensor:
    """``[k,D]`` unit features of ``x + sigma z`` (``x``: one image ``[C,H,W]``), noise drawn on CPU."""
    out = []
    for start in range(0, k, chunk):
        m = min(chunk, k - start)
        z = torch.randn((m, *x.shape), generator=generator).to(device=x.device, dtype=x.dtype)
        out.append(unit_features(encoder, x.unsqueeze(0) + sigma * z))
    return torch.cat(out)


def certify_fs(encoder: Encoder, x: Tensor, *, sigma: float, n0: int, n: int, alpha: float,
               radii: Sequence[float], bound: str = "hoeffding", generator: torch.Generator | None = None,
               chunk: int = 256) -> FSCertificate:
    """CERTIFY_FS of methods 2.5 on a batch ``x`` ``[B,C,H,W]`` (pixels in [0,1]).

    Stage 1 draws ``n0`` samples for the direction ``u``; stage 2 draws ``n`` fresh samples for
    ``S_hat = mean <u, f_e>`` and its lower confidence bound (``hoeffding`` or ``bernstein``).
    ``fcsb`` uses ``S_lo`` at level ``alpha``; ``fcsb_tight`` splits ``alpha`` in halves between
    ``S_lo`` and the upper bound on ``||f_hat||``. Each quantity holds with probability
    ``>= 1 - alpha`` per input: ``cos(u, f_hat(x + delta)) >= bound`` for all ``||delta|| <= r``.
    """
    if bound not in ("hoeffding", "bernstein"):
        raise ValueError(f"bound={bound!r} must be hoeffding or bernstein")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    radii = tuple(float(r) for r in radii)
    rows: list[tuple[float, float, float, list[float], list[float], Tensor]] = []
    for i in range(len(x)):
        u = F.normalize(sample_unit_features(encoder, x[i], sigma, n0, gen, chunk).mean(0), dim=0)
        feats = sample_unit_features(encoder, x[i], sigma, n, gen, chunk).double()
        c = feats @ u.double()
        s_hat, var = float(c.mean()), float(c.var()) if n > 1 else 0.0
        s_lo = _lower(s_hat, var, n, alpha, bound)
        s_lo_half = _lower(s_hat, var, n, alpha / 2, bound)
        s_hi = norm_upper(float(feats.mean(0).norm()), n, alpha / 2)
        rows.append((s_hat, s_lo, s_hi, [fcsb(s_lo, r, sigma) for r in radii],
                     [fcsb_tight(s_lo_half, s_hi, r, sigma) for r in radii], u))
    t = lambda j: torch.tensor([r[j] for r in rows], dtype=torch.float64)  # noqa: E731
    return FSCertificate(radii, t(0), t(1), t(2), t(3).view(len(x), len(radii)),
                         t(4).view(len(x), len(radii)), torch.stack([r[5] for r in rows]) if rows else x.new_zeros(0))


def _lower(mean: float, var: float, n: int, alpha: float, bound: str) -> float:
    return hoeffding_lower(mean, n, alpha) if bound == "hoeffding" else bernstein_lower(mean, var, n, alpha)


# ---- prediction-wise certificate (methods 2.13) -------------------------------------------------
class PredictionCertificate(NamedTuple):
    """``pred`` ``[B]`` = argmax_c cos(u, t_c); ``certified`` ``[B,R]`` bool."""

    pred: Tensor
    certified: Tensor


def certify_prediction(u: Tensor, anchors: Tensor, bounds: Tensor) -> PredictionCertificate:
    """Certify ``argmax_c cos(f_hat(x+delta), t_c)`` from an angle budget (methods 2.13 [DERIVED]).

    Args:
        u: ``[B,D]`` reference directions (unit). anchors: ``[C,D]`` class embeddings (normalised here).
        bounds: ``[B,R]`` cosine bounds ``cos(u, f_hat(x+delta)) >= bound``; ``ABSTAIN`` / NaN / < 0
            means no certificate.

    The prediction y is certified at a radius iff
    ``cos(min(pi, theta_y + theta_B)) > max_{c != y} cos(max(0, theta_c - theta_B))``.
    """
    t = F.normalize(anchors.double(), dim=-1)
    cos = (F.normalize(u.double(), dim=-1) @ t.T).clamp(-1, 1)  # [B,C]
    pred = cos.argmax(dim=1)
    theta = torch.arccos(cos)  # [B,C]
    b = bounds.double()
    valid = torch.isfinite(b) & (b >= 0)
    theta_b = torch.arccos(b.clamp(0, 1))  # [B,R]
    theta_y = theta.gather(1, pred.view(-1, 1))  # [B,1]
    worst_y = torch.cos((theta_y + theta_b).clamp(max=math.pi))  # [B,R]
    best_other = torch.cos((theta.unsqueeze(1) - theta_b.unsqueeze(-1)).clamp(min=0.0))  # [B,R,C]
    is_y = torch.nn.functional.one_hot(pred, theta.shape[1]).bool().unsqueeze(1)
    best_other = best_other.masked_fill(is_y, -math.inf).amax(dim=2)
    certified = (worst_y > best_other) & valid
    return PredictionCertificate(pred, certified)
