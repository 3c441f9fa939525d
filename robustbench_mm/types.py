"""Shared value types: batches, threat models, the Objective protocol, attack results."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, NamedTuple, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from robustbench_mm.models.base import VLM

Norm = Literal["linf", "l2"]
NORMS: tuple[Norm, ...] = ("linf", "l2")
Capability = Literal["features", "classify", "logprob", "generate"]


@dataclass
class Batch:
    """A batch of evaluation examples.

    Attributes:
        pixels: ``[B,3,H,W]`` float in [0,1] at the model's resolution, unnormalised.
        labels: ``[B]`` long class indices (zero-shot) or answer ids (generative tasks).
        index: ``[B]`` long positions in the task's dataset, for tracing rows to samples.
        prompts: per-example text prompts for generative tasks (None for classification).
        answers: per-example reference answers for generative tasks.
        targets: per-example attacker target strings or class ids for targeted attacks.
        seeds: per-example seeds ``[B]`` for attack randomness, so an example's random start does
            not depend on which batch it lands in (batch size, OOM halving, device).
    """

    pixels: Tensor
    labels: Tensor
    index: Tensor
    prompts: list[str] | None = None
    answers: list[str] | None = None
    targets: list[str] | Tensor | None = None
    extra: dict[str, object] = field(default_factory=dict)
    seeds: Tensor | None = None

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    def with_pixels(self, pixels: Tensor) -> "Batch":
        return replace(self, pixels=pixels)

    def select(self, mask: Tensor) -> "Batch":
        """Sub-batch of the rows where ``mask`` (bool ``[B]``) is true."""
        return self.take(mask.nonzero().flatten())

    def take(self, idx: Tensor) -> "Batch":
        """The rows ``idx`` (long ``[K]``) in that order; a row may repeat."""
        keep, n = idx.tolist(), len(self)

        def pick(v: object) -> object:
            if isinstance(v, Tensor) and v.shape[:1] == (n,):
                return v[idx.to(v.device)]
            if isinstance(v, list) and len(v) == n:
                return [v[i] for i in keep]
            return v

        return Batch(
            pixels=self.pixels[idx.to(self.pixels.device)],
            labels=pick(self.labels),  # type: ignore[arg-type]
            index=pick(self.index),  # type: ignore[arg-type]
            prompts=pick(self.prompts),  # type: ignore[arg-type]
            answers=pick(self.answers),  # type: ignore[arg-type]
            targets=pick(self.targets),  # type: ignore[arg-type]
            extra={k: pick(v) for k, v in self.extra.items()},
            seeds=pick(self.seeds),  # type: ignore[arg-type]
        )

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(
            pixels=self.pixels.to(device),
            labels=self.labels.to(device),
            index=self.index,
            prompts=self.prompts,
            answers=self.answers,
            targets=self.targets.to(device) if isinstance(self.targets, Tensor) else self.targets,
            extra=self.extra,
            seeds=self.seeds,
        )


@dataclass(frozen=True)
class ThreatModel:
    """Perturbation budget in [0,1] pixel units at model resolution."""

    norm: Norm
    eps: float


class Objective(Protocol):
    """What an attack maximises, per example. Built by a task for a model."""

    def __call__(self, model: "VLM", pixels: Tensor, batch: Batch) -> Tensor:
        """Return the per-example loss ``[B]`` to maximise (higher = more adversarial)."""
        ...


class AttackResult(NamedTuple):
    """Adversarial pixels ``[B,3,H,W]``, final objective value ``[B]``, gradient queries used,
    (ensembles) per sample the name of the member whose output the verdict broke ("" = none), and
    (text and joint attacks) per sample its adversarial captions (None = the texts are unchanged)."""

    pixels: Tensor
    loss: Tensor
    queries: int
    broken_by: list[str] | None = None
    texts: list[list[str]] | None = None
