"""Objectives (losses an attack maximises). Attacks never pick a loss; tasks build these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_mm.types import Batch

LogitsFn = Callable[[Any, Tensor], Tensor]


def ce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Per-example cross-entropy ``[B]``."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def dlr_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Difference-of-logits-ratio (Croce & Hein 2020), per example; scale invariant, needs >= 3 classes."""
    z = logits.float()
    sorted_z, _ = z.sort(dim=1)
    z_y = z.gather(1, labels[:, None]).squeeze(1)
    is_top = sorted_z[:, -1] == z_y
    other_max = torch.where(is_top, sorted_z[:, -2], sorted_z[:, -1])
    return -(z_y - other_max) / (sorted_z[:, -1] - sorted_z[:, -3] + 1e-12)


def margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """CW-style margin ``max_{i != y} z_i - z_y`` (used against defenses that rescale logits)."""
    z = logits.float()
    z_y = z.gather(1, labels[:, None]).squeeze(1)
    others = z.masked_fill(F.one_hot(labels, z.shape[1]).bool(), -float("inf"))
    return others.amax(dim=1) - z_y


CLASSIFICATION_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "ce": ce_loss,
    "dlr": dlr_loss,
    "margin": margin_loss,
}


@dataclass
class ClassifierObjective:
    """Untargeted loss on zero-shot logits; targeted variants minimise the loss towards ``batch.targets``."""

    class_prompts: Sequence[str] | Sequence[Sequence[str]]
    loss: str = "ce"
    targeted: bool = False

    def __call__(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        logits = model.classify(pixels, self.class_prompts)
        fn = CLASSIFICATION_LOSSES[self.loss]
        if self.targeted:
            assert isinstance(batch.targets, Tensor), "targeted objective needs class-id targets"
            return -fn(logits, batch.targets.to(logits.device))
        return fn(logits, batch.labels.to(logits.device))


@dataclass
class FeatureCosineObjective:
    """Untargeted embedding attack: ``1 - cos(f(x'), f(x))`` with ``f`` the model's vision features.

    ``reference`` holds the clean features ``[B,D]`` (computed once, through the same pipeline).
    """

    reference: Tensor

    def __call__(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        feats = model.encode_image(pixels).float()
        return 1 - F.cosine_similarity(feats, self.reference.to(feats.device), dim=-1)


@dataclass
class LMObjective:
    """Generative attacks: untargeted raises the NLL of the reference answer, targeted lowers
    the NLL of the attacker's target text (``batch.targets``)."""

    targeted: bool = False

    def __call__(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        assert batch.prompts is not None and batch.answers is not None
        if self.targeted:
            assert isinstance(batch.targets, list), "targeted LM objective needs target strings"
            return -model.lm_loss(pixels, batch.prompts, batch.targets)
        return model.lm_loss(pixels, batch.prompts, batch.answers)
