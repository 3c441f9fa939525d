"""Adaptive variants the runner adds from a defense's declared traits (design 'Trust').

``WithMarginLoss``: a defense that changes the scale of the logits (``rescales_logits``, e.g.
top-K recentralized softmax training, which enlarges raw margins) can saturate the softmax, so
cross-entropy gradients vanish and a CE attack under-reports its success (gradient masking). The
wrapper runs the attack with the task's loss and then, on the samples still standing, the same
attack with the scale-invariant-in-sign margin loss ``max_{j != y} z_j - z_y`` (C&W); the cell
keeps the per-sample worst case. Named ``<attack>+margin`` in the tables.
"""

from __future__ import annotations

from typing import Any

import torch

from robustbench_mm.attacks.base import Attack
from robustbench_mm.attacks.ensemble import run_in_sequence
from robustbench_mm.types import AttackResult, Batch, Objective

MARGIN_LOSSES = frozenset({"margin", "dlr"})


class WithMarginLoss(Attack):
    """``base`` with the task loss, then ``base`` with the margin loss on the samples still standing."""

    def __init__(self, base: Attack) -> None:
        self.base = base
        self.norm, self.eps, self.seed = base.norm, base.eps, base.seed
        self.steps = int(getattr(base, "steps", 0))
        self.restarts = 2 * int(getattr(base, "restarts", 1))
        self.loss = getattr(base, "loss", None)
        self.uses_eot = base.uses_eot
        self.eot = getattr(base, "eot", 1)
        self.search_dtype = getattr(base, "search_dtype", "fp32")

    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        margin = objective.with_loss("margin", targeted=False)  # type: ignore[attr-defined]
        return run_in_sequence(model, batch, objective, [(self.base, objective), (self.base, margin)], generator)

    def describe(self) -> dict[str, Any]:
        return self.base.describe()


def needs_margin(attack: Attack, objective_has_logits: bool) -> bool:
    """Whether ``attack`` on a classification task lacks a margin-type loss (so one is added)."""
    if not objective_has_logits or getattr(attack, "targeted", False) or attack.norm is None:
        return False
    members = getattr(attack, "members", [attack])
    return not any(getattr(m, "loss", None) in MARGIN_LOSSES for m in members)

