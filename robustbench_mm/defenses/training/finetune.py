"""``ClipFinetuneDefense``: adversarial fine-tuning of CLIP towers (MMCoA, TeCoA, top-K RS)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_mm.defenses.training.clip_text import load_clip_weights, save_clip_weights, tower_parameters
from robustbench_mm.defenses.training.paths import recorded_hash
from robustbench_mm.defenses.training.schedule import cosine_lr
from robustbench_mm.defenses.training.template import TrainingDefense


def model_source(model: Any) -> str | None:
    """Local directory the model was loaded from (to copy its preprocessing config), if any."""
    try:
        from robustbench_mm.models.zoo import entry_for

        return entry_for(model.name).resolved_source()
    except Exception:  # noqa: BLE001 - a model built in memory has no source
        return None


class ClipFinetuneDefense(TrainingDefense):
    """Adversarial fine-tuning of CLIP towers (MMCoA, TeCoA, top-K RS); AdamW + cosine schedule.

    Subclasses set ``towers`` (which towers train) and implement ``train_step``; the trained
    model is saved in its own format (``--model <weights dir>`` loads it like any checkpoint).
    """

    towers: tuple[str, ...] = ("vision",)
    lr: float
    weight_decay: float
    warmup: int = 0

    def prepare(self, model: Any) -> nn.Module:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in tower_parameters(model, self.towers):
            p.requires_grad_(True)
        return model.model  # type: ignore[no-any-return]

    def optimizers(self, module: nn.Module, model: Any) -> dict[str, torch.optim.Optimizer]:
        params = [p for p in module.parameters() if p.requires_grad]
        return {"main": torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)}

    def lr_at(self, step: int, phase: str) -> float | None:
        return cosine_lr(step, self.steps, self.lr, self.warmup)

    def export(self, model: Any, module: nn.Module, out: Path) -> None:
        save_clip_weights(model, out, model_source(model))

    def load_trained(self, model: Any, path: Path) -> Any:
        load_clip_weights(model, path)
        base = getattr(model, "revision", "")
        model.revision = f"{base}+{self.name}:{recorded_hash(path)[:8]}"
        model._text_cache.clear()
        return model.freeze()
