"""The smoothed feature transform that plugs into ``VLM.feature_transform`` (docs/methods.md).

``f_hat(x) ~ mean_j f_e(x + sigma z_j)`` with the noise draws as a batch dimension; the result is
rescaled to the mean original norm (2.6 step 3 [BENCH]) and reshaped to the raw feature shape, so
CLIP zero-shot logits (scale-invariant) and the LLaVA / BLIP-2 LMs (``[B,N,D]`` tokens) consume it
without adapter changes. Fresh noise is drawn on every call, so a gradient through the transform is
an EOT gradient over ``n_samples`` draws (docs/methods.md).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

FeatureFn = Callable[[Tensor], Tensor]


class Plugin(Protocol):
    """Optional PSM: ``purify(noisy_pixels, sigma)`` before the encoder, ``map(raw_feats, sigma)`` after."""

    def purify(self, pixels: Tensor, sigma: float) -> Tensor: ...

    def map(self, feats: Tensor, sigma: float) -> Tensor: ...


def composite_encoder(raw: FeatureFn, sigma: float, plugin: Plugin | None) -> FeatureFn:
    """The deterministic encoder ``E_psm(x') = M(E(P(x')))`` applied to already-noisy pixels ``x'``.

    The certificate (2.3-2.5) covers ``normalize(flatten(E_psm))`` [DERIVED, 2.7]; identity when
    ``plugin`` is None.
    """
    if plugin is None:
        return raw

    def enc(noisy: Tensor) -> Tensor:
        return plugin.map(raw(plugin.purify(noisy, sigma)), sigma)

    return enc


class Smoothed(NamedTuple):
    """``direction`` ``[B,D']`` unit MC mean direction, ``norm`` ``[B]`` mean raw norm, ``s_hat`` ``[B]``."""

    direction: Tensor
    norm: Tensor
    s_hat: Tensor


def smooth_features(encoder: FeatureFn, x: Tensor, sigma: float, n: int, generator: torch.Generator,
                    chunk: int = 0) -> tuple[Smoothed, torch.Size]:
    """MC smoothing of a batch ``x`` ``[B,C,H,W]``: ``n`` noise draws per input as a batch dimension.

    ``chunk`` > 0 limits how many noise draws go through the encoder at once (memory); gradients
    still flow through every draw. Returns the smoothed parts and the per-input raw feature shape.
    """
    b = len(x)
    z = torch.randn((n, *x.shape), generator=generator).to(device=x.device, dtype=x.dtype)  # [n,B,C,H,W]
    noisy = (x.unsqueeze(0) + sigma * z).reshape(n * b, *x.shape[1:])
    step = chunk if chunk > 0 else n * b
    feats = torch.cat([encoder(noisy[i:i + step]) for i in range(0, n * b, step)])
    shape = feats.shape[1:]
    flat = feats.reshape(n, b, -1).float()
    norms = flat.norm(dim=-1)  # [n,B]
    unit = flat / norms.clamp_min(1e-12).unsqueeze(-1)
    mean = unit.mean(0)  # [B,D']
    s_hat = mean.norm(dim=-1)
    return Smoothed(mean / s_hat.clamp_min(1e-12).unsqueeze(-1), norms.mean(0), s_hat), shape


class SmoothingTransform:
    """``transform(raw_feature_fn, pixels) -> features``: the FS inference path (2.6).

    Args:
        sigma: noise std in [0,1] pixel units.
        n_samples: noise draws per input and call (``n_inf``, 2.6 [BENCH] default 32).
        plugin: optional PSM (purifier + smoothness mapper).
        generator: CPU generator for the noise (seeded per cell by the defense).
        chunk: encoder micro-batch (0 = all draws at once).
    """

    def __init__(self, sigma: float, n_samples: int, plugin: Plugin | None = None,
                 generator: torch.Generator | None = None, chunk: int = 0) -> None:
        self.sigma, self.n_samples, self.plugin, self.chunk = sigma, n_samples, plugin, chunk
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def __call__(self, raw: FeatureFn, pixels: Tensor) -> Tensor:
        enc = composite_encoder(raw, self.sigma, self.plugin)
        sm, shape = smooth_features(enc, pixels, self.sigma, self.n_samples, self.generator, self.chunk)
        out = sm.direction * sm.norm.unsqueeze(-1)  # LM consumers expect the original magnitude
        return out.reshape(len(pixels), *shape)


def smoothed_direction(model: object, pixels: Tensor, sigma: float, n: int, generator: torch.Generator,
                       plugin: Plugin | None = None, chunk: int = 0) -> Tensor:
    """Unit MC estimate of ``f_hat(x)/||f_hat(x)||`` ``[B,D']`` for a VLM (tests, FCS measurements)."""
    enc = composite_encoder(model.raw_vision_features, sigma, plugin)  # type: ignore[attr-defined]
    return F.normalize(smooth_features(enc, pixels, sigma, n, generator, chunk)[0].direction, dim=-1)
