"""Adaptive-attack utilities for defenses that break plain gradients (Athalye et al. 2018,
"Obfuscated Gradients Give a False Sense of Security", arXiv:1802.00420).

- EOT (expectation over transformation): average the objective over random draws of a
  randomized defense. PGD and APGD take ``eot`` directly (presets ``eot-pgd``, ``eot-apgd-ce``);
  ``ExpectationObjective`` wraps any objective for attacks that do not.
- BPDA (backward-pass differentiable approximation): run a non-differentiable piece forward, and
  differentiate a smooth approximation of it backward (identity = straight-through).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from robustbench_mm.types import Batch, Objective

TensorFn = Callable[[Tensor], Tensor]


def bpda(forward: TensorFn, approx: TensorFn | None = None) -> TensorFn:
    """``x -> forward(x)`` in value, with the gradient of ``approx`` (identity if None).

    For defenses with non-differentiable pieces (JPEG, bit-depth reduction, purifiers with
    argmax/quantisation). ``approx`` must have ``forward``'s output shape; the value returned is
    exactly ``forward(x)`` (up to float round-off of ``a + (f - a)``).

    Example: ``quantise = bpda(lambda x: (x * 255).round() / 255)`` inside a defense's forward.
    """
    approx_fn: TensorFn = approx if approx is not None else (lambda x: x)

    def wrapped(x: Tensor) -> Tensor:
        a = approx_fn(x)
        with torch.no_grad():
            f = forward(x)
        return a + (f - a).detach()

    return wrapped


class _StraightThrough(torch.autograd.Function):
    """Exact forward value, identity gradient (no round-off); used by ``straight_through``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        return y.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad, None


def straight_through(forward: TensorFn) -> TensorFn:
    """BPDA with the identity approximation and a bit-exact forward value (same shape in and out)."""

    def wrapped(x: Tensor) -> Tensor:
        with torch.no_grad():
            y = forward(x)
        return _StraightThrough.apply(x, y)  # type: ignore[no-any-return]

    return wrapped


@dataclass
class ExpectationObjective:
    """Mean of ``objective`` over ``draws`` evaluations (EOT for randomized defenses), ``[B]``.

    Success (when the inner objective has it) must hold in every draw.
    """

    objective: Objective
    draws: int = 16

    def __call__(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        return torch.stack([self.objective(model, pixels, batch).float() for _ in range(self.draws)]).mean(0)

    def success(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        fn = getattr(self.objective, "success")
        out = fn(model, pixels, batch)
        for _ in range(self.draws - 1):
            out = out & fn(model, pixels, batch)
        return out  # type: ignore[no-any-return]
