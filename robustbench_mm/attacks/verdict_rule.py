"""How the published verdict combines the checks made during an evaluation (protocol data:
``verdict_rule`` in ``tasks/protocols/<version>-v<N>.yaml``).

* ``sticky`` (AutoAttack's rand rule): a sample that any ensemble member's verdict broke stays
  broken; the published robust set is the intersection of every member's robust set and the final
  verdict's. A randomized defense cannot win a sample back by a lucky fresh draw.
* ``final`` (the v1 protocols, kept so their numbers reproduce): only the final, fresh verdict on
  the returned adversarial image counts. For a randomized defense a sample a member broke can be
  published robust when the fresh draws happen to agree with the label: false robustness.

For deterministic models both rules give the same numbers (a member's verdict and the final one
are the same fp32 forward on the same image); they differ only for randomized defenses.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from robustbench_mm.errors import ConfigError

RULES = ("sticky", "final")
DEFAULT_RULE = "sticky"  # cells outside a protocol, and every protocol from v2 on
LEGACY_RULE = "final"  # a protocol file that does not name its rule (the v1 files as published)


def check_rule(rule: object) -> str:
    if rule not in RULES:
        raise ConfigError(f"verdict_rule={rule!r} must be one of {', '.join(RULES)} "
                          f"(sticky: a sample any member broke stays broken)")
    return str(rule)


def member_broken(broken_by: Sequence[str] | None, rows: int) -> Tensor:
    """Bool ``[rows]``: a member's verdict broke the sample (``broken_by`` names it)."""
    if broken_by is None:
        return torch.zeros(rows, dtype=torch.bool)
    return torch.tensor([bool(name) for name in broken_by], dtype=torch.bool)


def published_correct(rule: str, clean_ok: Tensor, final_correct: Tensor, broken_by_member: Tensor) -> Tensor:
    """Robust in the tables: clean-correct, correct under the final verdict, and (``sticky``) never
    broken by a member. All bool ``[B]`` on the CPU."""
    robust = final_correct.cpu().bool() & clean_ok.cpu().bool()
    if check_rule(rule) == "sticky":
        robust &= ~broken_by_member.cpu().bool()
    return robust


class BreakLedger:
    """Every break the verdict procedure decided during one evaluation: per sample index, the first
    stage (ensemble member, or the attack) whose check broke it and how many of that check's draws
    were wrong. Checks inside a member (after each restart or target) count as the member's: under
    the sticky rule any of them keeps the sample broken, as in AutoAttack's rand version."""

    def __init__(self, stage: str = "") -> None:
        self.stage = stage
        self.first: dict[int, tuple[str, int]] = {}

    def record(self, index: Tensor, broken: Tensor, wrong: Tensor) -> None:
        for i, hit, w in zip(index.tolist(), broken.tolist(), wrong.tolist()):
            if hit and int(i) not in self.first:
                self.first[int(i)] = (self.stage or "verdict", int(w))

    def rows(self, index: Tensor) -> tuple[list[str], list[int]]:
        """``broken_by`` ("" = never broken) and wrong draws (0) for the samples ``index``, in order."""
        found = [self.first.get(int(i), ("", 0)) for i in index.tolist()]
        return [s for s, _ in found], [w for _, w in found]
