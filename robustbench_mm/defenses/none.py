"""The undefended baseline."""

from __future__ import annotations

from typing import Any

from robustbench_mm.defenses.base import DEFENSES, Defense


@DEFENSES.register("none")
class NoDefense(Defense):
    """Identity: evaluates the model as loaded."""

    def apply(self, model: Any) -> Any:
        return model
