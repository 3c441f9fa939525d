"""Zero-shot evaluation helpers the cards use (clean and PGD robust accuracy)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_mm.defenses.training.clip_text import TextInput, image_features, text_features


def zero_shot_eval(model: Any, *, n: int, eps: float, steps: int, seed: int = 0, batch_size: int = 100,
                   norm: str = "linf") -> dict[str, float]:
    """Clean and PGD robust zero-shot accuracy of ``model`` on ``n`` bundled eval images
    (task ``fmnist-zeroshot``, CE objective, step eps/4 for linf) [BENCH]."""
    from robustbench_mm.attacks.objectives import ClassifierObjective
    from robustbench_mm.attacks.pgd import PGD
    from robustbench_mm.tasks.bundled import FMNIST_CLASSES
    from robustbench_mm.tasks.zero_shot import ZeroShotClassification

    task = ZeroShotClassification(classes=tuple(FMNIST_CLASSES))
    task.name = "fmnist-zeroshot"
    prompts = task.class_prompts()
    attack = PGD(norm=norm, eps=eps, steps=steps)  # type: ignore[arg-type]
    clean = robust = total = 0
    for batch in task.examples(n=n, seed=seed, batch_size=batch_size, image_size=model.image_size):
        batch = batch.to(model.device)
        with torch.no_grad():
            ok = model.classify(batch.pixels, prompts).argmax(1) == batch.labels
        gen = torch.Generator().manual_seed(seed * 1_000_003 + int(batch.index[0]))
        adv = attack.perturb(model, batch, ClassifierObjective(prompts), generator=gen).pixels
        with torch.no_grad():
            ok_adv = (model.classify(adv, prompts).argmax(1) == batch.labels) & ok
        clean, robust, total = clean + int(ok.sum()), robust + int(ok_adv.sum()), total + len(batch)
    return {"clean_accuracy": clean / total, "robust_accuracy": robust / total, "n": float(total)}


def zero_shot_logits(adapter: Any, pixels: Tensor, class_text: TextInput) -> Tensor:
    """``s * cos(f_I(x), g_T(t_c))`` with gradients through both towers ``[B,C]``."""
    img = F.normalize(image_features(adapter, pixels).float(), dim=-1)
    txt = F.normalize(text_features(adapter, class_text).float(), dim=-1)
    return adapter.logit_scale_value * img @ txt.T
