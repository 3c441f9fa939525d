"""Zero-shot image classification with CLIP: prompt templates, accuracy, untargeted ASR."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from robustbench_mm.attacks.objectives import CLASSIFICATION_LOSSES, ClassifierObjective
from robustbench_mm.attacks.retrieval_objective import PROTECTED_KEY
from robustbench_mm.errors import ConfigError
from robustbench_mm.tasks.base import TASKS, Task, to_long
from robustbench_mm.tasks.data import class_names, images_to_pixels, load_checked
from robustbench_mm.types import Batch, Objective


@TASKS.register("zero-shot")
class ZeroShotClassification(Task):
    """Zero-shot classification: logits = logit_scale * cos(image, prompt(class)).

    Args:
        dataset: source string (``bundled:fmnist``, ``disk:/p``, ``imagefolder:/p``, ``hf:cifar10``).
        split: split for hub / DatasetDict sources.
        templates: prompt templates with ``{c}``; several are averaged (prompt ensemble).
        classes: class names, else the dataset's ClassLabel names.
        image_column, label_column: dataset columns.
    """

    requires = frozenset({"classify"})
    families = frozenset({"clip"})

    def __init__(
        self,
        *,
        dataset: str = "bundled:fmnist",
        split: str = "test",
        templates: tuple[str, ...] = ("a photo of a {c}",),
        classes: tuple[str, ...] | None = None,
        image_column: str = "image",
        label_column: str = "label",
    ) -> None:
        if not templates or any("{c}" not in t for t in templates):
            raise ConfigError(f"templates={templates!r}: every template needs a {{c}} placeholder")
        self.dataset, self.split = dataset, split
        self.templates, self.given_classes = tuple(templates), classes
        self.image_column, self.label_column = image_column, label_column
        self._ds: Any = None

    @property
    def ds(self) -> Any:
        if self._ds is None:
            self._ds = load_checked(self.dataset, self.split, [self.image_column, self.label_column], self.name)
        return self._ds

    @property
    def classes(self) -> list[str]:
        return class_names(self.ds, self.label_column, self.given_classes)

    def class_prompts(self) -> list[str] | list[list[str]]:
        """One prompt per class, or per class a list over templates (ensembled by the model)."""
        if len(self.templates) == 1:
            return [self.templates[0].format(c=c) for c in self.classes]
        return [[t.format(c=c) for t in self.templates] for c in self.classes]

    def prompt_for(self, family: str) -> str:
        """The class-prompt template(s), `` | ``-separated when several are ensembled."""
        return " | ".join(self.templates)

    def __len__(self) -> int:
        return len(self.ds)

    def load_examples(self, indices: list[int], image_size: int) -> Batch:
        rows = self.ds.select(indices)
        pixels = images_to_pixels(self.dataset, rows[self.image_column], image_size)
        labels = list(rows[self.label_column])
        n_cls = len(self.classes)
        # a fixed target class per sample for targeted attacks (never the true class)
        targets = to_long([(y + 1 + i % max(1, n_cls - 1)) % n_cls for y, i in zip(labels, indices)])
        # word-substitution attacks on the class prompts keep the class names (renaming one changes the question)
        protected = frozenset(w for c in self.classes for w in str(c).lower().split())
        return Batch(pixels=pixels, labels=to_long(labels), index=to_long(indices), targets=targets,
                     extra={PROTECTED_KEY: protected})

    def targeted_success(self, batch: Batch, adv_prediction: Tensor | list[str]) -> Tensor:
        assert isinstance(adv_prediction, Tensor) and isinstance(batch.targets, Tensor)
        return adv_prediction.cpu() == batch.targets.cpu()

    def objective(self, loss: str | None = None) -> Objective:
        loss = loss or "ce"
        if loss not in CLASSIFICATION_LOSSES:
            raise ConfigError(f"loss {loss!r} is not a classification loss ({', '.join(CLASSIFICATION_LOSSES)})")
        return ClassifierObjective(self.class_prompts(), loss=loss)

    def targeted_objective(self, loss: str | None = None) -> Objective:
        return ClassifierObjective(self.class_prompts(), loss=loss or "ce", targeted=True)

    def predict(self, model: Any, batch: Batch) -> Tensor:
        with torch.no_grad():
            return model.classify(batch.pixels, self.class_prompts()).argmax(dim=1).cpu()

    def correct(self, batch: Batch, prediction: Tensor | list[str]) -> Tensor:
        assert isinstance(prediction, Tensor)
        return prediction.cpu() == batch.labels.cpu()
