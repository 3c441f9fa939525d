"""Projected gradient descent (Madry et al. 2018), linf and l2, over any Objective.

Random start, fixed step size, per-sample best iterate, restarts keeping the per-sample worst
case. Optional EOT: the gradient is averaged over ``eot`` evaluations of a randomized objective.
Defaults follow methods.md 1.1 [BENCH]: step = eps/4 (linf) or 2.5*eps/steps (l2).
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import torch
from torch import Tensor

from robustbench_mm.attacks.base import ATTACKS, Attack, check_threat, project, random_start
from robustbench_mm.errors import ConfigError
from robustbench_mm.types import AttackResult, Batch, Norm, Objective


def autocast_context(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for the search (precision policy: the verdict is recomputed in fp32)."""
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def loss_and_grad(
    model: Any, x_adv: Tensor, batch: Batch, objective: Objective, eot: int, search_dtype: str
) -> tuple[Tensor, Tensor]:
    """Per-example objective ``[B]`` (mean over EOT draws) and its input gradient."""
    x_adv = x_adv.detach().requires_grad_(True)
    total = torch.zeros(len(x_adv), device=x_adv.device)
    for _ in range(eot):
        with autocast_context(x_adv.device, search_dtype):
            loss = objective(model, x_adv, batch).float()
        total = total + loss
    grad = torch.autograd.grad(total.sum(), x_adv)[0] / eot
    return (total / eot).detach(), grad.detach()


def ascent_step(x_adv: Tensor, grad: Tensor, norm: Norm, step: float) -> Tensor:
    if norm == "linf":
        return x_adv + step * grad.sign()
    g = grad.flatten(1)
    g = g / (g.norm(dim=1, keepdim=True) + 1e-10)
    return x_adv + step * g.view_as(x_adv)


@ATTACKS.register("pgd")
class PGD(Attack):
    """PGD with random start, best-iterate tracking and restarts.

    Args:
        norm: ``linf`` or ``l2``.
        eps: budget in [0,1] pixel units.
        steps: gradient steps per restart.
        step_size: step in pixel units; None picks the methods.md default.
        restarts: independent random starts; the per-sample highest objective wins.
        random_start: start uniformly in the ball (else at x).
        eot: gradient samples per step (EOT for randomized defenses).
        search_dtype: ``fp32`` or ``bf16`` autocast for the search.
        targeted: maximise the task's targeted objective (towards ``batch.targets``); ASR is then
            the share whose output is the target (class or text).
        seed: generator seed when called as ``attack(model, x, y)``.
    """

    def __init__(
        self,
        *,
        norm: Literal["linf", "l2"] = "linf",
        eps: float = 8 / 255,
        steps: int = 10,
        step_size: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        eot: int = 1,
        search_dtype: Literal["fp32", "bf16"] = "fp32",
        targeted: bool = False,
        seed: int = 0,
    ) -> None:
        check_threat(norm, eps, steps)
        if restarts <= 0 or eot <= 0:
            raise ConfigError(f"restarts={restarts} and eot={eot} must be positive integers")
        if step_size is not None and step_size <= 0:
            raise ConfigError(f"step_size={step_size} must be > 0")
        self.norm, self.eps, self.steps = norm, eps, steps
        self.step_size = step_size if step_size is not None else (eps / 4 if norm == "linf" else 2.5 * eps / steps)
        self.restarts, self.random_start, self.eot = restarts, random_start, eot
        self.search_dtype, self.seed, self.targeted = search_dtype, seed, targeted
        self.uses_eot = eot > 1

    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        x = batch.pixels.detach()
        assert self.norm is not None and self.eps is not None
        best_x, best_loss = x.clone(), torch.full((len(x),), -float("inf"), device=x.device)
        for _ in range(self.restarts):
            x_adv = random_start(x, self.norm, self.eps, generator, batch.seeds) if self.random_start else x.clone()
            for _ in range(self.steps):
                loss, grad = loss_and_grad(model, x_adv, batch, objective, self.eot, self.search_dtype)
                best_x, best_loss = _keep_best(best_x, best_loss, x_adv, loss)
                x_adv = project(x, ascent_step(x_adv, grad, self.norm, self.step_size), self.norm, self.eps)
            with torch.no_grad():
                loss = torch.stack([objective(model, x_adv, batch).float() for _ in range(self.eot)]).mean(0)
            best_x, best_loss = _keep_best(best_x, best_loss, x_adv, loss)
        return AttackResult(best_x.detach(), best_loss, self.restarts * self.steps * self.eot)


def _keep_best(best_x: Tensor, best_loss: Tensor, x_adv: Tensor, loss: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample keep the iterate with the highest objective (ties keep the earlier one)."""
    better = loss > best_loss
    mask = better.view(-1, *([1] * (x_adv.dim() - 1)))
    return torch.where(mask, x_adv.detach(), best_x), torch.where(better, loss, best_loss)
