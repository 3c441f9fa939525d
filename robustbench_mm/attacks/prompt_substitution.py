"""The text side of word-substitution attacks on zero-shot classification: the class prompts.

A zero-shot classifier's text is one prompt per class, shared by every image. Each class's prompt is
attacked as a caption whose images are the batch's images of that class (BERT-Attack's search in
``bert_attack.substitute_caption``, guided by their features): pushing it away from them lowers the
true-class logit. Class names are protected (renaming a class changes the question, not the model).
The runner judges the batch with the substituted prompts (``verdict_model``), so, as ``text-embed``,
rows depend on which images share a batch.

LLaVA / BLIP-2 prompts are not attacked here: their verdict generates an answer per image from the
prompt, and a prompt substitution would need the answer's loss per candidate (a generation per
word); ``check_prompt_task`` says so and names what runs instead.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_mm.attacks.bert_attack import substitute_caption
from robustbench_mm.attacks.objectives import ClassifierObjective, has_logits
from robustbench_mm.attacks.retrieval_objective import PROTECTED_KEY, is_retrieval_objective, text_features
from robustbench_mm.attacks.text_embed import AdversarialPromptModel
from robustbench_mm.errors import CapabilityError
from robustbench_mm.types import Batch, Objective


def is_class_prompt_objective(objective: Any) -> bool:
    return isinstance(objective, ClassifierObjective) and not objective.targeted


def check_prompt_task(name: str, objective: Objective, *, classification: bool = True) -> None:
    """One clear error for a task whose text side this attack cannot substitute words in."""
    if is_retrieval_objective(objective):
        return
    if classification and is_class_prompt_objective(objective):
        prompts = objective.class_prompts  # type: ignore[attr-defined]
        if prompts and not isinstance(prompts[0], str):
            raise CapabilityError(f"attack {name!r} substitutes words in one prompt per class; this task ensembles "
                                  f"several templates per class: keep one template (a copy of the task preset)")
        return
    where = "zero-shot classification (untargeted) or retrieval" if classification else "retrieval"
    if has_logits(objective) and not isinstance(objective, ClassifierObjective):  # LLaVA / BLIP-2 answers
        raise CapabilityError(f"attack {name!r} substitutes words of CLIP text (captions, class prompts), not "
                              f"LLaVA/BLIP-2 prompts; for those run an image attack (--attack pgd --eps 2/255) "
                              f"or attack the CLIP prompts with --task fmnist-zeroshot / fmnist-retrieval")
    raise CapabilityError(f"attack {name!r} substitutes words of captions or class prompts and needs a {where} "
                          f"task, e.g. --task fmnist-retrieval or --task fmnist-zeroshot with a CLIP model; "
                          f"for LLaVA/BLIP-2 prompts run an image attack (--attack pgd --eps 2/255)")


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
