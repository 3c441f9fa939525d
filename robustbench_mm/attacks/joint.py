"""Joint image+text attacks on retrieval: Sep-Attack, Co-Attack (Zhang et al., ACM MM 2022) and SGA
(Lu et al., ICCV 2023), from the same two parts: image PGD on the caption-set objective and word
substitution (``bert_attack``). They differ in what guides each part:

- ``separate`` (Sep-Attack): the text against the clean image, the image against the clean captions.
- ``text-first`` (Co-Attack): the text against the clean image first, then the image against the
  clean and the adversarial captions, so it also moves away from the text it will be ranked with.
- ``set-guided`` (SGA): the text against the clean image at every scale, the image against the clean
  and adversarial captions summed over its rescaled copies, then the text again, from the clean
  captions, against the adversarial image at every scale.

On zero-shot classification the text side is the class prompts, on LLaVA / BLIP-2 each row's prompt
(``prompt_substitution``): separate and text-first run there (the image PGD on the task's own loss);
set-guided needs caption sets and is refused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_mm.attacks.base import ATTACKS, Attack, check_threat
from robustbench_mm.attacks.bert_attack import check_word_budget, clean_guides, substitute_captions
from robustbench_mm.attacks.masked_lm import BUNDLED_MLM, check_mlm
from robustbench_mm.attacks.objectives import ClassifierObjective
from robustbench_mm.attacks.pgd import PGD
from robustbench_mm.attacks.prompt_substitution import (
    adversarial_prompt_model, check_prompt_task, class_guides, is_answer_objective, substitute_class_prompts,
    substitute_prompts, with_prompts,
)
from robustbench_mm.attacks.retrieval_objective import (
    CAPTIONS_KEY, GUIDE_KEY, CaptionSetObjective, is_retrieval_objective, rescaled,
)
from robustbench_mm.errors import CapabilityError, ConfigError
from robustbench_mm.types import AttackResult, Batch, Objective

ORDERS = ("separate", "text-first", "set-guided")


@ATTACKS.register("joint")
class JointAttack(Attack):
    """Image PGD plus word substitution, combined in one of ``ORDERS`` (see module docstring).

    Args:
        order: ``separate`` | ``text-first`` | ``set-guided``.
        norm, eps, steps, step_size: the image PGD (random start, highest-loss iterate kept).
        word_budget, top_k, mlm: the word substitution (``bert-attack``'s parameters).
        scales: image rescalings of the set-guided order, besides the image itself.
        seed: random-start seed when no generator is passed.
    """

    def __init__(self, *, order: Literal["separate", "text-first", "set-guided"] = "separate",
                 norm: Literal["linf", "l2"] = "linf", eps: float = 2 / 255, steps: int = 10,
                 step_size: float | None = None, word_budget: int = 1, top_k: int = 10, mlm: str = BUNDLED_MLM,
                 scales: tuple[float, ...] = (), seed: int = 0) -> None:
        if order not in ORDERS:
            raise ConfigError(f"order={order!r} must be one of {', '.join(ORDERS)}")
        check_threat(norm, eps, steps)
        check_word_budget(word_budget)
        if top_k <= 0 or any(s <= 0 for s in scales):
            raise ConfigError(f"top_k={top_k} and scales={list(scales)} must be positive")
        if scales and order != "set-guided":
            raise ConfigError(f"scales apply to order set-guided only (order is {order})")
        check_mlm(mlm)
        self.order, self.norm, self.eps, self.steps = order, norm, eps, steps
        self.image_attack = PGD(norm=norm, eps=eps, steps=steps, step_size=step_size, stop_on_success=False, seed=seed)
        self.step_size = self.image_attack.step_size
        self.word_budget, self.top_k, self.mlm = word_budget, top_k, mlm
        self.scales, self.seed = (1.0, *tuple(float(s) for s in scales)), seed
        self._prompt_model: Any = None  # zero-shot: the victim with the last batch's substituted class prompts

    def check_task(self, objective: Objective, capabilities: frozenset[str]) -> None:
        check_prompt_task(self.name, objective)
        if self.order == "set-guided" and not is_retrieval_objective(objective):
            raise CapabilityError(f"attack {self.name or 'sga'!r}: set-level guidance needs a set of captions per "
                                  f"image (a retrieval task); on classification and LLaVA/BLIP-2 tasks run co-attack or "
                                  f"sep-attack")

    def verdict_model(self, model: Any) -> Any:
        """Zero-shot classification is judged with the last batch's substituted class prompts."""
        return self._prompt_model if self._prompt_model is not None else model

    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        self.check_task(objective, frozenset())
        if is_answer_objective(objective):
            return self.perturb_answer_prompts(model, batch, objective, generator)
        if not is_retrieval_objective(objective):
            return self.perturb_class_prompts(model, batch, objective, generator)  # type: ignore[arg-type]
        captions: list[list[str]] = batch.extra[CAPTIONS_KEY]  # type: ignore[assignment]
        words = dict(word_budget=self.word_budget, top_k=self.top_k, mlm=self.mlm)
        if self.order == "separate":
            texts = substitute_captions(model, batch, clean_guides(model, batch.pixels), **words)  # type: ignore[arg-type]
            image = self.image_attack.perturb(model, guided(batch, captions), CaptionSetObjective(), generator=generator)
            return AttackResult(image.pixels, image.loss, image.queries, texts=texts)
        first_guides = scale_guides(model, batch.pixels, self.scales)
        first = substitute_captions(model, batch, first_guides, **words)  # type: ignore[arg-type]
        both = [list(c) + list(t) for c, t in zip(captions, first)]
        image = self.image_attack.perturb(model, guided(batch, both), CaptionSetObjective(self.scales),
                                          generator=generator)
        if self.order == "text-first":
            return AttackResult(image.pixels, image.loss, image.queries, texts=first)
        texts = substitute_captions(model, batch, scale_guides(model, image.pixels, self.scales), **words)  # type: ignore[arg-type]
        return AttackResult(image.pixels, image.loss, image.queries, texts=texts)

    def perturb_class_prompts(self, model: Any, batch: Batch, objective: ClassifierObjective,
                              generator: torch.Generator) -> AttackResult:
        """Zero-shot classification: the class prompts against the clean images, then the image PGD
        against the clean prompts (separate) or the substituted ones (text-first)."""
        prompts = list(objective.class_prompts)  # type: ignore[arg-type]
        adversarial = substitute_class_prompts(model, batch, prompts, class_guides(model, batch.pixels),
                                               word_budget=self.word_budget, top_k=self.top_k, mlm=self.mlm)
        self._prompt_model = adversarial_prompt_model(model, prompts, adversarial)
        image_objective = objective if self.order == "separate" else with_prompts(objective, adversarial)
        image = self.image_attack.perturb(model, batch, image_objective, generator=generator)
        with torch.no_grad():
            loss = objective(self._prompt_model, image.pixels, batch).float()
        return AttackResult(image.pixels, loss, image.queries)

    def perturb_answer_prompts(self, model: Any, batch: Batch, objective: Objective,
                               generator: torch.Generator) -> AttackResult:
        """LLaVA / BLIP-2: each row's prompt against its answer on the clean image, then the image PGD
        with the clean prompts (separate) or the substituted ones (text-first); the runner generates
        the judged answer from the returned prompt."""
        prompts = substitute_prompts(model, batch, word_budget=self.word_budget, top_k=self.top_k, mlm=self.mlm)
        substituted = replace(batch, prompts=prompts)
        image = self.image_attack.perturb(model, batch if self.order == "separate" else substituted, objective,
                                          generator=generator)
        with torch.no_grad():
            loss = objective(model, image.pixels, substituted).float()
        return AttackResult(image.pixels, loss, image.queries, texts=[[p] for p in prompts])

    def describe(self) -> dict[str, Any]:
        return {"norm": self.norm or "none", "eps": float(self.eps or 0.0), "steps": self.steps}


def guided(batch: Batch, captions: list[list[str]]) -> Batch:
    """``batch`` whose image objective is guided by ``captions`` (one list per row)."""
    return replace(batch, extra={**batch.extra, GUIDE_KEY: captions})


def scale_guides(model: Any, pixels: Tensor, scales: tuple[float, ...]) -> Tensor:
    """Unit image features of each rescaled copy, ``[B,S,D]`` (``scales=(1.0,)`` is the image itself)."""
    with torch.no_grad():
        feats = [F.normalize(model.encode_image(rescaled(pixels, s, model.image_size)).float(), dim=-1) for s in scales]
    return torch.stack(feats, dim=1)
