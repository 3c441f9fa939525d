"""The clean 'attack': leaves inputs unchanged, so a cell reports clean accuracy."""

from __future__ import annotations

from typing import Any

import torch

from robustbench_mm.attacks.base import ATTACKS, Attack
from robustbench_mm.types import AttackResult, Batch, Objective


@ATTACKS.register("none")
class NoAttack(Attack):
    """Identity: ``x_adv = x``; ASR is 0 by construction."""

    def __init__(self) -> None:
        self.norm = None
        self.eps = None

    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        with torch.no_grad():
            loss = objective(model, batch.pixels, batch)
        return AttackResult(batch.pixels.clone(), loss.detach(), 0)
