"""Task base class and the task registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from robustbench_mm.errors import ConfigError
from robustbench_mm.registry import Registry
from robustbench_mm.types import Batch, Objective

TASKS: Registry[type["Task"]] = Registry("task")


class Task(ABC):
    """Dataset + prompt + metric + ASR definition.

    Attributes:
        requires: capabilities the model needs (checked before weights load).
        families: model families the task supports (for the bad-input message).
        name: preset name, recorded in tables.
    """

    requires: frozenset[str] = frozenset()
    families: frozenset[str] = frozenset()
    name: str = ""

    @abstractmethod
    def __len__(self) -> int:
        """Number of examples in the evaluation split."""

    @abstractmethod
    def load_examples(self, indices: list[int], image_size: int) -> Batch:
        """Examples at dataset ``indices`` as a CPU batch at ``image_size``."""

    def sample_indices(self, *, n: int | None, seed: int) -> list[int]:
        """The evaluation sample: fixed by (task, seed, n), independent of batch size and device."""
        total = len(self)
        if n is not None and (n <= 0 or n > total):
            raise ConfigError(f"--n {n} must be between 1 and the dataset size {total} of task {self.name}")
        order = np.random.RandomState(seed).permutation(total)
        return [int(i) for i in order[: n or total]]

    def examples(self, *, n: int | None, seed: int, batch_size: int, image_size: int) -> Iterator[Batch]:
        indices = self.sample_indices(n=n, seed=seed)
        for start in range(0, len(indices), batch_size):
            yield self.load_examples(indices[start : start + batch_size], image_size)

    @abstractmethod
    def objective(self, loss: str | None = None) -> Objective:
        """The default objective an attack maximises (``loss`` picks a variant, e.g. ``dlr``)."""

    def targeted_objective(self, loss: str | None = None) -> Objective:
        """Objective that moves the prediction towards ``batch.targets`` (targeted attacks)."""
        from robustbench_mm.errors import CapabilityError

        raise CapabilityError(f"task {self.name} has no targeted objective; use an untargeted attack")

    @abstractmethod
    def predict(self, model: Any, batch: Batch) -> Tensor | list[str]:
        """Predictions on ``batch.pixels`` (class ids ``[B]`` or texts)."""

    @abstractmethod
    def correct(self, batch: Batch, prediction: Tensor | list[str]) -> Tensor:
        """Bool ``[B]``: the prediction is right."""

    metric: str = "accuracy"

    def score(self, batch: Batch, prediction: Tensor | list[str]) -> Tensor:
        """Per-sample value of the task metric, float ``[B]`` (0/1 accuracy unless the task has a
        soft metric such as VQA accuracy or CIDEr-D); ``asr.parquet`` reports its means."""
        return self.correct(batch, prediction).float()

    def prompt_for(self, family: str) -> str:
        """The text prompt a model of ``family`` gets (empty for tasks without one)."""
        return ""

    def success(self, batch: Batch, clean_correct: Tensor, adv_prediction: Tensor | list[str]) -> Tensor:
        """Untargeted ASR numerator (design 'ASR'): clean right and adversarial wrong, bool ``[B]``."""
        return clean_correct & ~self.correct(batch, adv_prediction).to(clean_correct.device)

    def targeted_success(self, batch: Batch, adv_prediction: Tensor | list[str]) -> Tensor:
        """Targeted ASR numerator: the adversarial prediction is ``batch.targets``, bool ``[B]``."""
        from robustbench_mm.errors import CapabilityError

        raise CapabilityError(f"task {self.name} has no targeted success; use an untargeted attack")

    def describe(self) -> dict[str, Any]:
        return {"task": self.name}


def as_list(pred: Tensor | list[str]) -> list[Any]:
    return pred.tolist() if isinstance(pred, Tensor) else list(pred)


def to_long(values: list[int]) -> Tensor:
    return torch.tensor(values, dtype=torch.long)
