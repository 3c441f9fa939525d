"""White-box attacks over Objectives. ``build(name, **overrides)`` makes one from its preset."""

from __future__ import annotations

from typing import Any

from robustbench_mm.attacks.base import ATTACKS, Attack


def build(name: str, **overrides: Any) -> Attack:
    """Build a registered attack from its preset, with parameter overrides.

    ``build("pgd", norm="linf", eps=8/255, steps=10, seed=0)``; the result works both as
    ``attack(model, x, y)`` on any classifier on [0,1] images and as ``attack.perturb(...)``.
    """
    from robustbench_mm.attacks import registry_imports  # noqa: F401  (registers implementations)
    from robustbench_mm.presets import load_preset

    preset = load_preset("attack", name, ATTACKS, overrides)
    attack = ATTACKS.get(preset.impl)(**preset.params)
    attack.name = preset.name
    return attack


__all__ = ["ATTACKS", "Attack", "build"]
