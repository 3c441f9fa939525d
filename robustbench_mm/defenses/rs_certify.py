"""Randomized-smoothing class certificates (Cohen, Rosenfeld & Kolter 2019): CERTIFY and PREDICT.

The smoothed classifier is ``g(x) = argmax_c P(f(x + d) = c)``, ``d ~ N(0, sigma^2 I)``, with ``f`` the
argmax of a logit function on *pixels*: ``sigma`` is in the units of the tensor handed to
``logit_fn`` (for the zoo and the CLIP adapters: [0,1] pixels, before any normalisation inside the
model). No clamping of ``x + d``: clamping would certify ``f o clamp`` instead.

CERTIFY (per image): ``n0`` selection draws pick ``c_A``; ``n`` *fresh* draws count ``k`` hits of
``c_A``; ``p_lower`` is the one-sided ``1 - alpha`` Clopper--Pearson lower bound of ``k/n``; the radius
is ``sigma * Phi^{-1}(p_lower)``, and the sample abstains when ``p_lower <= 1/2``. With probability
``>= 1 - alpha`` (per image) the *exact* smoothed classifier returns ``c_A`` on the whole l2 ball of
that radius. PREDICT returns ``c_A`` when the two-sided binomial test of ``n_A`` against ``n_A + n_B``
at ``p = 1/2`` has p-value ``<= alpha`` (else abstains): it errs with probability ``<= alpha``.

Noise is drawn on the inputs' device; the draws of several images share one forward pass
(``batch_size`` noisy images per call), and image ``i``'s noise comes from its own generator
(seeded by ``seeds[i]``), so its certificate does not depend on which images share the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Sequence

import torch
from scipy.stats import beta, binomtest
from torch import Tensor

LogitFn = Callable[[Tensor], Tensor]  # pixels [k,C,H,W] -> logits [k,num_classes]
ABSTAIN = -1


@dataclass(frozen=True)
class RSCertificate:
    """Per image (CPU tensors, ``[B]``): ``prediction`` (``-1`` = abstain), ``radius`` (l2, input
    units; 0 when abstaining), ``abstain``, ``p_lower``, ``count`` (hits of ``c_A`` in the ``n`` draws)."""

    prediction: Tensor
    radius: Tensor
    abstain: Tensor
    p_lower: Tensor
    count: Tensor
    sigma: float
    n0: int
    n: int
    alpha: float

    def certified_at(self, labels: Tensor, radius: float) -> Tensor:
        """``bool[B]``: not abstained, correct, and certified radius ``> radius``."""
        return ~self.abstain & (self.prediction == labels.cpu().long()) & (self.radius > float(radius))


def check_budget(sigma: float, n0: int, n: int, alpha: float, batch_size: int) -> None:
    if not sigma > 0:
        raise ValueError(f"sigma={sigma} must be > 0 (noise std in the model's input units, e.g. 0.25)")
    if min(n0, n, batch_size) <= 0:
        raise ValueError(f"n0={n0}, n={n}, batch_size={batch_size} must be positive integers")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} must be in (0, 1), e.g. 0.001")


def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided ``1 - alpha`` lower confidence bound on a binomial proportion from ``k`` of ``n``."""
    return 0.0 if k <= 0 else float(beta.ppf(alpha, k, n - k + 1))


def generators(seeds: Sequence[int] | None, b: int, device: torch.device) -> list[torch.Generator] | None:
    """One generator per image on ``device`` (``None``: the global RNG, one launch per chunk)."""
    if seeds is None:
        return None
    if len(seeds) != b:
        raise ValueError(f"{len(seeds)} seeds for {b} images; pass one seed per image")
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def _noise(x: Tensor, m: int, gens: list[torch.Generator] | None) -> Tensor:
    if gens is None:
        return torch.randn((len(x), m, *x.shape[1:]), device=x.device, dtype=x.dtype)
    z = torch.empty((len(x), m, *x.shape[1:]), device=x.device, dtype=x.dtype)
    for i, g in enumerate(gens):
        torch.randn((m, *x.shape[1:]), generator=g, out=z[i])
    return z


@torch.no_grad()
def class_counts(logit_fn: LogitFn, x: Tensor, sigma: float, draws: Sequence[int], batch_size: int,
                 gens: list[torch.Generator] | None) -> list[Tensor]:
    """Per stage ``s``, ``[B, num_classes]`` counts of ``argmax logit_fn(x_i + sigma z)`` over
    ``draws[s]`` draws per image. The stages take consecutive, disjoint draws of each image's noise
    stream (fresh noise for each stage) but share forward passes, so a small batch still fills
    ``batch_size`` noisy images per call."""
    b, total = len(x), sum(draws)
    bounds = torch.tensor([0, *draws]).cumsum(0).tolist()  # stage s owns draws [bounds[s], bounds[s+1])
    per = max(1, batch_size // b)
    counts: list[Tensor] = []
    done = 0
    while done < total:
        m = min(per, total - done)
        noisy = (x.unsqueeze(1) + sigma * _noise(x, m, gens)).reshape(b * m, *x.shape[1:])
        logits = logit_fn(noisy)
        top = logits.argmax(-1).view(b, m)
        if not counts:
            counts = [torch.zeros((b, int(logits.shape[-1])), dtype=torch.long, device=x.device) for _ in draws]
        for s, c in enumerate(counts):
            lo, hi = max(bounds[s], done) - done, min(bounds[s + 1], done + m) - done
            if hi > lo:
                c.scatter_add_(1, top[:, lo:hi], torch.ones_like(top[:, lo:hi]))
        done += m
    return [c.cpu() for c in counts]


def certify(logit_fn: LogitFn, x: Tensor, *, sigma: float, n0: int = 100, n: int = 2000, alpha: float = 0.001,
            batch_size: int = 1024, seeds: Sequence[int] | None = None) -> RSCertificate:
    """CERTIFY for a batch of images ``x`` ``[B,C,H,W]`` (see the module docstring)."""
    check_budget(sigma, n0, n, alpha, batch_size)
    gens = generators(seeds, len(x), x.device)
    selection, estimation = class_counts(logit_fn, x, sigma, (n0, n), batch_size, gens)
    c_a = selection.argmax(1)  # chosen on the selection draws only
    hits = estimation.gather(1, c_a.unsqueeze(1)).squeeze(1)
    p_lower = torch.tensor([clopper_pearson_lower(int(k), n, alpha) for k in hits], dtype=torch.float64)
    abstain = p_lower <= 0.5
    gauss = NormalDist()
    radius = torch.tensor([sigma * gauss.inv_cdf(min(float(p), 1 - 1e-16)) if not a else 0.0
                           for p, a in zip(p_lower, abstain)], dtype=torch.float64)
    pred = torch.where(abstain, torch.full_like(c_a, ABSTAIN), c_a)
    return RSCertificate(pred, radius, abstain, p_lower, hits, sigma, n0, n, alpha)


def predict(logit_fn: LogitFn, x: Tensor, *, sigma: float, n: int = 256, alpha: float = 0.001,
            batch_size: int = 1024, seeds: Sequence[int] | None = None) -> Tensor:
    """PREDICT: ``long[B]`` smoothed predictions, ``-1`` where the binomial test does not reject."""
    check_budget(sigma, 1, n, alpha, batch_size)
    counts = class_counts(logit_fn, x, sigma, (n,), batch_size, generators(seeds, len(x), x.device))[0]
    top2 = counts.topk(min(2, counts.shape[1]), dim=1)
    out = torch.full((len(x),), ABSTAIN, dtype=torch.long)
    for i in range(len(x)):
        n_a = int(top2.values[i, 0])
        n_b = int(top2.values[i, 1]) if counts.shape[1] > 1 else 0
        if binomtest(n_a, n_a + n_b, 0.5).pvalue <= alpha:
            out[i] = int(top2.indices[i, 0])
    return out
