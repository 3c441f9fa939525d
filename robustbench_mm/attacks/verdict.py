"""The verdict procedure: the one rule that decides whether a sample is broken.

A search's own success flag (one noise draw of a randomized defense, or bf16 logits) only
*nominates* a candidate. A sample is broken -- for an attack's early stopping, for skipping later
restarts, ensemble members and APGD-T targets, and in the tables -- only if its adversarial image
fails the verdict: an fp32 forward (no autocast) for deterministic models; for randomized ones the
majority of ``draws`` fresh forwards. The same rule decides clean correctness.

Majority rule with ``draws = k``: a prediction counts as *correct* only when it is correct in more
than ``k / 2`` draws, so a tie counts as wrong on the clean input (the sample is not robust) and as
wrong on the adversarial one (broken); neither case can make a defense look better.

The runner puts a ``Verdict`` in ``batch.extra[VERDICT_KEY]``; attacks read it with ``verdict_of``.
Without one (an attack called on a plain classifier), the verdict is the objective's own success
test in fp32, one draw.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor

from robustbench_mm.attacks.verdict_rule import BreakLedger
from robustbench_mm.errors import ConfigError
from robustbench_mm.types import Batch

VERDICT_KEY = "verdict"
DEFAULT_DRAWS = 16  # fresh draws per verdict for randomized models
MIN_DRAWS = 8


@contextlib.contextmanager
def fp32_forward(device: torch.device) -> Iterator[None]:
    """No gradients, no autocast: the verdict is never computed in reduced precision."""
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
        yield


def check_draws(draws: int) -> int:
    """``draws`` for a randomized model must be an integer >= MIN_DRAWS."""
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < MIN_DRAWS:
        raise ConfigError(f"verdict_draws={draws!r} must be an integer >= {MIN_DRAWS} for randomized defenses "
                          f"(default {DEFAULT_DRAWS})")
    return draws


@dataclass(frozen=True)
class Verdict:
    """Decides correctness with ``task.predict``/``task.correct`` (or, without a task, the
    objective's success test), in fp32, by majority over ``draws`` fresh forwards."""

    task: Any = None
    draws: int = 1
    # every break this verdict decides is written here (the sticky rule reads it); None = not recorded
    ledger: BreakLedger | None = field(default=None, compare=False)

    @property
    def exact_in_search(self) -> bool:
        """Whether an fp32 search's own success flag already is this verdict (one deterministic draw)."""
        return self.draws == 1

    def votes(self, model: Any, batch: Batch) -> tuple[Tensor, list[Any]]:
        """Per draw: correctness ``bool[D,B]`` (CPU) and the predictions."""
        assert self.task is not None
        preds, oks = [], []
        with fp32_forward(batch.pixels.device):
            for _ in range(self.draws):
                p = self.task.predict(model, batch)
                preds.append(p)
                oks.append(self.task.correct(batch, p).cpu().bool())
        return torch.stack(oks), preds

    def predict(self, model: Any, batch: Batch) -> Tensor | list[str]:
        """A prediction per sample that agrees with the majority verdict (the one the tables record):
        deterministic models return their one fp32 prediction; randomized ones the first draw whose
        correctness matches the majority."""
        return self.judge(model, batch)[0]

    def judge(self, model: Any, batch: Batch) -> tuple[Tensor | list[str], Tensor]:
        """``predict`` and, per sample, the fraction of the verdict's draws that were correct
        (float ``[B]``, CPU; 0 or 1 for one deterministic draw or one PREDICT outcome)."""
        oks, preds = self.votes(model, batch)
        fraction = oks.float().mean(0)
        if len(preds) == 1:
            return preds[0], fraction
        correct = majority(oks)
        pick = (oks == correct[None]).int().argmax(dim=0)  # first draw agreeing with the majority
        if isinstance(preds[0], Tensor):
            stacked = torch.stack([p.cpu() for p in preds])
            return stacked.gather(0, pick[None]).squeeze(0), fraction
        return [preds[int(d)][i] for i, d in enumerate(pick.tolist())], fraction

    def correct(self, model: Any, batch: Batch) -> Tensor:
        """Bool ``[B]`` (CPU): correct by the majority of draws."""
        return majority(self.votes(model, batch)[0])

    def broken(self, model: Any, pixels: Tensor, batch: Batch, objective: Any = None) -> Tensor:
        """Bool ``[B]`` on ``pixels.device``: the (clean-correct) sample is broken at ``pixels``."""
        return self.broken_counts(model, pixels, batch, objective)[0]

    def broken_counts(self, model: Any, pixels: Tensor, batch: Batch, objective: Any = None) -> tuple[Tensor, Tensor]:
        """``broken`` and, per sample, how many of the draws were wrong (int ``[B]``), on ``pixels.device``."""
        pixels = pixels.detach()
        if self.task is not None:
            oks = self.votes(model, batch.with_pixels(pixels))[0]
            broken, wrong = (~majority(oks)).to(pixels.device), (~oks).int().sum(0).to(pixels.device)
        else:
            test = success_test(objective)
            if test is None:
                raise ValueError("this objective cannot tell success; give the verdict a task")
            with fp32_forward(pixels.device):
                wrong = torch.stack([test(model, pixels.float(), batch).bool() for _ in range(self.draws)]).int().sum(0)
            broken = wrong * 2 > self.draws
        if self.ledger is not None:
            self.ledger.record(batch.index, broken, wrong)
        return broken, wrong

    def confirm(self, model: Any, pixels: Tensor, batch: Batch, objective: Any, nominated: Tensor) -> Tensor:
        """The nominated rows that the verdict breaks (others stay False); only they are re-evaluated."""
        if not bool(nominated.any()):
            return nominated
        rows = nominated.nonzero().flatten()
        out = torch.zeros_like(nominated)
        out[rows] = self.broken(model, pixels[rows], batch.select(nominated), objective).to(out.device)
        return out

    def mean_logits(self, logits_fn: Any, model: Any, pixels: Tensor) -> Tensor:
        """fp32 logits averaged over the verdict's draws (APGD-T's target ranking)."""
        with fp32_forward(pixels.device):
            return torch.stack([logits_fn(model, pixels).float() for _ in range(self.draws)]).mean(0)


def majority(oks: Tensor) -> Tensor:
    """Correct in more than half of the draws (``oks`` bool ``[D,B]``)."""
    return oks.int().sum(0) * 2 > oks.shape[0]


def success_test(objective: Any) -> Any:
    """``(model, pixels, batch) -> bool[B]`` from an objective's success information, or None."""
    both = getattr(objective, "loss_and_success", None)
    if callable(both):
        return lambda m, x, b: both(m, x, b)[1]
    single = getattr(objective, "success", None)
    return single if callable(single) else None


def verdict_of(batch: Batch) -> Verdict:
    """The verdict the runner attached to ``batch``, else fp32 with one draw of the objective's test."""
    found = batch.extra.get(VERDICT_KEY) if batch.extra else None
    return found if isinstance(found, Verdict) else Verdict()


def confirm_success(model: Any, x: Tensor, batch: Batch, objective: Any, nominated: Tensor | None,
                    search_dtype: str) -> Tensor | None:
    """A search's success flag turned into verdicts: unchanged when the search already computed the
    verdict (fp32, one deterministic draw); the nominated rows re-judged in fp32 for a bf16 search;
    None (no in-run stopping at all) for randomized models.

    Why no in-run stop for randomized models: the first iterate a k-draw majority breaks sits at the
    boundary, where a fresh majority (the table's verdict) breaks it only about half the time. On a
    noisy toy classifier, stopping there left 52 of 80 samples robust where attacking on (and keeping
    the best-objective iterate) left 41. The verdict is applied after each run instead, so later
    restarts, targets and ensemble members still skip samples it breaks."""
    if nominated is None:
        return None
    verdict = verdict_of(batch)
    if verdict.draws > 1:
        return None
    if search_dtype == "fp32":
        return nominated
    return verdict.confirm(model, x, batch, objective, nominated)


def is_randomized(forward: Any, x: Tensor) -> bool:
    """Whether two identical forwards of ``forward`` on ``x`` differ (a randomized model)."""
    with fp32_forward(x.device):
        a, b = forward(x), forward(x)
    return not torch.equal(a, b)


def judge_run(model: Any, batch: Batch, objective: Any, pixels: Tensor, success: Tensor | None) -> Tensor | None:
    """Success of a finished run (one restart): the search's own (already a verdict) where it has one;
    for randomized models, whose runs do not stop early, the verdict on the run's output, so later
    restarts and targets skip the samples it breaks."""
    verdict = verdict_of(batch)
    if success is not None or verdict.draws == 1:
        return success
    if verdict.task is None and success_test(objective) is None:
        return None
    return verdict.broken(model, pixels, batch, objective)
