"""The retrieval protocol's attack: several retrieval attacks, each over the whole gallery, and per
query the worst case (a query counts as retrieved only if it is retrieved under every member).

Unlike the classification ensemble, members do not run on the survivors of earlier ones: a
retrieval query's rank depends on every other adversarial image and caption, so each member attacks
the whole gallery and the runner (``runner.retrieval_eval``) ranks each member's gallery on its own.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from robustbench_mm.attacks.base import ATTACKS, Attack, build, check_threat
from robustbench_mm.attacks.bert_attack import check_retrieval
from robustbench_mm.errors import ConfigError
from robustbench_mm.types import AttackResult, Batch, Objective


@ATTACKS.register("retrieval-worst-case")
class RetrievalWorstCase(Attack):
    """Members run independently on the gallery; per query the worst of them.

    Args:
        attacks: member preset names (image, text or joint retrieval attacks).
        norm, eps: the image threat model, imposed on every member.
        seed: random-start seed of every member.
    """

    def __init__(self, *, attacks: tuple[str, ...] = ("pgd", "sep-attack", "co-attack", "sga"),
                 norm: Literal["linf", "l2"] = "linf", eps: float = 2 / 255, seed: int = 0) -> None:
        check_threat(norm, eps)
        if not attacks:
            raise ConfigError("attacks must name at least one member preset")
        self.norm, self.eps, self.seed = norm, eps, seed
        self.members: list[Attack] = [build(a, norm=norm, eps=eps, seed=seed) for a in attacks]
        if any(isinstance(m, RetrievalWorstCase) for m in self.members):
            raise ConfigError("a retrieval worst-case member may not be a worst case itself")
        self.steps = max(int(getattr(m, "steps", 0)) for m in self.members)
        self.word_budget = max(int(getattr(m, "word_budget", 0)) for m in self.members)

    def check_task(self, objective: Objective, capabilities: frozenset[str]) -> None:
        check_retrieval(self.name, objective)
        for m in self.members:
            m.check_task(objective, capabilities)

    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        raise ConfigError(f"attack {self.name!r} ranks each member's whole gallery; run it through "
                          f"`mmrobust benchmark --task <name>-retrieval`")
