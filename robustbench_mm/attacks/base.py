"""Attack base class: a threat model, ``perturb`` over an Objective, and the torchattacks-style call."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from robustbench_mm.attacks.guard import check_valid
from robustbench_mm.attacks.objectives import ModuleObjective
from robustbench_mm.errors import ConfigError
from robustbench_mm.presets import load_preset
from robustbench_mm.registry import Registry
from robustbench_mm.types import AttackResult, Batch, Norm, Objective

ATTACKS: Registry[type["Attack"]] = Registry("attack")

L2_MAX_EPS = 1000.0  # l2 budgets can exceed 1 (an l2 ball of radius r in [0,1]^d); this only rejects typos


class Attack(ABC):
    """A white-box attack under a threat model.

    Attributes:
        name: preset name (set by ``build``), recorded in tables.
        norm, eps: the threat model, eps in [0,1] pixel units; ``norm=None`` for clean evaluation.
        seed: seed of the attack's own generator when the caller passes none.
    """

    name: str = ""
    norm: Norm | None = None
    eps: float | None = None
    seed: int = 0
    # Traits the runner reads for adaptive evaluation and provenance.
    uses_eot: bool = False

    def check_task(self, objective: Objective, capabilities: frozenset[str]) -> None:
        """Raise ``CapabilityError`` when this attack cannot attack the task whose objective is
        ``objective`` on a model with ``capabilities``. The resolver calls it for every cell, so a
        grid with one impossible cell is rejected before any cell runs; attacks re-check at run time."""

    def prepare(self, model: Any, batch: Batch, objective: Objective) -> Objective:
        """The objective this attack maximises on ``batch``: the task's by default; embedding
        attacks replace it (e.g. with the cosine to the clean features, computed here)."""
        return objective

    @abstractmethod
    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        """Return adversarial pixels inside the threat model (maximising ``objective``)."""

    def run(self, objective: Objective, x: Tensor, batch: Batch | None = None, model: Any = None) -> Tensor:
        """Convenience form ``attack.run(objective, x) -> x_adv``; validity-checked."""
        batch = batch or Batch(pixels=x, labels=torch.zeros(len(x), dtype=torch.long), index=torch.arange(len(x)))
        gen = torch.Generator().manual_seed(self.seed)
        result = self.perturb(model, batch.with_pixels(x), objective, generator=gen)
        check_valid(x, result.pixels, self.norm, self.eps)
        return result.pixels

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """torchattacks-style: untargeted cross-entropy on ``model(x)`` logits; returns ``x_adv``."""
        batch = Batch(pixels=x, labels=y, index=torch.arange(len(x)))
        return self.run(ModuleObjective(loss="ce"), x, batch, model)

    def describe(self) -> dict[str, Any]:
        """Threat-model fields for tables."""
        return {"norm": self.norm or "none", "eps": float(self.eps or 0.0), "steps": int(getattr(self, "steps", 0))}


def check_threat(norm: str, eps: float, steps: int | None = None) -> None:
    """Reject budgets that cannot be meant: eps <= 0, linf eps > 1, steps <= 0."""
    if norm not in ("linf", "l2"):
        raise ConfigError(f"norm={norm!r} must be linf or l2")
    if not math.isfinite(eps) or eps <= 0:
        raise ConfigError(f"eps={eps} must be > 0 (in [0,1] pixel units, e.g. 8/255)")
    if norm == "linf" and eps > 1:
        raise ConfigError(f"eps={eps} must be <= 1 for linf (pixels live in [0,1]); did you mean {eps}/255?")
    if norm == "l2" and eps > L2_MAX_EPS:
        raise ConfigError(f"eps={eps} is not a plausible l2 budget (max {L2_MAX_EPS})")
    if steps is not None and steps <= 0:
        raise ConfigError(f"steps={steps} must be a positive integer")


def project(x: Tensor, x_adv: Tensor, norm: Norm, eps: float) -> Tensor:
    """Project ``x_adv`` onto the eps-ball around ``x`` intersected with [0,1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        delta = delta * (eps / n).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def random_start(x: Tensor, norm: Norm, eps: float, generator: torch.Generator,
                 seeds: Tensor | None = None) -> Tensor:
    """Uniform point in the linf ball, or radius ~ U[0,eps] on a random l2 direction.

    Drawn on CPU so a seed gives the same start on every device; with per-example ``seeds``
    each example's start is independent of the batch it is in. Only the raw draws are made per
    example (each from its own stream); the arithmetic on them is batched.
    """
    n = len(x)
    noise = torch.empty((n, *x.shape[1:]))
    radius = torch.empty(n)
    if seeds is not None:
        row_gen, restart = torch.Generator(), _restart_draw(generator)
        streams = (row_gen.manual_seed(int(s) + 7919 * restart) for s in seeds.tolist())
    else:
        streams = (generator for _ in range(n))
    for i, g in enumerate(streams):
        if norm == "linf":
            noise[i].uniform_(generator=g)
        else:
            noise[i].normal_(generator=g)
            radius[i] = torch.rand(1, generator=g)[0]
    if norm == "linf":
        delta = (noise * 2 - 1) * eps
    else:
        shape = (n, *([1] * (x.dim() - 1)))
        delta = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape) * (radius * eps).view(shape)
    return (x + delta.to(device=x.device, dtype=x.dtype)).clamp(0.0, 1.0)


def _restart_draw(generator: torch.Generator) -> int:
    """A restart counter shared by the batch (advances the caller's generator identically for
    every batch layout), so restarts get fresh per-example starts."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def build(name: str, **overrides: Any) -> Attack:
    """Build a registered attack from its preset, with parameter overrides.

    ``build("pgd", norm="linf", eps=8/255, steps=10, seed=0)``; the result works both as
    ``attack(model, x, y)`` on any classifier on [0,1] images and as ``attack.perturb(...)``.
    The implementations are registered by importing ``robustbench_mm.attacks``.
    """
    preset = load_preset("attack", name, ATTACKS, overrides)
    attack = ATTACKS.get(preset.impl)(**preset.params)
    attack.name = preset.name
    return attack
