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


def dlr_targeted_loss(logits: Tensor, labels: Tensor, targets: Tensor) -> Tensor:
    """Targeted DLR of AutoAttack's APGD-T: ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)``, per example.

    Positive once the target logit exceeds the true one; scale invariant; needs >= 4 classes.
    """
    z = logits.float()
    s, _ = z.sort(dim=1)
    z_y = z.gather(1, labels[:, None]).squeeze(1)
    z_t = z.gather(1, targets[:, None]).squeeze(1)
    return -(z_y - z_t) / (s[:, -1] - 0.5 * (s[:, -3] + s[:, -4]) + 1e-12)


class LogitsObjectiveMixin:
    """Shared loss / success logic for objectives defined on class logits.

    Subclasses provide ``logits(model, pixels) -> [B,C]`` and the fields ``loss`` and ``targeted``.
    Untargeted success: ``argmax != label``; targeted success: ``argmax == batch.targets``.
    """

    loss: str
    targeted: bool

    def logits(self, model: Any, pixels: Tensor) -> Tensor:
        raise NotImplementedError

    def _from_logits(self, logits: Tensor, batch: Batch) -> Tensor:
        labels = batch.labels.to(logits.device)
        if self.targeted:
            if not isinstance(batch.targets, Tensor):
                raise ValueError("targeted objective needs class-id targets in batch.targets")
            targets = batch.targets.to(logits.device)
            if self.loss == "dlr":
                return dlr_targeted_loss(logits, labels, targets)
            return -CLASSIFICATION_LOSSES[self.loss](logits, targets)
        return CLASSIFICATION_LOSSES[self.loss](logits, labels)

    def _success_from_logits(self, logits: Tensor, batch: Batch) -> Tensor:
        pred = logits.argmax(dim=1)
        if self.targeted:
            assert isinstance(batch.targets, Tensor)
            return pred == batch.targets.to(pred.device)
        return pred != batch.labels.to(pred.device)

    def loss_and_success(self, model: Any, pixels: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        """Per-example objective ``[B]`` and success ``bool[B]`` from one forward pass."""
        logits = self.logits(model, pixels)
        return self._from_logits(logits, batch), self._success_from_logits(logits.detach(), batch)

    def success(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        """Bool ``[B]``: the attack has reached its goal at ``pixels``."""
        with torch.no_grad():
            return self._success_from_logits(self.logits(model, pixels), batch)

    def with_loss(self, loss: str, *, targeted: bool | None = None) -> Any:
        """The same objective with another loss (``ce``/``dlr``/``margin``) or targetedness."""
        from dataclasses import replace

        return replace(self, loss=loss, targeted=self.targeted if targeted is None else targeted)  # type: ignore


def bound(objective: Any, batch: Batch) -> Any:
    """``objective`` tied to the rows of ``batch`` when its logits depend on per-row inputs other
    than the pixels (``bind``; e.g. each image's own text in multimodal classification), else as is.
    Callers that only have pixels (``logits(model, pixels)``) must bind to the matching rows first."""
    bind = getattr(objective, "bind", None)
    return bind(batch) if callable(bind) else objective


@dataclass
class ClassifierObjective(LogitsObjectiveMixin):
    """Untargeted loss on zero-shot logits; targeted variants move towards ``batch.targets``
    (``-CE`` to the target, or AutoAttack's targeted DLR for ``loss="dlr"``)."""

    class_prompts: Sequence[str] | Sequence[Sequence[str]]
    loss: str = "ce"
    targeted: bool = False

    def logits(self, model: Any, pixels: Tensor) -> Tensor:
        """Zero-shot logits ``[B,C]`` of ``pixels`` against the class prompts."""
        return model.classify(pixels, self.class_prompts)  # type: ignore[no-any-return]

    def __call__(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        return self._from_logits(self.logits(model, pixels), batch)


@dataclass
class AnswerLogitsObjective(LogitsObjectiveMixin):
    """A generative model as a closed-set classifier: the logits ``[B,C]`` of the first token of
    each class name at the answer position of ``prompt`` (one forward pass, teacher-forced).
    Lets classification attacks (and torchattacks, through ``LogitsModule``) run on LLaVA / BLIP-2
    with the same loss on both sides; the class names' first tokens must be distinct."""

    prompt: str
    classes: Sequence[str]
    loss: str = "ce"
    targeted: bool = False

    def logits(self, model: Any, pixels: Tensor) -> Tensor:
        first = answer_first_tokens(model, self.prompt, self.classes)
        n = len(pixels)
        logits, labels = model.lm_logits(pixels, [self.prompt] * n, [self.classes[0]] * n)
        start = (labels != -100).int().argmax(dim=1)  # first answer token; its logits sit one step before
        rows = logits[torch.arange(n, device=logits.device), start - 1]
        return rows[:, first.to(rows.device)].float()

    def __call__(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        return self._from_logits(self.logits(model, pixels), batch)


def answer_first_tokens(model: Any, prompt: str, classes: Sequence[str]) -> Tensor:
    """Token id that starts each class name when it answers ``prompt`` (as ``lm_logits`` tokenises it)."""
    from robustbench_mm.models.llava import prompt_target_batch

    ids = []
    for c in classes:
        _, _, labels = prompt_target_batch(model.tokenizer, [model.format_prompt(prompt)], [c], "cpu")
        ids.append(int(labels[0][labels[0] != -100][0]))
    if len(set(ids)) != len(ids):
        raise ValueError(f"class names {list(classes)} share first tokens {ids}; answer logits cannot tell them apart")
    return torch.tensor(ids)


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

    def with_loss(self, loss: str, *, targeted: bool | None = None) -> Any:
        """``margin``/``dlr`` on an untargeted LM objective: the answer-token margin; else unchanged."""
        if loss in ("margin", "dlr") and not (self.targeted if targeted is None else targeted):
            return AnswerMarginObjective()
        return self


@dataclass
class AnswerMarginObjective:
    """The DLR analogue for generative answers (untargeted): at each answer token (teacher-forced),
    the best wrong-token logit minus the right token's logit; per sample the maximum over the answer's
    tokens. Positive exactly when greedy decoding leaves the reference answer at some token, and a
    saturated softmax cannot hide it (logit differences, not probabilities)."""

    def __call__(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        assert batch.prompts is not None and batch.answers is not None
        logits, labels = model.lm_logits(pixels, batch.prompts, batch.answers)
        z, y = logits[:, :-1].float(), labels[:, 1:]
        mask = y != -100
        safe = y.clamp_min(0)
        right = z.gather(2, safe[..., None]).squeeze(2)
        wrong = z.scatter(2, safe[..., None], -float("inf")).amax(dim=2)
        margin = (wrong - right).masked_fill(~mask, -float("inf"))
        return margin.amax(dim=1)


@dataclass
class ModuleObjective(LogitsObjectiveMixin):
    """Loss on ``model(pixels)`` logits of a plain classifier ``nn.Module`` (the torchattacks-style call)."""

    loss: str = "ce"
    targeted: bool = False

    def logits(self, model: Any, pixels: Tensor) -> Tensor:
        return model(pixels)  # type: ignore[no-any-return]

    def __call__(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        return self._from_logits(self.logits(model, pixels), batch)


def has_logits(objective: Any) -> bool:
    """Whether ``objective`` is a classification objective (exposes logits, success, with_loss)."""
    return callable(getattr(objective, "logits", None)) and callable(getattr(objective, "with_loss", None))
