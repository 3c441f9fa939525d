"""Bundled multimodal classification (image + text description -> class), the CRMT setting.

Every Fashion-MNIST image of the bundled slice gets a short text description; as in the
missing-modality setting of CRMT (Yang et al., ICLR 2024, docs/methods.md) the text
is unreliable: with probability ``p_missing`` it is missing (empty string; its feature is zeroed,
as the CRMT code zeroes a missing modality [CODE rob_test.py]), with probability ``p_corrupt`` it
names a uniformly drawn *wrong* class, otherwise it names the true class. The template is drawn
from ``templates``. Draws are fixed per dataset index by ``text_seed``, so a sample always has the
same text, independent of batch size and of which samples are evaluated.

The task evaluates any CLIP: a model with ``fused_logits`` (the CRMT late-fusion classifier) uses
it; a plain CLIP uses training-free zero-shot late fusion, ``s cos(f_I(x), T_c) + s cos(g_T(t), T_c)``
with the text term 0 for a missing text. The default objective (CE of the fused logits) attacks
the image only and is a classification objective (the protocol's classification members apply); text-embedding and joint attacks are evaluated by the CRMT defense itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from robustbench_mm.attacks.objectives import CLASSIFICATION_LOSSES, LogitsObjectiveMixin
from robustbench_mm.errors import ConfigError
from robustbench_mm.tasks.base import TASKS, Task, to_long
from robustbench_mm.tasks.bundled import FMNIST_CLASSES
from robustbench_mm.types import Batch, Objective

# Templates whose words are all in the bundled CLIPs' vocabulary (scripts/zoo_common.CAPTION_TEMPLATES).
DEFAULT_TEMPLATES = ("a photo of a {c}", "a picture of a {c}", "an image of a {c}", "this is a {c}",
                     "a black and white photo of a {c}", "a product photo of a {c}")
STATE_CORRECT, STATE_CORRUPT, STATE_MISSING = 0, 1, 2


def draw_texts(labels: Sequence[int], u: np.ndarray, classes: Sequence[str], templates: Sequence[str],
               p_corrupt: float, p_missing: float) -> tuple[list[str], list[int]]:
    """Descriptions and states (0 correct, 1 corrupt, 2 missing) from uniforms ``u [N,3]``:
    ``u[:,0]`` picks the state, ``u[:,1]`` the wrong class, ``u[:,2]`` the template."""
    texts, states = [], []
    C = len(classes)
    for y, (s, w, t) in zip(labels, u):
        y = int(y)
        tmpl = templates[min(int(t * len(templates)), len(templates) - 1)]
        if s < p_missing:
            texts.append("")
            states.append(STATE_MISSING)
        elif s < p_missing + p_corrupt:
            wrong = (y + 1 + min(int(w * (C - 1)), C - 2)) % C
            texts.append(tmpl.format(c=classes[wrong]))
            states.append(STATE_CORRUPT)
        else:
            texts.append(tmpl.format(c=classes[y]))
            states.append(STATE_CORRECT)
    return texts, states


def zero_shot_fusion_logits(model: Any, pixels: Tensor, texts: Sequence[str], class_prompts: Sequence[str]) -> Tensor:
    """Training-free late fusion of zero-shot image and text logits ``[B,C]`` (missing text: 0)."""
    logits = model.classify(pixels, class_prompts)
    present = [i for i, t in enumerate(texts) if t]
    if present:
        emb = model.encode_text([texts[i] for i in present]).to(logits.device)
        text_logits = model.logit_scale_value * emb @ model.class_weights(class_prompts).to(logits.device).T
        logits = logits.index_add(0, torch.tensor(present, device=logits.device), text_logits.to(logits.dtype))
    return logits


def fused_logits(model: Any, pixels: Tensor, batch: Batch, class_prompts: Sequence[str]) -> Tensor:
    return fused_text_logits(model, pixels, list(batch.extra["texts"]), class_prompts)  # type: ignore[arg-type]


def fused_text_logits(model: Any, pixels: Tensor, texts: list[str], class_prompts: Sequence[str]) -> Tensor:
    """Fused logits ``[B,C]`` of ``pixels`` with one description per row (``texts[i]`` for ``pixels[i]``)."""
    if hasattr(model, "fused_logits"):
        return model.fused_logits(pixels, texts)  # type: ignore[no-any-return]
    return zero_shot_fusion_logits(model, pixels, texts, class_prompts)


@dataclass
class FusedObjective(LogitsObjectiveMixin):
    """Image-side attack objective: a classification loss of the fused logits (texts fixed).

    A classification objective like the zero-shot one (margin, DLR, targeted losses; APGD-T, FAB,
    Square), except that the logits depend on each row's own text: every method that receives the
    batch reads the texts from it, and ``logits(model, pixels)`` needs the objective bound to the
    rows first (``bind``; ``attacks.objectives.bound``)."""

    class_prompts: Sequence[str]
    loss: str = "ce"
    targeted: bool = False
    texts: tuple[str, ...] | None = None  # the bound rows' texts

    def bind(self, batch: Batch) -> "FusedObjective":
        return replace(self, texts=tuple(batch.extra["texts"]))  # type: ignore[arg-type]

    def logits(self, model: Any, pixels: Tensor) -> Tensor:
        if self.texts is None or len(self.texts) != len(pixels):
            raise ValueError("FusedObjective.logits needs the objective bound to the same rows (bind(batch))")
        return fused_text_logits(model, pixels, list(self.texts), self.class_prompts)

    def loss_and_success(self, model: Any, pixels: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        return LogitsObjectiveMixin.loss_and_success(self.bind(batch), model, pixels, batch)

    def success(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        return LogitsObjectiveMixin.success(self.bind(batch), model, pixels, batch)

    def __call__(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        return self._from_logits(self.bind(batch).logits(model, pixels), batch)


@TASKS.register("multimodal-classification")
class MultimodalClassification(Task):
    """Fashion-MNIST image + unreliable text description -> class (bundled, offline).

    Args:
        p_corrupt: share of texts naming a wrong class.
        p_missing: share of missing texts (1.0 = the image-only missing-modality test).
        text_seed: seed of the per-index text draws.
        templates: description templates with ``{c}``.
        class_template: prompt of the zero-shot class embeddings (plain-CLIP fusion baseline).
    """

    requires = frozenset({"classify"})
    families = frozenset({"clip"})

    def __init__(self, *, p_corrupt: float = 0.2, p_missing: float = 0.2, text_seed: int = 0,
                 templates: tuple[str, ...] = DEFAULT_TEMPLATES, class_template: str = "a photo of a {c}") -> None:
        if not (0 <= p_corrupt <= 1 and 0 <= p_missing <= 1 and p_corrupt + p_missing <= 1):
            raise ConfigError(f"p_corrupt={p_corrupt}, p_missing={p_missing} must be in [0,1] with sum <= 1")
        if not templates or any("{c}" not in t for t in templates + (class_template,)):
            raise ConfigError(f"templates={templates!r}: every template needs a {{c}} placeholder")
        self.p_corrupt, self.p_missing, self.text_seed = p_corrupt, p_missing, text_seed
        self.templates, self.class_template = tuple(templates), class_template
        self.classes = list(FMNIST_CLASSES)
        self._arrays: Any = None

    @property
    def arrays(self) -> Any:
        if self._arrays is None:
            from robustbench_mm.tasks.bundled import fmnist_eval_arrays

            images, labels, _ = fmnist_eval_arrays()
            u = np.random.RandomState(self.text_seed).rand(len(labels), 3)
            texts, states = draw_texts(labels, u, self.classes, self.templates, self.p_corrupt, self.p_missing)
            self._arrays = (images, labels, texts, states)
        return self._arrays

    def __len__(self) -> int:
        return len(self.arrays[1])

    def class_prompts(self) -> list[str]:
        return [self.class_template.format(c=c) for c in self.classes]

    def load_examples(self, indices: list[int], image_size: int) -> Batch:
        from robustbench_mm.tasks.bundled import to_model_pixels

        images, labels, texts, states = self.arrays
        return Batch(pixels=to_model_pixels(images[indices], image_size), labels=to_long([int(labels[i]) for i in indices]),
                     index=to_long(indices), extra={"texts": [texts[i] for i in indices],
                                                    "text_state": torch.tensor([states[i] for i in indices])})

    def objective(self, loss: str | None = None) -> Objective:
        loss = loss or "ce"
        if loss not in CLASSIFICATION_LOSSES:
            raise ConfigError(f"loss {loss!r} is not a classification loss ({', '.join(CLASSIFICATION_LOSSES)})")
        return FusedObjective(self.class_prompts(), loss)

    def predict(self, model: Any, batch: Batch) -> Tensor:
        with torch.no_grad():
            return fused_logits(model, batch.pixels, batch, self.class_prompts()).argmax(dim=1).cpu()

    def correct(self, batch: Batch, prediction: Tensor | list[str]) -> Tensor:
        assert isinstance(prediction, Tensor)
        return prediction.cpu() == batch.labels.cpu()

