"""Run a torchattacks class through the same cell, guard and tables (classification tasks only).

The VLM and the task's class prompts are wrapped as an ``nn.Module`` returning zero-shot logits, so
any torchattacks attack (``Square``, ``FAB``, ``CW``, ``PGD``, ``APGD``, ...) sees a plain classifier
on [0,1] images. torchattacks draws from the global RNG; it runs inside ``fork_rng`` seeded from
the cell's generator, so the global state is untouched and a seed gives the same result.

Attacks without a budget (``CW`` is an unbounded l2 minimum-norm attack) are projected onto the
threat model afterwards (``project: true``), so their rows stay comparable; say so in tables.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from torch import Tensor, nn

from robustbench_mm.attacks.apgd import LogitsCall
from robustbench_mm.attacks.base import ATTACKS, Attack, check_threat, project
from robustbench_mm.attacks.objectives import bound, has_logits
from robustbench_mm.errors import CapabilityError, ConfigError
from robustbench_mm.types import AttackResult, Batch, Objective

_NORMS = {"linf": "Linf", "l2": "L2"}


class LogitsModule(nn.Module):
    """``pixels -> objective.logits(model, pixels)`` as a module (fp32 logits ``[B,C]``)."""

    def __init__(self, model: Any, objective: Any) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, pixels: Tensor) -> Tensor:
        return self.objective.logits(self.model, pixels).float()  # type: ignore[no-any-return]


@ATTACKS.register("torchattacks")
class TorchattacksBridge(LogitsCall, Attack):
    """A torchattacks attack class by name, under our threat model.

    Args:
        cls: class name in ``torchattacks`` (``Square``, ``FAB``, ``CW``, ``PGD``, ``APGD``, ``APGDT``).
        norm, eps: threat model; passed as ``norm="Linf"|"L2"`` and ``eps`` where the class takes them.
        steps: passed as ``steps`` (or ``n_queries`` for ``Square``) where the class takes it.
        options: further keyword arguments of the class, as plain numbers/strings (e.g. ``alpha``).
        project: project the output onto the eps-ball (for unbounded attacks such as ``CW``).
        seed: seed for the global RNG torchattacks uses (run inside ``fork_rng``).
    """

    def __init__(
        self,
        *,
        cls: str = "Square",
        norm: Literal["linf", "l2"] = "linf",
        eps: float = 8 / 255,
        steps: int | None = None,
        options: dict[str, Any] | None = None,
        project: bool = False,
        seed: int = 0,
    ) -> None:
        import torchattacks

        check_threat(norm, eps, steps)
        if not hasattr(torchattacks, cls):
            raise ConfigError(f"cls={cls!r} is not a torchattacks attack (e.g. Square, FAB, CW, PGD, APGD)")
        self.cls_name, self.norm, self.eps, self.seed = cls, norm, eps, seed
        self.steps = steps or 0
        self.options, self.project_output = dict(options or {}), project
        self.loss = None
        self._params = set(inspect.signature(getattr(torchattacks, cls).__init__).parameters)
        self.kwargs = self._kwargs()

    def _kwargs(self) -> dict[str, Any]:
        p, kw = self._params, dict(self.options)
        if "norm" in p:
            kw.setdefault("norm", _NORMS[str(self.norm)])
        elif self.norm == "l2" and "eps" in p and self.cls_name not in ("PGDL2", "APGD", "APGDT", "FAB", "Square"):
            raise ConfigError(f"torchattacks.{self.cls_name} is an linf attack; use norm: linf or an l2 class")
        if "eps" in p:
            kw.setdefault("eps", self.eps)
        elif not self.project_output:
            raise ConfigError(f"torchattacks.{self.cls_name} has no eps; set project: true to enforce the budget")
        if self.steps:
            key = "n_queries" if "n_queries" in p else ("steps" if "steps" in p else None)
            if key is None:
                raise ConfigError(f"torchattacks.{self.cls_name} takes no steps; leave steps unset")
            kw.setdefault(key, self.steps)
        if "seed" in p:
            kw.setdefault("seed", self.seed)
        unknown = set(kw) - p
        if unknown:
            raise ConfigError(f"options.{sorted(unknown)[0]} is not a parameter of torchattacks.{self.cls_name} "
                              f"(valid: {', '.join(sorted(p - {'self', 'model'}))})")
        return kw

    def _run(self, model: Any, objective: Objective, batch: Batch, generator: torch.Generator) -> Tensor:
        """torchattacks on ``batch`` through the objective's logits; the output is projected when asked."""
        import torchattacks

        module = LogitsModule(model, objective).eval()
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        x, y = batch.pixels.detach(), batch.labels.to(batch.pixels.device)
        devices = [x.device] if x.device.type == "cuda" else []
        kwargs = dict(self.kwargs)
        if "n_classes" in self._params and "n_classes" not in self.options:
            with torch.no_grad():
                kwargs["n_classes"] = int(module(x[:1]).shape[1])  # FAB, APGDT: the task's class count
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            atk = getattr(torchattacks, self.cls_name)(module, **kwargs)
            x_adv = atk(x, y).detach().to(x.dtype)
        if self.project_output:
            assert self.norm is not None and self.eps is not None
            x_adv = project(x, x_adv, self.norm, self.eps)
        return x_adv

    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        if not has_logits(objective):
            raise CapabilityError(f"torchattacks.{self.cls_name} needs a classification task (class logits)")
        if callable(getattr(objective, "bind", None)):
            # logits depend on per-row inputs (e.g. each image's text) and torchattacks attacks
            # subsets of rows internally: run it one row at a time so every row keeps its own input
            rows = [self._run(model, bound(objective, one), one, generator)
                    for one in (batch.select(torch.arange(len(batch.pixels)) == i) for i in range(len(batch.pixels)))]
            x_adv = torch.cat(rows) if rows else batch.pixels.detach()
        else:
            x_adv = self._run(model, objective, batch, generator)
        with torch.no_grad():
            loss = objective(model, x_adv, batch).float()
        return AttackResult(x_adv, loss, int(self.kwargs.get("n_queries", self.kwargs.get("steps", 0)) or 0))
