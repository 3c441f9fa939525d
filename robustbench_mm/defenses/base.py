"""Defense base class and registry."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import pandas as pd

from robustbench_mm.registry import Registry
from robustbench_mm.types import Batch

DEFENSES: Registry[type["Defense"]] = Registry("defense")


class Defense(ABC):
    """A defense either wraps a model at inference or produces new weights by training.

    Traits the runner reads to add adaptive attacks (design 'Trust'):
        randomized: outputs depend on random draws -> attacks get EOT.
        non_differentiable: has pieces without useful gradients -> BPDA.
        rescales_logits: changes the logits' scale -> margin loss is added.
        families: model families it applies to; others fail with one clear line.
        certifies: whether ``certify`` returns bounds (``--certify`` is bad input otherwise).
        draws_per_forward: random draws one forward of the defended model averages (smoothing
            defenses average many); the rand protocol counts its EOT budget in draws.
    """

    randomized: bool = False
    draws_per_forward: int = 1
    non_differentiable: bool = False
    rescales_logits: bool = False
    certifies: bool = False
    families: frozenset[str] = frozenset({"clip", "llava", "blip2"})
    name: str = ""

    @abstractmethod
    def apply(self, model: Any) -> Any:
        """Return the defended model with the same VLM interface."""

    def certify(self, model: Any, batch: Batch, radii: Sequence[float]) -> pd.DataFrame | None:
        """Per-example certified quantities, or None when the defense has no certificate.

        Returns one row per (example, radius, quantity) with columns ``index`` (dataset index),
        ``radius`` (l2, pixel units), ``quantity`` (e.g. ``fcsb``, ``certified_accuracy``),
        ``value`` (``nan`` = abstain), ``abstain`` (bool), ``mc_samples``, ``alpha``.
        ``model`` is the defended model (its ``raw_vision_features`` is the base encoder);
        ``radii`` always includes the attack's l2 eps.
        """
        return None

    def verdict(self, task: Any, draws: int) -> Any:
        """The ``Verdict`` that judges this defense's samples (clean and adversarial), or None for the
        runner's default (fp32, majority of ``draws`` forwards). Smoothing defenses return PREDICT of
        the smoothed classifier they certify, so certified and attacked are the same classifier."""
        return None

    def check_task(self, task: Any) -> None:
        """Raise ``CapabilityError`` (one line naming a task that works) when this defense cannot be
        evaluated honestly on ``task``; the runner calls it before any model loads."""

    def reseed(self, defended: Any, seed: int) -> None:
        """Restart the random state the defended model carries from ``seed``. The runner calls it
        before every batch, so a batch draws the same noise whichever batches ran before it (a shard
        of a cell, a resumed cell and the whole cell agree). A randomized defense must override it."""

    def certificate_radii(self) -> tuple[float, ...]:
        """Radii reported in certified.parquet (preset list)."""
        return ()

    def describe(self) -> dict[str, Any]:
        return {"defense": self.name}
