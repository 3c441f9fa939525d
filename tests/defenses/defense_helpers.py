"""Helpers shared by the training-defense tests."""

from __future__ import annotations


def shipped(defense_name: str):  # type: ignore[no-untyped-def]
    """The preset's defense and clip-tiny with the shipped weights (never trains in tests)."""
    from robustbench_mm.defenses.base import DEFENSES
    from robustbench_mm.defenses.training import SHIPPED_DIR
    from robustbench_mm.models.zoo import load_model
    from robustbench_mm.presets import load_preset
    from robustbench_mm.runner.resolve import _build, _register_all

    _register_all()
    defense = _build(DEFENSES.get(load_preset("defense", defense_name, DEFENSES).impl),
                     load_preset("defense", defense_name, DEFENSES))
    model = load_model("clip-tiny")
    path = defense.weights_dir(model)
    assert path.parent == SHIPPED_DIR, f"shipped weights of {defense_name} missing or stale; run scripts/train_defenses.py"
    return defense, defense.apply(model)
