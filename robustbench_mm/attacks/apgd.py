"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", arXiv:2003.01690), linf and l2, over any Objective.

Mechanics (docs/methods.md): initial step ``2 eps``; checkpoints after ``0.22 N`` steps, then
periods shrinking by ``0.03 N`` down to ``0.06 N``; at a checkpoint the step of a sample is halved
(and the sample restarts from its best point) if at most ``rho`` of the steps since the last
checkpoint increased the objective, or if its step was not halved last time and its best objective
did not improve; momentum 0.75 after the first step; per-sample best point; restarts attack only
the samples not yet broken (when the objective can tell success) and keep the per-sample worst.

Success-aware: objectives with ``loss_and_success`` (classification) report success from the same
forward pass; any successful iterate is kept (as AutoAttack does), since the best-loss point of
the cross-entropy need not be misclassified. Objectives without it (LM, features) keep the
per-sample best objective.

APGD-T (``apgd-t``) runs APGD with AutoAttack's targeted DLR loss towards each of the top-k
non-true classes of the clean logits in turn, on the samples still standing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from robustbench_mm.attacks.base import ATTACKS, Attack, check_threat, project
from robustbench_mm.attacks.guard import check_valid
from robustbench_mm.attacks.objectives import ModuleObjective, bound, has_logits
from robustbench_mm.attacks.evaluation import evaluate, keep_rows, syncs_are_free
from robustbench_mm.attacks.verdict import judge_run, verdict_of
from robustbench_mm.attacks.worst_case import RunResult, fold_worst_case, merge, rows_like
from robustbench_mm.errors import CapabilityError, ConfigError
from robustbench_mm.types import AttackResult, Batch, Norm, Objective

LossName = Literal["ce", "dlr", "margin"]
# APGD-T rows (sample x target) run side by side, more targets wait for the next chunk. On one CPU
# thread clip-tiny's forward+backward gets dearer per sample past a few hundred rows (all nine targets
# of 66 samples, 594 rows, ran 14% slower than in turn; 198 rows 3% faster; docs/protocol.md); an
# accelerator gains up to far larger batches.
STACKED_ROWS = {"cpu": 256, "accelerator": 1024}


def targets_per_chunk(n: int, device: torch.device) -> int:
    """Targets of ``n`` samples that fit one stacked batch (``STACKED_ROWS`` rows), at least one."""
    return max(1, STACKED_ROWS["cpu" if device.type == "cpu" else "accelerator"] // max(n, 1))


def targets_in_turn(first: Tensor, n_t: int) -> int:
    """Targets AutoAttack's loop in turn would run, given each sample's first breaking target
    (``n_t`` where none breaks it): all of them while a sample stands, else up to the last first break."""
    return n_t if bool((first == n_t).any()) else int(first.max()) + 1


def boundary_start(x: Tensor, norm: Norm, eps: float, generator: torch.Generator,
                   seeds: Tensor | None = None) -> Tensor:
    """AutoAttack's start: a random direction scaled onto the eps-sphere (linf: max coordinate = eps).

    Drawn on CPU so a seed gives the same start on every device; with per-example ``seeds``
    (set by the runner) an example's start does not depend on the batch it is in. The caller's
    generator advances by one draw per call either way, so restarts get fresh starts.
    """
    draw = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    if seeds is None:
        t = _unit(x.shape, norm, generator)
    else:
        t = torch.cat([_unit((1, *x.shape[1:]), norm, torch.Generator().manual_seed(int(s) + 7919 * draw))
                       for s in seeds.tolist()])
    return (x + eps * t.to(device=x.device, dtype=x.dtype)).clamp(0.0, 1.0)


def _unit(shape: Any, norm: Norm, generator: torch.Generator) -> Tensor:
    t = torch.rand(shape, generator=generator) * 2 - 1 if norm == "linf" else torch.randn(shape, generator=generator)
    n = t.flatten(1).abs().amax(dim=1) if norm == "linf" else t.flatten(1).norm(dim=1)
    return t / n.clamp_min(1e-12).view(-1, *([1] * (len(shape) - 1)))


def _direction(grad: Tensor, norm: Norm) -> Tensor:
    if norm == "linf":
        return grad.sign()
    n = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.dim() - 1)))
    return grad / n


def checkpoint_periods(steps: int) -> tuple[int, int, int]:
    """(first period, decrement, minimum period) = (0.22 N, 0.03 N, 0.06 N), each at least 1."""
    return max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)


class LogitsCall:
    """The torchattacks-style ``attack(model, x, y)`` for attacks whose loss is a constructor
    parameter: the loss runs on ``model(x)`` logits (``ModuleObjective``)."""

    loss: str | None = None

    def __call__(self, model: Any, x: Tensor, y: Tensor) -> Tensor:
        attack: Any = self
        objective = ModuleObjective(loss=self.loss or "ce")
        batch = Batch(pixels=x.detach(), labels=y.to(x.device), index=torch.arange(len(x)))
        gen = torch.Generator().manual_seed(attack.seed)
        result = attack.perturb(model, batch, attack.prepare(model, batch, objective), generator=gen)
        check_valid(x, result.pixels, attack.norm, attack.eps)
        return result.pixels  # type: ignore[no-any-return]


@ATTACKS.register("apgd")
class APGD(LogitsCall, Attack):
    """Auto-PGD with checkpoints, step halving, momentum, best-point tracking and restarts.

    Args:
        norm: ``linf`` or ``l2``.
        eps: budget in [0,1] pixel units.
        steps: iterations per restart (N).
        restarts: random restarts; later ones attack only samples still standing.
        loss: classification loss passed to ``task.objective`` (``ce``, ``dlr``, ``margin``);
            None keeps the task's default (e.g. the LM loss of generative tasks).
        rho: checkpoint threshold on the fraction of improving steps (0.75 in the paper).
        momentum: weight of the new step (0.75 in the paper; 1 - momentum on the previous step).
        eot: gradient samples per step (EOT for randomized defenses).
        search_dtype: ``fp32`` or ``bf16`` autocast for the search (verdict stays fp32).
        seed: generator seed when called as ``attack(model, x, y)``.
    """

    def __init__(
        self,
        *,
        norm: Literal["linf", "l2"] = "linf",
        eps: float = 8 / 255,
        steps: int = 100,
        restarts: int = 1,
        loss: LossName | None = "ce",
        rho: float = 0.75,
        momentum: float = 0.75,
        eot: int = 1,
        search_dtype: Literal["fp32", "bf16"] = "fp32",
        seed: int = 0,
    ) -> None:
        check_threat(norm, eps, steps)
        if restarts <= 0 or eot <= 0:
            raise ConfigError(f"restarts={restarts} and eot={eot} must be positive integers")
        if not 0 < rho <= 1 or not 0 < momentum <= 1:
            raise ConfigError(f"rho={rho} and momentum={momentum} must lie in (0, 1]")
        self.norm, self.eps, self.steps, self.restarts = norm, eps, steps, restarts
        self.loss, self.rho, self.momentum, self.eot = loss, rho, momentum, eot
        self.search_dtype, self.seed = search_dtype, seed
        self.uses_eot = eot > 1

    # ---- one restart ------------------------------------------------------------------------
    def run_once(self, model: Any, batch: Batch, objective: Objective, x_init: Tensor) -> RunResult:
        """APGD from ``x_init`` on ``batch``; no host synchronisation inside the loop on an
        accelerator. On CPU (where a sync is free) samples with a successful iterate leave the
        batch at once; every per-sample quantity is independent of the other rows, so this
        changes no outcome, only the work."""
        assert self.norm is not None and self.eps is not None
        x, norm, eps = batch.pixels.detach(), self.norm, self.eps
        out_x, out_loss = x_init.detach().clone(), torch.full((len(x),), -math.inf, device=x.device)
        out_succ = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        rows, sub = torch.arange(len(x), device=x.device), batch  # the rows still attacked
        compact = syncs_are_free(x.device)
        ev = evaluate(model, x_init, batch, objective, self.eot, self.search_dtype)
        x_adv, x_prev, grad = x_init.detach(), x_init.detach(), ev.grad
        x_best, loss_best, grad_best = x_adv.clone(), ev.loss.clone(), grad.clone()
        succ = ev.success.clone() if ev.success is not None else None
        x_succ, loss_succ = x_adv.clone(), ev.loss.clone()
        step = torch.full((len(x),), 2 * eps, device=x.device, dtype=x.dtype)
        loss_prev, n_improve = ev.loss, torch.zeros(len(x), device=x.device)
        best_at_check, reduced_last = loss_best.clone(), torch.ones(len(x), dtype=torch.bool, device=x.device)
        period, decr, min_period = checkpoint_periods(self.steps)
        since = 0
        for i in range(self.steps):
            if compact and succ is not None and bool(succ.any()):
                done = rows[succ]
                out_x[done], out_loss[done], out_succ[done] = x_succ[succ], loss_succ[succ], True
                sub, (rows, x, x_adv, x_prev, grad, x_best, loss_best, grad_best, succ, x_succ, loss_succ, step,
                      loss_prev, n_improve, best_at_check, reduced_last) = keep_rows(
                    ~succ, sub, rows, x, x_adv, x_prev, grad, x_best, loss_best, grad_best, succ, x_succ,
                    loss_succ, step, loss_prev, n_improve, best_at_check, reduced_last)
                if not len(rows):
                    break
            a = self.momentum if i > 0 else 1.0
            z = project(x, x_adv + rows_like(step, x) * _direction(grad, norm), norm, eps)
            x_new = project(x, x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev), norm, eps)
            x_prev, x_adv = x_adv, x_new
            ev = evaluate(model, x_adv, sub, objective, self.eot, self.search_dtype)
            grad = ev.grad
            if succ is not None and ev.success is not None:
                new = ev.success & ~succ
                x_succ = torch.where(rows_like(new, x), x_adv, x_succ)
                loss_succ = torch.where(new, ev.loss, loss_succ)
                succ = succ | ev.success
            n_improve = n_improve + (ev.loss > loss_prev).float()
            loss_prev = ev.loss
            better = ev.loss > loss_best
            x_best = torch.where(rows_like(better, x), x_adv, x_best)
            grad_best = torch.where(rows_like(better, x), grad, grad_best)
            loss_best = torch.where(better, ev.loss, loss_best)
            since += 1
            if since == period:
                oscillating = n_improve <= period * self.rho
                stalled = ~reduced_last & (best_at_check >= loss_best)
                reduce = oscillating | stalled
                reduced_last, best_at_check = reduce, loss_best.clone()
                step = torch.where(reduce, step / 2, step)
                x_adv = torch.where(rows_like(reduce, x), x_best, x_adv)
                grad = torch.where(rows_like(reduce, x), grad_best, grad)
                n_improve = torch.zeros_like(n_improve)
                since, period = 0, max(period - decr, min_period)
                if succ is not None and bool(succ.all()):  # one host sync per checkpoint
                    break  # every sample has a successful iterate; more steps cannot change the result
        if succ is None:
            return RunResult(x_best, loss_best, None)
        out_x[rows] = torch.where(rows_like(succ, x), x_succ, x_best)
        out_loss[rows] = torch.where(succ, loss_succ, loss_best)
        out_succ[rows] = succ
        return RunResult(out_x, out_loss, out_succ)

    # ---- restarts ----------------------------------------------------------------------------
    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        result = self.attack_restarts(model, batch, objective, generator)
        return AttackResult(result.pixels.detach(), result.loss, self.restarts * (self.steps + 1) * self.eot)

    def attack_restarts(self, model: Any, batch: Batch, objective: Objective, generator: torch.Generator) -> RunResult:
        """Per-sample worst case over restarts; with success info only standing samples are re-attacked."""
        assert self.norm is not None and self.eps is not None
        x = batch.pixels.detach()

        def restart(alive: Tensor | None) -> RunResult:
            start = boundary_start(x, self.norm, self.eps, generator, batch.seeds)  # all rows: seed-stable
            sub = batch if alive is None else batch.select(alive)
            res = self.run_once(model, sub, objective, start if alive is None else start[alive])
            return res._replace(success=judge_run(model, sub, objective, res.pixels, res.success))

        return fold_worst_case(x, (restart for _ in range(self.restarts)))[0]


@dataclass
class TowardsTarget:
    """APGD-T's vehicle: a targeted loss towards ``batch.targets``, but success is the base objective's
    (untargeted misclassification), as in AutoAttack."""

    base: Any
    loss: str

    def loss_and_success(self, model: Any, pixels: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        logits = bound(self.base, batch).logits(model, pixels)
        towards = self.base.with_loss(self.loss, targeted=True)
        return towards._from_logits(logits, batch), self.base._success_from_logits(logits.detach(), batch)

    def __call__(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        return self.loss_and_success(model, pixels, batch)[0]


@ATTACKS.register("apgd-t")
class APGDTargeted(APGD):
    """Targeted APGD (AutoAttack's APGD-T): for each of the ``n_targets`` most likely non-true classes
    of the clean logits, ``restarts`` APGD runs with the targeted loss (``dlr``: AutoAttack's targeted
    DLR, needs >= 4 classes; ``ce``: cross-entropy to the target) on the samples still standing.
    Success is untargeted misclassification. Args as ``APGD`` plus ``n_targets`` (9 in AutoAttack).
    """

    def __init__(
        self,
        *,
        norm: Literal["linf", "l2"] = "linf",
        eps: float = 8 / 255,
        steps: int = 100,
        restarts: int = 1,
        n_targets: int = 9,
        loss: LossName | None = "dlr",
        rho: float = 0.75,
        momentum: float = 0.75,
        eot: int = 1,
        search_dtype: Literal["fp32", "bf16"] = "fp32",
        seed: int = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, steps=steps, restarts=restarts, loss=loss, rho=rho,
                         momentum=momentum, eot=eot, search_dtype=search_dtype, seed=seed)
        if n_targets <= 0:
            raise ConfigError(f"n_targets={n_targets} must be a positive integer")
        self.n_targets = n_targets

    def check_task(self, objective: Objective, capabilities: frozenset[str]) -> None:
        if not has_logits(objective):
            raise CapabilityError("apgd-t needs a classification objective (class logits); "
                                  "use apgd or pgd for generative or embedding tasks")

    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        self.check_task(objective, frozenset())
        base: Any = objective
        base = base.with_loss(base.loss, targeted=False) if getattr(base, "targeted", False) else base
        x = batch.pixels.detach()
        # target ranking on the verdict's logits (k-draw mean for randomized models), in fp32
        order = verdict_of(batch).mean_logits(bound(base, batch).logits, model, x).argsort(dim=1, descending=True)
        n_t = min(self.n_targets, order.shape[1] - 1)
        vehicle = TowardsTarget(base, self.loss or "dlr")
        if self.restarts == 1 and verdict_of(batch).draws == 1:
            out, used = self._stacked(model, batch, base, vehicle, order[:, 1:n_t + 1], generator)
        else:
            out, used = self._in_turn(model, batch, base, vehicle, order[:, 1:n_t + 1], generator)
        return AttackResult(out.pixels.detach(), out.loss, used * self.restarts * (self.steps + 1) * self.eot)

    def _in_turn(self, model: Any, batch: Batch, base: Any, vehicle: TowardsTarget, targets: Tensor,
                 generator: torch.Generator) -> tuple[RunResult, int]:
        """AutoAttack's loop: one target after the other, each on the samples still standing."""
        x = batch.pixels.detach()

        def towards(k: int) -> Callable[[Tensor | None], RunResult]:
            def run(alive: Tensor | None) -> RunResult:
                sub = Batch(pixels=x, labels=batch.labels, index=batch.index, targets=targets[:, k], seeds=batch.seeds,
                            extra=batch.extra)
                sub = sub if alive is None else sub.select(alive)
                res = self.attack_restarts(model, sub, vehicle, generator)
                with torch.no_grad():  # report the task objective, comparable across targets
                    return RunResult(res.pixels, base(model, res.pixels, sub).float(), res.success)
            return run

        return fold_worst_case(x, (towards(k) for k in range(targets.shape[1])))

    def _stacked(self, model: Any, batch: Batch, base: Any, vehicle: TowardsTarget, targets: Tensor,
                 generator: torch.Generator) -> tuple[RunResult, int]:
        """The same result as ``_in_turn``, with several targets of a sample run side by side as rows of
        one batch (late members run on a few standing samples; nine of them per target fill a batch).

        Exact for one restart and a deterministic verdict: a row's trajectory depends only on its
        sample, target and start, and each target's start is the one the loop in turn would draw.
        The pick per sample is the loop's: the first target that breaks it, else the highest task
        objective (earliest on ties). Targets of samples that an earlier one breaks do run here
        (to their own first success); that costs work only on samples the member breaks."""
        x, n, n_t = batch.pixels.detach(), len(batch), targets.shape[1]
        starts, states = [], [generator.get_state()]
        for _ in range(n_t):  # the loop in turn draws one start per target it runs, in this order
            starts.append(boundary_start(x, self.norm, self.eps, generator, batch.seeds))  # type: ignore[arg-type]
            states.append(generator.get_state())
        out = RunResult(x.clone(), torch.full((n,), -math.inf, device=x.device),
                        torch.zeros(n, dtype=torch.bool, device=x.device))
        per_chunk = targets_per_chunk(n, x.device)
        first = torch.full((n,), n_t, dtype=torch.long, device=x.device)  # first breaking target per sample
        for k0 in range(0, n_t, per_chunk):
            alive = ~out.success  # type: ignore[operator]
            if not bool(alive.any()):
                break
            ks = range(k0, min(k0 + per_chunk, n_t))
            rows = alive.nonzero().flatten()
            idx = rows.repeat(len(ks))  # target-major: all standing samples for target k0, then k0+1, ...
            sub = batch.take(idx)
            sub.targets = torch.cat([targets[rows, k] for k in ks])
            res = self.run_once(model, sub, vehicle, torch.cat([starts[k][rows] for k in ks]))
            with torch.no_grad():
                loss = base(model, res.pixels, sub).float()
            for j, k in enumerate(ks):  # fold in target order: the loop in turn's pick
                part = slice(j * len(rows), (j + 1) * len(rows))
                succ = res.success[part] if res.success is not None else None
                newly = rows[succ & ~out.success[rows]] if succ is not None else rows[:0]  # type: ignore[index]
                first[newly] = k
                merged = merge(out.pixels, out.loss, out.success, RunResult(res.pixels[part], loss[part], succ), rows)
                out = RunResult(*merged)
        used = targets_in_turn(first, n_t)
        generator.set_state(states[used])
        return out, used
