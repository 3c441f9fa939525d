"""Fine-tuning helpers for the generative families (LLaVA, BLIP-2): which parameters train, how
the trained weights are saved in the model's own format and loaded back, and the card's
clean / robust answer accuracy.

Only the image side trains [BENCH]: LLaVA's projector, BLIP-2's Q-Former + query tokens +
language projection, and (switch, on by default) the vision encoder. The language model stays frozen, so the defense
changes what the LM sees, not how it speaks (the same split as CLIP fine-tuning of the vision tower).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_mm.errors import WeightsError

WEIGHTS_FILE = "model.safetensors"
# files of a bundled model directory that describe it but are not part of the loadable model
NOT_COPIED = {WEIGHTS_FILE, "MODEL_CARD.md", "train_metrics.json"}

VISION_TOWER = {"llava": ("vision_tower",), "blip2": ("vision_model",)}
PROJECTOR = {"llava": ("multi_modal_projector",), "blip2": ("qformer", "query_tokens", "language_projection")}


def image_side_parameters(adapter: Any, *, vision_tower: bool = True) -> list[nn.Parameter]:
    """Trainable image-side parameters of a LLaVA / BLIP-2 adapter: the projector side, and the
    vision encoder when ``vision_tower`` (see module docstring)."""
    m = adapter.model
    params: list[Any] = []
    for attr in (VISION_TOWER[adapter.family] if vision_tower else ()) + PROJECTOR[adapter.family]:
        part = getattr(m, attr, None)
        if part is None and hasattr(m, "model"):  # transformers >= 4.52 nests the parts under .model
            part = getattr(m.model, attr, None)
        if part is None:
            raise WeightsError(f"{adapter.name}: no {attr!r} in {type(m).__name__}; cannot fine-tune its image side")
        params.extend([part] if isinstance(part, nn.Parameter) else part.parameters())
    return params


def save_vlm_weights(adapter: Any, out: Path, source: str | None) -> None:
    """``save_pretrained`` (safetensors) plus the tokenizer / processor files of ``source``, so
    ``--model <out>`` (or the transformers class's ``from_pretrained``) loads the defended model."""
    out.mkdir(parents=True, exist_ok=True)
    adapter.model.save_pretrained(out, safe_serialization=True)
    if source and Path(source).is_dir():
        for f in Path(source).iterdir():
            if f.is_file() and f.name not in NOT_COPIED and not (out / f.name).exists():
                shutil.copy(f, out / f.name)
    else:
        adapter.tokenizer.save_pretrained(out)


def load_vlm_weights(adapter: Any, path: Path) -> None:
    """Load what ``save_vlm_weights`` wrote into an adapter of the same architecture, through the
    transformers class's own ``from_pretrained`` (it maps the on-disk checkpoint keys)."""
    if not sorted(path.glob("model*.safetensors")):
        raise WeightsError(f"{path}: no model*.safetensors; delete the directory to retrain")
    dtype = next(adapter.model.parameters()).dtype
    trained = type(adapter.model).from_pretrained(path, use_safetensors=True, local_files_only=True,
                                                  torch_dtype=dtype)
    try:
        adapter.model.load_state_dict(trained.state_dict(), strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: defended weights do not match model {adapter.name!r} "
                           f"({str(exc).splitlines()[0]}); delete the directory to retrain") from None


def vqa_eval(model: Any, *, n: int, eps: float, steps: int, seed: int = 0, batch_size: int = 50
             ) -> dict[str, float]:
    """Clean and PGD (linf, untargeted LM objective) answer accuracy on ``n`` bundled
    ``fmnist-vqa`` images: the defended cards' numbers [BENCH]."""
    import robustbench_mm.tasks.registry_imports  # noqa: F401  (registers the task implementations)
    from robustbench_mm.attacks.pgd import PGD
    from robustbench_mm.presets import load_preset
    from robustbench_mm.tasks.base import TASKS

    preset = load_preset("task", "fmnist-vqa", TASKS)
    task = TASKS.get(preset.impl)(**preset.params)
    task.name = preset.name
    attack = PGD(norm="linf", eps=eps, steps=steps)
    clean = robust = total = 0
    for batch in task.examples(n=n, seed=seed, batch_size=batch_size, image_size=model.image_size):
        batch = batch.to(model.device)
        with torch.no_grad():
            ok = task.correct(batch, task.predict(model, batch)).to(model.device)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + int(batch.index[0]))
        adv = attack.perturb(model, batch, task.objective(), generator=gen).pixels
        with torch.no_grad():
            ok_adv = task.correct(batch, task.predict(model, batch.with_pixels(adv))).to(model.device) & ok
        clean, robust, total = clean + int(ok.sum()), robust + int(ok_adv.sum()), total + len(batch)
    return {"clean_accuracy": clean / total, "robust_accuracy": robust / total, "n": float(total)}
