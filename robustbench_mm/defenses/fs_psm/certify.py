"""FCSB certificates for feature-space smoothing (docs/methods.md). Pure math + MC loop.

Everything here is model-free except :func:`certify_fs`, which only needs a feature function
``encoder(pixels [k,C,H,W]) -> [k,...]`` (the composite ``normalize(M(E(P(.))))`` encoder, or the
bare one). Paper: Xia et al., arXiv 2601.16200 (FS / PSM). The bound and the two-stage Monte
Carlo procedure are [DERIVED] in docs/methods.md (Salman et al. 2019 Lemma 2 applied to
``(1 + <u, f_e>)/2``; Cohen et al. 2019 CERTIFY for the selection / estimation split).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, Iterator, NamedTuple, Sequence

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
    """FCSB (docs/methods.md): ``cos(f_hat(x), f_hat(x+delta)) >= L`` for all ``||delta||_2 <= eps``.

    Args:
        score: Gaussian robustness score S in [0,1] (pass the lower confidence bound ``S_lo``).
        eps: l2 radius in pixel units. sigma: smoothing std in the same units.

    Returns:
        L when ``L >= 0``; else ``ABSTAIN`` (-1): no non-trivial certificate exists.
    """
    lo = fcsb_lower(score, eps, sigma)
    return lo if lo >= 0 else ABSTAIN


# ---- confidence bounds --------------------------------------------------------------------------
def hoeffding_lower(mean: float, n: int, alpha: float, width: float = 2.0) -> float:
    """One-sided Hoeffding lower bound on E[c] for c in an interval of ``width`` (2 for cosines)."""
    return mean - width * math.sqrt(math.log(1.0 / alpha) / (2.0 * n))


def bernstein_lower(mean: float, var: float, n: int, alpha: float, width: float = 2.0) -> float:
    """Empirical-Bernstein lower bound (Maurer & Pontil 2009, Thm 4) for values in a ``width`` range.

    ``var`` is the unbiased sample variance; with ``width`` = 2 this is the formula of docs/certificates.md.
    """
    if n < 2:
        return -math.inf
    log_t = math.log(2.0 / alpha)
    return mean - math.sqrt(2.0 * var * log_t / n) - 7.0 * width * log_t / (3.0 * (n - 1))


# ---- Monte Carlo certification ------------------------------------------------------------------
Encoder = Callable[[Tensor], Tensor]


class FSCertificate(NamedTuple):
    """Per-input results of :func:`certify_fs` (``B`` inputs, ``R`` radii).

    ``fcsb``: ``[B,R]`` float64, ``ABSTAIN`` (-1) where no certificate; ``u``: ``[B,D]`` reference
    directions; ``s_hat``, ``s_lo``: ``[B]`` float64 (point estimate and lower confidence bound of S).

    There is no "tight" variant: ``L(S_lo) / U(S_hi)`` divides by an upper bound on the smoothed
    feature norm, which is within a few 1e-3 of 1 whenever S is high enough to certify anything, and
    its own confidence bound costs half of ``alpha``; measured on clip-tiny it was never tighter.
    """

    radii: tuple[float, ...]
    s_hat: Tensor
    s_lo: Tensor
    fcsb: Tensor
    u: Tensor


def unit_features(encoder: Encoder, pixels: Tensor) -> Tensor:
    """``f_e`` = flattened encoder output divided by its l2 norm, ``[k,D]`` float32."""
    return F.normalize(encoder(pixels).flatten(1).float(), dim=-1)


def noise_generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    """One generator per input, on ``device``: an input's noise depends on its seed only, never on
    which other inputs share the batch."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


class _NoiseStream:
    """Draws ``[B, m, C, H, W]`` Gaussian noise on the inputs' device, input ``i`` from ``gens[i]``.

    The encoder sees one batch of ``B*m`` noisy copies per call; drawing the noise costs one
    ``randn`` launch per input and chunk (no host transfer), the forward pass is shared.
    """

    def __init__(self, x: Tensor, gens: Sequence[torch.Generator]) -> None:
        self.x, self.gens = x, gens

    def draw(self, m: int) -> Tensor:
        b = len(self.x)
        z = torch.empty((b, m, *self.x.shape[1:]), device=self.x.device, dtype=self.x.dtype)
        for i in range(b):
            torch.randn((m, *self.x.shape[1:]), generator=self.gens[i], out=z[i])
        return z


def _draws(encoder: Encoder, x: Tensor, sigma: float, k: int, noise: _NoiseStream, chunk: int
           ) -> "Iterator[Tensor]":
    """Yields ``[B, m, D]`` unit features of ``x_i + sigma z`` until ``k`` draws per input are done;
    each encoder call takes about ``chunk`` noisy images across all inputs."""
    b = len(x)
    per = max(1, chunk // max(1, b))
    done = 0
    while done < k:
        m = min(per, k - done)
        z = noise.draw(m)
        noisy = (x.unsqueeze(1) + sigma * z).reshape(b * m, *x.shape[1:])
        yield unit_features(encoder, noisy).view(b, m, -1)
        done += m


def auto_chunk(device: torch.device) -> int:
    """Noisy images per encoder call: 256 on CPU (measured on clip-tiny, one thread: 2,300-3,400
    forwards/s at 256 against 1,350-1,930 at 1,024), 4,096 on accelerators, which want large batches."""
    return 256 if device.type == "cpu" else 4096


def sample_unit_features(encoder: Encoder, x: Tensor, sigma: float, k: int, generator: torch.Generator,
                         chunk: int = 256) -> Tensor:
    """``[k,D]`` unit features of ``x + sigma z`` for one image ``x`` ``[C,H,W]``."""
    stream = _NoiseStream(x.unsqueeze(0), [generator])
    return torch.cat([f[0] for f in _draws(encoder, x.unsqueeze(0), sigma, k, stream, chunk)])


def certify_fs(encoder: Encoder, x: Tensor, *, sigma: float, n0: int, n: int, alpha: float,
               radii: Sequence[float], bound: str = "hoeffding", generator: torch.Generator | None = None,
               chunk: int = 0, seeds: Sequence[int] | None = None) -> FSCertificate:
    """CERTIFY_FS on a batch ``x`` ``[B,C,H,W]`` (pixels in [0,1]), every input at once.

    Stage 1 draws ``n0`` samples per input for the direction ``u``; stage 2 draws ``n`` fresh samples
    for ``S_hat = mean <u, f_e>`` and its lower confidence bound ``S_lo`` at level ``alpha``
    (``hoeffding`` or empirical ``bernstein``). ``fcsb`` = ``L(S_lo)``: with probability
    ``>= 1 - alpha`` per input, ``cos(u, f_hat(x + delta)) >= fcsb`` for all ``||delta||_2 <= r``.

    Noise is generated on ``x``'s device, from one generator per input seeded by ``seeds[i]``
    (default: seeds drawn from ``generator``), so an input's certificate does not depend on the
    batch. Each encoder call sees about ``chunk`` noisy images across the batch (0: ``auto_chunk``).
    """
    if bound not in ("hoeffding", "bernstein"):
        raise ValueError(f"bound={bound!r} must be hoeffding or bernstein")
    radii = tuple(float(r) for r in radii)
    b = len(x)
    chunk = chunk if chunk > 0 else auto_chunk(x.device)
    if seeds is None:
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        seeds = torch.randint(0, 2**62, (b,), generator=gen).tolist()
    noise = _NoiseStream(x, noise_generators(seeds, x.device))
    total = None
    for f in _draws(encoder, x, sigma, n0, noise, chunk):
        total = f.sum(1) if total is None else total + f.sum(1)
    if total is None:
        return FSCertificate(radii, *(torch.zeros(0, dtype=torch.float64),) * 2,
                             torch.zeros(0, len(radii), dtype=torch.float64), x.new_zeros(0))
    u = F.normalize(total, dim=-1)  # [B,D]
    s1 = torch.zeros(b, dtype=torch.float64, device=x.device)
    s2 = torch.zeros_like(s1)
    for f in _draws(encoder, x, sigma, n, noise, chunk):
        c = torch.einsum("bmd,bd->bm", f.double(), u.double())
        s1 += c.sum(1)
        s2 += (c * c).sum(1)
    s_hat = (s1 / n).cpu()
    var = ((s2 - s1 * s1 / n) / max(1, n - 1)).clamp_min(0).cpu() if n > 1 else torch.zeros(b, dtype=torch.float64)
    s_lo = torch.tensor([lower_bound(float(m), float(v), n, alpha, bound) for m, v in zip(s_hat, var)],
                        dtype=torch.float64)
    cert = torch.tensor([[fcsb(float(s), r, sigma) for r in radii] for s in s_lo],
                        dtype=torch.float64).view(b, len(radii))
    return FSCertificate(radii, s_hat, s_lo, cert, u)


def lower_bound(mean: float, var: float, n: int, alpha: float, bound: str) -> float:
    """``S_lo``: the one-sided ``1 - alpha`` lower confidence bound of the chosen kind."""
    return hoeffding_lower(mean, n, alpha) if bound == "hoeffding" else bernstein_lower(mean, var, n, alpha)


# ---- prediction-wise certificate (docs/methods.md) -------------------------------------------------
class PredictionCertificate(NamedTuple):
    """``pred`` ``[B]`` = argmax_c cos(u, t_c); ``certified`` ``[B,R]`` bool."""

    pred: Tensor
    certified: Tensor


def certify_prediction(u: Tensor, anchors: Tensor, bounds: Tensor) -> PredictionCertificate:
    """Certify ``argmax_c cos(f_hat(x+delta), t_c)`` from an angle budget (docs/methods.md).

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
