"""White-box attacks over Objectives. ``build(name, **overrides)`` makes one from its preset.

Importing the package registers every implementation (``registry_imports``), so a preset's
``impl`` always resolves, whichever attack module was imported first.
"""

from __future__ import annotations

from robustbench_mm.attacks import registry_imports as _registry_imports  # noqa: F401
from robustbench_mm.attacks.base import ATTACKS, Attack, build

__all__ = ["ATTACKS", "Attack", "build"]
