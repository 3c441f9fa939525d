"""A task preset's metric, threshold and prompts, for ``mmrobust list tasks --json``."""

from __future__ import annotations

from typing import Any

from robustbench_mm.presets import build, load_preset
from robustbench_mm.tasks import registry_imports as _tasks  # noqa: F401  (registers the task implementations)
from robustbench_mm.tasks.base import TASKS


def task_card(name: str) -> dict[str, Any]:
    """``metric``, ``threshold`` (datasets' correctness threshold, else None) and ``prompt``
    (per model family; ``{question}`` is each sample's question) of task preset ``name``."""
    preset = load_preset("task", name, TASKS)
    task = build(TASKS.get(preset.impl), preset)  # constructors read no data
    if hasattr(task, "card"):
        return dict(task.card())
    families = sorted(task.families) or ["clip"]
    prompts = {f: task.prompt_for(f) for f in families}
    return {"metric": str(task.metric), "threshold": None,
            "prompt": prompts if any(prompts.values()) else None, "plain_prompt": []}
