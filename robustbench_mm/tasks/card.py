"""A task preset's metric, threshold and prompts, for ``mmrobust list tasks --json``."""

from __future__ import annotations

from typing import Any


def task_card(name: str) -> dict[str, Any]:
    """``metric``, ``threshold`` (datasets' correctness threshold, else None) and ``prompt``
    (per model family; ``{question}`` is each sample's question) of task preset ``name``."""
    from robustbench_mm.presets import load_preset
    from robustbench_mm.runner.resolve import _build, _register_all
    from robustbench_mm.tasks.base import TASKS

    _register_all()
    preset = load_preset("task", name, TASKS)
    task = _build(TASKS.get(preset.impl), preset)  # constructors read no data
    if hasattr(task, "card"):
        return dict(task.card())
    families = sorted(task.families) or ["clip"]
    prompts = {f: task.prompt_for(f) for f in families}
    return {"metric": str(task.metric), "threshold": None,
            "prompt": prompts if any(prompts.values()) else None, "plain_prompt": []}
