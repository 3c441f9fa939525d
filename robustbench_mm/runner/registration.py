"""Fill the attack, defense and task registries: the first step of turning names into objects.

Each package's ``registry_imports`` imports its implementation modules, which register themselves
by decorator. Only the layer that builds cells from names (this one and above) needs all three.
"""

from __future__ import annotations

from robustbench_mm.attacks import registry_imports as _attacks  # noqa: F401
from robustbench_mm.defenses import registry_imports as _defenses  # noqa: F401
from robustbench_mm.tasks import registry_imports as _tasks  # noqa: F401


def register_all() -> None:
    """Nothing left to do at call time: importing this module registered every implementation.
    Callers keep the call so the dependency reads where it is needed."""
