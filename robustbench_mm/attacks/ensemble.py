"""Attack ensembles (AutoAttack-style): members run in order, each only on the samples still standing.

Robustness is the per-sample worst case (design 'Trust'): a sample counts as robust only if it
survives every member. "Standing" means the verdict procedure (``attacks.verdict``) does not break
the sample after a member: fp32, majority of fresh draws for randomized models, the task's own
metric when run by the runner; without any success test (LM or embedding objectives called outside
the runner) every member attacks every sample and the highest task objective wins.
``aa-white`` = APGD-CE then APGD-T (targeted DLR), the white-box half of AutoAttack standard.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from robustbench_mm.attacks.apgd import LogitsCall
from robustbench_mm.attacks.worst_case import RunResult, fold_worst_case
from robustbench_mm.attacks.base import ATTACKS, Attack, build, check_threat
from robustbench_mm.attacks.objectives import LMObjective, has_logits
from robustbench_mm.attacks.verdict import success_test, verdict_of
from robustbench_mm.errors import ConfigError
from robustbench_mm.presets import load_raw
from robustbench_mm import progress
from robustbench_mm.types import AttackResult, Batch, Objective


@ATTACKS.register("ensemble")
class Ensemble(LogitsCall, Attack):
    """Run attack presets in sequence; later members see only samples not yet broken.

    Args:
        attacks: member preset names, in order (e.g. ``[apgd-ce, apgd-t]``).
        norm, eps: threat model, imposed on every member.
        steps: iterations imposed on every member; None keeps each member's preset value.
        eot: EOT evaluations per step imposed on every member that has an ``eot`` parameter (the rand
            protocol sets it from its draw budget); a member whose preset value changes is named
            ``<member>+eot<k>`` so tables say what ran. None keeps the presets' values.
        seed: generator seed when called as ``attack(model, x, y)``.
    """

    def __init__(
        self,
        *,
        attacks: tuple[str, ...] = ("apgd-ce", "apgd-t"),
        norm: Literal["linf", "l2"] = "linf",
        eps: float = 8 / 255,
        steps: int | None = None,
        eot: int | None = None,
        search_dtype: Literal["fp32", "bf16"] | None = None,
        seed: int = 0,
    ) -> None:
        check_threat(norm, eps, steps)
        if not attacks:
            raise ConfigError("attacks must name at least one member preset")
        if eot is not None and eot <= 0:
            raise ConfigError(f"eot={eot} must be a positive integer")
        self.norm, self.eps, self.seed = norm, eps, seed
        self.members: list[Attack] = [_member(a, norm=norm, eps=eps, steps=steps, seed=seed, eot=eot,
                                              **_dtype_override(a, search_dtype)) for a in attacks]
        if any(isinstance(m, Ensemble) for m in self.members):
            raise ConfigError("an ensemble member may not be an ensemble itself")
        self.steps = max(int(getattr(m, "steps", 0)) for m in self.members)
        self.restarts = sum(int(getattr(m, "restarts", 1)) for m in self.members)
        self.search_dtype = search_dtype or "fp32"
        self.loss = None  # members pick their own loss; the task default seeds them
        self.uses_eot = any(m.uses_eot for m in self.members)

    def member_objective(self, member: Attack, objective: Objective) -> Objective:
        loss = getattr(member, "loss", None)
        if loss and has_logits(objective):
            return objective.with_loss(loss, targeted=False)  # type: ignore[attr-defined,no-any-return]
        if loss in ("margin", "dlr") and isinstance(objective, LMObjective):  # answer-token margin
            return objective.with_loss(loss, targeted=False)
        return objective

    def check_task(self, objective: Objective, capabilities: frozenset[str]) -> None:
        for m in self.members:
            m.check_task(self.member_objective(m, objective), capabilities)

    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        runs = [(m, self.member_objective(m, objective)) for m in self.members]
        return run_in_sequence(model, batch, objective, runs, generator)

    def describe(self) -> dict[str, Any]:
        return {"norm": self.norm, "eps": float(self.eps or 0.0), "steps": self.steps}


def _member(name: str, *, eot: int | None, **overrides: Any) -> Attack:
    """Build one member; an imposed ``eot`` applies only where the implementation takes one."""
    if eot is None or not _takes(name, "eot"):
        return build(name, **overrides)
    attack = build(name, eot=eot, **overrides)
    if eot != int((_raw(name).get("params") or {}).get("eot", 1)):
        attack.name = f"{name}+eot{eot}"
    return attack


def _dtype_override(member: str, search_dtype: str | None) -> dict[str, Any]:
    """``search_dtype`` for members whose implementation has one (torchattacks members run fp32)."""
    return {"search_dtype": search_dtype} if search_dtype and _takes(member, "search_dtype") else {}


def _raw(member: str) -> dict[str, Any]:
    return load_raw("attack", member)[1]


def _takes(member: str, param: str) -> bool:
    """Whether the implementation behind preset ``member`` has the constructor parameter ``param``."""
    impl = _raw(member).get("impl")
    return isinstance(impl, str) and impl in ATTACKS and param in inspect.signature(ATTACKS.get(impl)).parameters


def run_in_sequence(model: Any, batch: Batch, objective: Objective, runs: list[tuple[Attack, Objective]],
                    generator: torch.Generator) -> AttackResult:
    """Per-sample worst case of ``(attack, the objective it maximises)`` runs, in order, each on the
    samples still standing. Every run's result is judged by the verdict procedure
    (``attacks.verdict``: fp32, majority of fresh draws for randomized models; the task's own metric
    when the runner attached the task), so runs with different losses are comparable and a sample
    leaves the sequence only when the verdict breaks it. Without a task verdict and without a success
    test (LM or embedding objectives outside the runner), every run sees every sample and the higher
    objective wins. ``broken_by`` names, per sample, the run that broke it ("" = none)."""
    x = batch.pixels.detach()
    verdict = verdict_of(batch)
    can_tell = verdict.task is not None or success_test(objective) is not None
    queries = 0
    broken_by = [""] * len(x)

    def runner(attack: Attack, obj: Objective) -> Callable[[Tensor | None], RunResult]:
        def run(alive: Tensor | None) -> RunResult:
            nonlocal queries
            sub = batch if alive is None else batch.select(alive)
            progress.member(attack.name, len(sub))
            if verdict.ledger is not None:  # breaks the verdict decides during this member are charged to it
                verdict.ledger.stage = attack.name or type(attack).__name__.lower()
            res = attack.perturb(model, sub, attack.prepare(model, sub, obj), generator=generator)
            queries += res.queries
            with torch.no_grad():  # the task objective, comparable across runs
                loss = objective(model, res.pixels, sub).float()
            succ = verdict.broken(model, res.pixels, sub, objective) if can_tell else None
            if succ is not None:
                rows = range(len(x)) if alive is None else alive.nonzero().flatten().tolist()
                for r, hit in zip(rows, succ.tolist()):
                    if hit and not broken_by[r]:
                        broken_by[r] = attack.name or type(attack).__name__.lower()
            return RunResult(res.pixels, loss, succ)
        return run

    out, _ = fold_worst_case(x, (runner(a, o) for a, o in runs))
    return AttackResult(out.pixels.detach(), out.loss, queries, broken_by if can_tell else None)
