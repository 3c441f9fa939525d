"""Validity guard: every adversarial batch must lie in the threat model. Violations are bugs."""

from __future__ import annotations

import torch
from torch import Tensor

from robustbench_mm.errors import ValidityError
from robustbench_mm.types import Norm

TOLERANCE = 1e-5  # float32 round-off of clip/projection, in [0,1] pixel units


def perturbation_norms(x: Tensor, x_adv: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example achieved ``(linf, l2)`` norms of ``x_adv - x``, each ``[B]``."""
    delta = (x_adv.detach().float() - x.detach().float()).flatten(1)
    return delta.abs().amax(dim=1), delta.norm(dim=1)


def check_valid(x: Tensor, x_adv: Tensor, norm: Norm | None, eps: float | None, tol: float = TOLERANCE) -> None:
    """Raise ``ValidityError`` unless ``x_adv`` is finite, in [0,1] and within ``eps`` of ``x``.

    ``norm=None`` means no budget (clean evaluation): ``x_adv`` must equal ``x``.
    """
    if x_adv.shape != x.shape:
        raise ValidityError(f"adversarial batch shape {tuple(x_adv.shape)} != clean {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise ValidityError("adversarial batch contains NaN or inf")
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if lo < -tol or hi > 1 + tol:
        raise ValidityError(f"adversarial pixels leave [0,1]: min {lo:.6f}, max {hi:.6f}")
    linf, l2 = perturbation_norms(x, x_adv)
    if norm is None:
        if float(linf.max()) > tol:
            raise ValidityError(f"clean evaluation changed the input (linf {float(linf.max()):.6f})")
        return
    achieved = linf if norm == "linf" else l2
    worst = float(achieved.max()) if achieved.numel() else 0.0
    assert eps is not None
    if worst > eps * (1 + 1e-4) + tol:
        raise ValidityError(f"{norm} perturbation {worst:.6f} exceeds eps {eps:.6f}")
