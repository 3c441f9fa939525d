"""The text side of word-substitution attacks outside retrieval: class prompts and VLM prompts.

Zero-shot classification: one prompt per class, shared by every image. Each class's prompt is
attacked as a caption whose images are the batch's images of that class (BERT-Attack's search in
``bert_attack.substitute_caption``, guided by their features): pushing it away from them lowers the
true-class logit. The runner judges the batch with the substituted prompts (``verdict_model``), so,
as ``text-embed``, rows depend on which images share a batch.

LLaVA / BLIP-2 (untargeted answer loss): each row's prompt (the question or instruction, before the
adapter adds its chat format) is searched to raise the teacher-forced NLL of the row's reference
answer; the attack returns it as the row's text and the runner generates the judged answer from it.

Class names are protected in both (renaming a class, or naming one in the question, changes the
question rather than attacking the model).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_mm.attacks.bert_attack import substitute_caption, substitute_words
from robustbench_mm.attacks.objectives import ClassifierObjective, LMObjective
from robustbench_mm.attacks.retrieval_objective import PROTECTED_KEY, is_retrieval_objective, text_features
from robustbench_mm.attacks.text_embed import AdversarialPromptModel
from robustbench_mm.errors import CapabilityError
from robustbench_mm.types import Batch, Objective


def is_class_prompt_objective(objective: Any) -> bool:
    return isinstance(objective, ClassifierObjective) and not objective.targeted


def is_answer_objective(objective: Any) -> bool:
    return isinstance(objective, LMObjective) and not objective.targeted


def check_prompt_task(name: str, objective: Objective) -> None:
    """One clear error for a task whose text side this attack cannot substitute words in."""
    if is_retrieval_objective(objective) or is_answer_objective(objective):
        return
    if is_class_prompt_objective(objective):
        prompts = objective.class_prompts  # type: ignore[attr-defined]
        if prompts and not isinstance(prompts[0], str):
            raise CapabilityError(f"attack {name!r} substitutes words in one prompt per class; this task ensembles "
                                  f"several templates per class: keep one template (a copy of the task preset)")
        return
    raise CapabilityError(f"attack {name!r} substitutes caption or prompt words against the task's own untargeted "
                          f"loss: retrieval, zero-shot classification or LLaVA/BLIP-2 answers (loss lm); drop "
                          f"--loss / the targeted variant, or run an image attack (--attack pgd --eps 2/255)")


def substitute_prompts(model: Any, batch: Batch, *, word_budget: int, top_k: int, mlm: str) -> list[str]:
    """Per row, its prompt with at most ``word_budget`` words substituted to raise the teacher-forced
    NLL of its reference answer given its image (one forward pass per candidate, no generation)."""
    assert batch.prompts is not None and batch.answers is not None
    protected = frozenset(batch.extra.get(PROTECTED_KEY, frozenset()))  # type: ignore[arg-type]
    out = []
    for i, (prompt, answer) in enumerate(zip(batch.prompts, batch.answers)):
        image = batch.pixels[i : i + 1]

        def answer_nll(texts: list[str], image: Tensor = image, answer: str = answer) -> Tensor:
            with torch.no_grad():
                return model.lm_loss(image.expand(len(texts), -1, -1, -1), texts, [answer] * len(texts)).float().cpu()

        out.append(substitute_words(model, prompt, answer_nll, word_budget=word_budget, top_k=top_k, mlm=mlm,
                                    protected=protected))
    return out


def class_guides(model: Any, pixels: Tensor) -> Tensor:
    with torch.no_grad():
        return F.normalize(model.vision_features(pixels).float(), dim=-1)  # as classify sees them


def substitute_class_prompts(model: Any, batch: Batch, prompts: Sequence[str], image_features: Tensor, *,
                             word_budget: int, top_k: int, mlm: str) -> list[str]:
    """Each class prompt with at most ``word_budget`` words substituted against the batch's images of
    that class (``image_features`` ``[B,D]`` unit, one row per image); a class without images keeps its prompt."""
    protected = frozenset(batch.extra.get(PROTECTED_KEY, frozenset()))  # type: ignore[arg-type]
    labels = batch.labels.to(image_features.device)
    out = []
    for c, prompt in enumerate(prompts):
        guide = image_features[labels == c]
        out.append(prompt if not len(guide) else substitute_caption(
            model, prompt, guide, word_budget=word_budget, top_k=top_k, mlm=mlm, protected=protected))
    return out


def adversarial_prompt_model(model: Any, prompts: Sequence[str], adversarial: Sequence[str]) -> AdversarialPromptModel:
    """The victim judging ``prompts`` with the features of the substituted ``adversarial`` prompts."""
    return AdversarialPromptModel(model, list(prompts), text_features(model, list(adversarial)))


def with_prompts(objective: ClassifierObjective, prompts: Sequence[str]) -> ClassifierObjective:
    """The same classification loss against other class prompts (Co-Attack's image step)."""
    return ClassifierObjective(list(prompts), loss=objective.loss)
