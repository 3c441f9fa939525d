"""``robustbench_mm.certify``: randomized-smoothing certificates for any ``nn.Module`` returning logits."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from robustbench_mm.defenses.rs_certify import RSCertificate
from robustbench_mm.defenses.rs_certify import certify as _certify


def certify(model: nn.Module, x: Tensor, y: Tensor | None = None, *, sigma: float = 0.25, n0: int = 100,
            n: int = 2000, alpha: float = 0.001, batch_size: int = 1024,
            seeds: Sequence[int] | None = None) -> RSCertificate:
    """CERTIFY (Cohen et al. 2019) the Gaussian-smoothed ``argmax model(x + d)`` on each image of ``x``.

    Args:
        model: any module mapping ``[k,C,H,W]`` inputs to ``[k,num_classes]`` logits; put it in eval
            mode yourself if it has dropout / batch-norm (this function does not change its mode).
        x: images ``[B,C,H,W]`` on the model's device, in the units the model takes as input.
        y: optional labels ``[B]``; when given, they are checked against ``B`` (use
            ``result.certified_at(y, r)`` for certified accuracy at radius ``r``).
        sigma: noise std **in the units of x** (e.g. [0,1] pixels; if the model normalises inside,
            sigma is still in pixel units, before that normalisation).
        n0, n: selection and estimation draws per image; alpha: failure probability per image.
        batch_size: noisy images per forward, shared across the images of ``x``.
        seeds: one seed per image (reproducible, batch-independent noise); default: the global RNG.

    Returns an ``RSCertificate`` of CPU tensors: ``prediction`` (-1 = abstain), ``radius``,
    ``abstain``, ``p_lower``. Each radius holds for the exact smoothed classifier with probability
    ``>= 1 - alpha``; it says nothing about any single Monte-Carlo prediction.
    """
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError("x must be a batch tensor [B, ...]; add a batch dimension with x.unsqueeze(0)")
    if y is not None and len(y) != len(x):
        raise ValueError(f"y has {len(y)} labels for {len(x)} images; pass one label per image")
    with torch.no_grad():
        return _certify(model, x, sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seeds=seeds)
