"""Projected gradient descent (Madry et al. 2018), linf and l2, over any Objective.

Random start, fixed step size, per-sample best iterate (the first successful one where the
objective tells success), restarts keeping the per-sample worst case and, with success info,
attacking only the samples still standing. Optional EOT: the gradient is averaged over ``eot``
evaluations of a randomized objective (and success must hold in every one).
Defaults follow docs/methods.md: step = eps/4 (linf) or 2.5*eps/steps (l2).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from robustbench_mm.attacks.base import ATTACKS, Attack, check_threat, project, random_start
from robustbench_mm.attacks.evaluation import evaluate, keep_rows, score, syncs_are_free
from robustbench_mm.attacks.worst_case import RunResult, fold_worst_case, merge
from robustbench_mm.errors import ConfigError
from robustbench_mm.types import AttackResult, Batch, Norm, Objective


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
        step_size: step in pixel units; None picks the docs/methods.md default.
        restarts: independent random starts; the per-sample highest objective wins.
        random_start: start uniformly in the ball (else at x).
        eot: gradient samples per step (EOT for randomized defenses).
        search_dtype: ``fp32`` or ``bf16`` autocast for the search.
        targeted: maximise the task's targeted objective (towards ``batch.targets``); ASR is then
            the share whose output is the target (class or text).
        seed: generator seed when called as ``attack(model, x, y)``.
        stop_on_success: with an objective that tells success (classification), a sample leaves
            the attack at its first successful iterate, as in AutoAttack: more steps cannot
            un-break it, and on CPU its later steps are not computed. False keeps attacking every
            sample and returns its highest-objective iterate (what adversarial training wants).
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
        stop_on_success: bool = True,
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
        self.stop_on_success = stop_on_success
        self.uses_eot = eot > 1

    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        assert self.norm is not None and self.eps is not None
        x = batch.pixels.detach()

        def restart(alive: Tensor | None) -> RunResult:
            start = random_start(x, self.norm, self.eps, generator, batch.seeds) if self.random_start else x.clone()
            if alive is None:  # the start is drawn for every row either way, so it is seed-stable
                return self.run_once(model, batch, objective, start)
            return self.run_once(model, batch.select(alive), objective, start[alive])

        result, _ = fold_worst_case(x, (restart for _ in range(self.restarts)))
        return AttackResult(result.pixels.detach(), result.loss, self.restarts * self.steps * self.eot)

    def run_once(self, model: Any, batch: Batch, objective: Objective, x_init: Tensor) -> RunResult:
        """PGD from ``x_init``: per sample the best iterate, or with success info (and
        ``stop_on_success``) the first successful one, after which the sample leaves the attack."""
        assert self.norm is not None and self.eps is not None
        x = batch.pixels.detach()
        out_x, out_loss = x_init.detach().clone(), torch.full((len(x),), -math.inf, device=x.device)
        out_succ: Tensor | None = None
        rows = torch.arange(len(x), device=x.device)  # the rows of ``batch`` still attacked
        sub, x0, x_adv = batch, x, x_init.detach()
        compact = syncs_are_free(x.device)
        for _ in range(self.steps):
            ev = evaluate(model, x_adv, sub, objective, self.eot, self.search_dtype)
            success = ev.success if self.stop_on_success else None
            out_x, out_loss, out_succ = merge(out_x, out_loss, out_succ, RunResult(x_adv, ev.loss, success), rows)
            x_adv = project(x0, ascent_step(x_adv, ev.grad, self.norm, self.step_size), self.norm, self.eps)
            if compact and success is not None:
                sub, (rows, x0, x_adv) = keep_rows(~success, sub, rows, x0, x_adv)
                if not len(rows):
                    return RunResult(out_x, out_loss, out_succ)
        if out_succ is not None:  # the final iterate is scored only where no earlier one succeeded
            sub, (rows, x0, x_adv) = keep_rows(~out_succ[rows], sub, rows, x0, x_adv)
        if len(rows):
            loss, success = score(model, x_adv, sub, objective, self.eot, self.search_dtype)
            success = success if self.stop_on_success else None
            out_x, out_loss, out_succ = merge(out_x, out_loss, out_succ, RunResult(x_adv, loss, success), rows)
        return RunResult(out_x, out_loss, out_succ)

