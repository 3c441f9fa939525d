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


class _Unmatched(Exception):
    """An input row could not be traced to its original's binding (see ``RowMatchedLogits``)."""


class RowMatchedLogits(nn.Module):
    """Logits of a row-bound objective (each row scored with its own text, say) for the inputs
    torchattacks passes: rows of the batch, perturbed, as any subset in any order (``x[idx]``, and
    ``idx`` is not passed on). Only each input's binding has to be traced (rows with equal bindings
    are interchangeable). Two rules, which must agree where both apply:

    * distance: with ``r_j`` half the distance (threat norm) from original ``j`` to the nearest
      original of another binding, an input within ``r`` of its own original is nearest to a row of
      its own binding (triangle inequality). Square's iterates stay in the eps-ball, far inside ``r``
      (about 0.24-0.38 in linf on the bundled images).
    * position: FAB's iterates wander farther (up to 3x ``r``), but within one run it queries the
      rows of its latest call on unperturbed inputs, in the same order; an input call of that size
      takes that call's rows.

    An input neither rule traces raises ``_Unmatched``; the caller then reruns per binding group.
    The verdict always rescores each row with its own binding, so a trace only steers the search.
    """

    def __init__(self, model: Any, objective: Any, batch: Batch, norm: str) -> None:
        super().__init__()
        self.model, self.objective, self.batch, self.norm = model, objective, batch, norm
        self.x0 = batch.pixels.detach().flatten(1).float()
        self.group = binding_groups(objective, batch)
        same = self.group[:, None] == self.group[None, :]
        self.radius = self._dist(self.x0).masked_fill(same, float("inf")).amin(1) / 2
        self.last: Tensor | None = None  # rows of the latest call on unperturbed inputs

    def _dist(self, x: Tensor) -> Tensor:
        # the plain difference, not torch.cdist: its matmul shortcut puts identical rows ~0.02 apart,
        # and the position rule needs an unperturbed input to measure exactly 0
        diff = x.detach().flatten(1).float()[:, None, :] - self.x0[None, :, :]
        return diff.norm(dim=-1) if self.norm == "l2" else diff.abs().amax(-1)

    def trace(self, pixels: Tensor) -> Tensor:
        """``[K]`` original row of each input row (one of its binding)."""
        d = self._dist(pixels)
        dmin, near = d.min(1)
        ok = dmin < self.radius[near]
        if not ok.all():
            last = self.last
            if last is None or len(last) != len(near) or (self.group[near[ok]] != self.group[last[ok]]).any():
                raise _Unmatched
            return torch.where(ok, near, last)
        if (dmin == 0).all():
            self.last = near
        return near

    def forward(self, pixels: Tensor) -> Tensor:
        rows = self.batch.take(self.trace(pixels).to(self.batch.pixels.device))
        return bound(self.objective, rows).logits(self.model, pixels).float()  # type: ignore[no-any-return]


def binding_groups(objective: Any, batch: Batch) -> Tensor:
    """``[B]`` group id per row: rows whose bound objectives are equal (e.g. the same text) share one."""
    firsts: list[Any] = []
    ids = []
    for i in range(len(batch)):
        one = bound(objective, batch.take(torch.tensor([i])))
        match = next((g for g, f in enumerate(firsts) if f == one), None)
        if match is None:
            firsts.append(one)
            match = len(firsts) - 1
        ids.append(match)
    return torch.tensor(ids, device=batch.pixels.device)


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

    def _run(self, module: nn.Module, batch: Batch, generator: torch.Generator) -> Tensor:
        """torchattacks on ``batch`` through ``module`` (pixels -> logits); projected when asked."""
        import torchattacks

        module = module.eval()
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

    def _run_row_bound(self, model: Any, objective: Any, batch: Batch, generator: torch.Generator) -> Tensor:
        """Logits that depend on per-row inputs (each image's text): the whole batch at once with rows
        traced by ``RowMatchedLogits``; if a row cannot be traced, once per group of rows sharing a
        binding (exact, and slower: one torchattacks run per group)."""
        state = generator.get_state()
        whole = RowMatchedLogits(model, objective, batch, str(self.norm))
        try:
            return self._run(whole, batch, generator)
        except _Unmatched:
            generator.set_state(state)
        groups = whole.group
        x_adv = batch.pixels.detach().clone()
        for g in groups.unique().tolist():
            idx = (groups == g).nonzero().flatten()
            rows = batch.take(idx)
            x_adv[idx] = self._run(RowMatchedLogits(model, objective, rows, str(self.norm)), rows, generator)
        return x_adv

    def check_task(self, objective: Objective, capabilities: frozenset[str]) -> None:
        if not has_logits(objective):
            raise CapabilityError(f"torchattacks.{self.cls_name} needs a classification task (class logits)")

    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        self.check_task(objective, frozenset())
        if callable(getattr(objective, "bind", None)):
            x_adv = self._run_row_bound(model, objective, batch, generator)
        else:
            x_adv = self._run(LogitsModule(model, objective), batch, generator)
        with torch.no_grad():
            loss = objective(model, x_adv, batch).float()
        return AttackResult(x_adv, loss, int(self.kwargs.get("n_queries", self.kwargs.get("steps", 0)) or 0))
