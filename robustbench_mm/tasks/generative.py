"""Generative tasks for LLaVA / BLIP-2: VQA and captioning, bundled or from ``datasets``.

Prompts are data: ``prompt`` (every family) or ``prompts`` (per model family: LLaVA and BLIP-2
were each evaluated with their own wording). ``{question}`` in a prompt is replaced by the
sample's question; a mapping ``{text: ..., format: plain}`` is read by the language model as it
is, without the model's chat template or VQA format. The model family is bound when the cell is
resolved (``bind_family``); the prompt a row used is recorded in ``asr.parquet`` (``prompt``).

ASR (docs/metrics.md): untargeted = the share of clean-correct samples whose adversarial output is
no longer correct (bundled: the output names the class; VQA datasets: VQA accuracy >= ``threshold``,
0.5 by default; captioning datasets: CIDEr-D >= ``cider_threshold``); targeted = the output contains
the target text (``metrics.contains_target``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from robustbench_mm.attacks.objectives import LMObjective
from robustbench_mm.attacks.retrieval_objective import PROTECTED_KEY
from robustbench_mm.errors import ConfigError
from robustbench_mm.models.base import PlainPrompt
from robustbench_mm.tasks.base import TASKS, Task, to_long
from robustbench_mm.tasks.data import images_to_pixels, load_checked
from robustbench_mm.tasks.metrics import (
    CiderCorpus,
    cider_d,
    contains_target,
    find_class,
    vqa_accuracy,
    vqa_normalize,
    vqa_submission_answer,
)
from robustbench_mm.types import Batch, Objective

GENERATIVE = frozenset({"logprob", "generate"})
FAMILIES = ("llava", "blip2")
PromptSpec = str | Mapping[str, str] | None
# How each family's adapter wraps a (non-plain) prompt.
MODEL_FORMATS = {"llava": "the checkpoint's chat template (llava-1.5: USER: <image>\\n{prompt} ASSISTANT:)",
                 "blip2": "Question: {prompt} Answer:"}


def _prompt_template(spec: PromptSpec, where: str) -> str:
    """A prompt entry of a preset -> a template string (``PlainPrompt`` for ``format: plain``)."""
    if spec is None or isinstance(spec, str):
        return spec or ""
    if not isinstance(spec, Mapping) or not isinstance(spec.get("text"), str) or \
            spec.get("format", "chat") not in ("chat", "plain") or set(spec) - {"text", "format"}:
        raise ConfigError(f"{where}: a prompt is a string or {{text: ..., format: chat|plain}}, not {spec!r}")
    return PlainPrompt(spec["text"]) if spec.get("format") == "plain" else spec["text"]


def _fill(template: str, question: str | None) -> str:
    if question is None:
        return template
    text = template.replace("{question}", question) if template else question
    return PlainPrompt(text) if isinstance(template, PlainPrompt) else text


class GenerativeTask(Task):
    """Shared machinery: loading images + prompts + reference answers, greedy generation."""

    requires = GENERATIVE
    families = frozenset(FAMILIES)
    metric = ""
    threshold: float = 0.5  # datasets: the metric value from which an output counts as correct

    def __init__(self, *, dataset: str, split: str, prompt: PromptSpec, prompts: Mapping[str, PromptSpec] | None,
                 answer_template: str, classes: tuple[str, ...] | None, image_column: str, answers_column: str,
                 question_column: str | None, max_new_tokens: int, target_template: str) -> None:
        if dataset == "bundled:fmnist" and not classes:
            raise ConfigError("bundled:fmnist tasks need params.classes (the class names)")
        unknown = set(prompts or {}) - set(FAMILIES)
        if unknown:
            raise ConfigError(f"params.prompts: unknown model families {sorted(unknown)} (use {', '.join(FAMILIES)})")
        self.dataset, self.split = dataset, split
        self.prompt = _prompt_template(prompt, "params.prompt")
        self.prompts = {f: _prompt_template(p, f"params.prompts.{f}") for f, p in (prompts or {}).items()}
        self.family: str | None = None
        if question_column:
            for where, t in [("prompt", self.prompt), *((f"prompts.{f}", t) for f, t in self.prompts.items())]:
                if t and "{question}" not in t:
                    raise ConfigError(f"params.{where} {str(t)!r} needs a {{question}} placeholder "
                                      f"(the task reads questions from column {question_column!r})")
        self.answer_template, self.classes = answer_template, list(classes or [])
        self.image_column, self.answers_column, self.question_column = image_column, answers_column, question_column
        self.max_new_tokens, self.target_template = max_new_tokens, target_template
        self._ds: Any = None

    @property
    def bundled(self) -> bool:
        return self.dataset == "bundled:fmnist"

    def bind_family(self, family: str) -> None:
        """Use the prompt of model ``family`` from now on (called when a cell is resolved)."""
        self.family = family

    def prompt_for(self, family: str | None) -> str:
        """The prompt template a model of ``family`` gets (``{question}``: the sample's question)."""
        template = self.prompts.get(family or "", self.prompt)
        if not template and self.question_column:
            return "{question}"
        return template

    @property
    def ds(self) -> Any:
        if self._ds is None:
            needed = [self.image_column] + ([self.answers_column] if not self.bundled else ["label"])
            needed += [self.question_column] if self.question_column else []
            self._ds = load_checked(self.dataset, self.split, needed, self.name)
        return self._ds

    def __len__(self) -> int:
        return len(self.ds)

    def load_examples(self, indices: list[int], image_size: int) -> Batch:
        rows = self.ds.select(indices)
        pixels = images_to_pixels(self.dataset, rows[self.image_column], image_size)
        if self.bundled:
            labels = list(rows["label"])
            answers = [[self.answer_template.format(c=self.classes[y])] for y in labels]
            # targeted attacks: make the model name another class (deterministic per sample)
            targets = [self.target_template.format(c=self.classes[(y + 1 + i % 9) % len(self.classes)])
                       for y, i in zip(labels, indices)]
        else:
            answers = [_answer_list(a) for a in rows[self.answers_column]]
            labels = [-1] * len(indices)
            targets = [self.target_template.format(c="dog") for _ in indices]
        template = self.prompt_for(self.family)
        questions = list(rows[self.question_column]) if self.question_column else [None] * len(indices)
        prompts = [_fill(template, q) for q in questions]
        extra: dict[str, object] = {"all_answers": answers}
        if self.bundled:  # word-substitution attacks on the prompt may not name a class in it
            extra[PROTECTED_KEY] = frozenset(w for c in self.classes for w in c.lower().split())
        return Batch(pixels=pixels, labels=to_long(labels), index=to_long(indices), prompts=prompts,
                     answers=[a[0] for a in answers], targets=targets, extra=extra)

    def objective(self, loss: str | None = None) -> Objective:
        if loss in ("margin", "dlr"):  # the answer-token margin (DLR analogue)
            return LMObjective(targeted=False).with_loss(loss)
        if loss not in (None, "lm", "ce"):
            raise ConfigError(f"loss {loss!r} does not apply to generative task {self.name} (use lm or margin)")
        return LMObjective(targeted=False)

    def targeted_objective(self, loss: str | None = None) -> Objective:
        """Make the model say ``batch.targets``: lower the teacher-forced NLL of the target text."""
        return LMObjective(targeted=True)

    def predict(self, model: Any, batch: Batch) -> list[str]:
        assert batch.prompts is not None
        with torch.no_grad():
            return model.generate(batch.pixels, batch.prompts, max_new_tokens=self.max_new_tokens)  # type: ignore

    def targeted_success(self, batch: Batch, adv_prediction: Tensor | list[str]) -> Tensor:
        """The output contains the attacker's target text (``metrics.contains_target``)."""
        assert isinstance(batch.targets, list)
        return torch.tensor([contains_target(p, t) for t, p in zip(batch.targets, adv_prediction)])

    def names_class(self, batch: Batch, prediction: Tensor | list[str]) -> Tensor:
        """Bundled data: the output names the sample's class (whole words, longest name wins)."""
        return torch.tensor([find_class(p, self.classes) == int(y) for p, y in zip(prediction, batch.labels)])

    def correct(self, batch: Batch, prediction: Tensor | list[str]) -> Tensor:
        if self.bundled:
            return self.names_class(batch, prediction)
        return self.score(batch, prediction) >= self.threshold

    def card(self) -> dict[str, Any]:
        """What ``mmrobust list tasks --json`` shows: metric, threshold and each family's prompt."""
        return {"metric": self.metric, "threshold": None if self.bundled else self.threshold,
                "prompt": {f: self.prompt_for(f) for f in FAMILIES},
                "plain_prompt": sorted(f for f in FAMILIES if isinstance(self.prompt_for(f), PlainPrompt)),
                "model_format": {f: "{prompt} (as is, after the image tokens)"
                                 if isinstance(self.prompt_for(f), PlainPrompt) else MODEL_FORMATS[f]
                                 for f in FAMILIES}}


def _answer_list(value: Any) -> list[str]:
    """Reference answers as strings: a string, a list of strings, or VQAv2's list of dicts."""
    if isinstance(value, str):
        return [value]
    return [v["answer"] if isinstance(v, dict) else str(v) for v in value]


@TASKS.register("vqa")
class VQA(GenerativeTask):
    """Visual question answering. Bundled: "What is this?" -> the class name (correct iff the answer
    names the right class); datasets: the official VQA accuracy, correct iff >= ``threshold``.

    Args:
        dataset: ``bundled:fmnist`` or a datasets source with image, question and answers columns.
        prompt: the prompt of every family (bundled data: the question itself).
        prompts: per-family prompts; ``{question}`` is the sample's question.
        answer_processing: ``submission`` runs the model output through the answer processing of
            LLaVA-1.5's and lmms-eval's VQAv2 submission scripts before scoring; ``none`` scores it
            as generated. Either way the official scorer then applies its own rules.
        threshold: the VQA accuracy from which an answer counts as correct (0.5: at least two
            annotators gave it).
    """

    def __init__(self, *, dataset: str = "bundled:fmnist", split: str = "test", prompt: PromptSpec = "What is this?",
                 prompts: Mapping[str, PromptSpec] | None = None, answer_template: str = "{c}",
                 classes: tuple[str, ...] | None = None, image_column: str = "image", answers_column: str = "answers",
                 question_column: str | None = None, max_new_tokens: int = 10, target_template: str = "{c}",
                 answer_processing: str = "submission", threshold: float = 0.5) -> None:
        super().__init__(dataset=dataset, split=split, prompt=prompt, prompts=prompts,
                         answer_template=answer_template, classes=classes, image_column=image_column,
                         answers_column=answers_column, question_column=question_column,
                         max_new_tokens=max_new_tokens, target_template=target_template)
        if answer_processing not in ("submission", "none"):
            raise ConfigError(f"answer_processing {answer_processing!r}: use submission or none")
        if not 0.0 < float(threshold) <= 1.0:
            raise ConfigError(f"threshold {threshold!r} must be in (0, 1]")
        self.answer_processing, self.threshold = answer_processing, float(threshold)

    @property
    def metric(self) -> str:  # type: ignore[override]
        return "class_named" if self.bundled else "vqa_accuracy"

    def answer_score(self, output: str, answers: list[str]) -> float:
        """VQA accuracy of one output; one reference answer: exact match after the official processing."""
        pred = vqa_submission_answer(output) if self.answer_processing == "submission" else output
        if len(answers) == 1:
            return float(vqa_normalize(pred.strip()) == vqa_normalize(answers[0].strip()))
        return vqa_accuracy(pred, answers)

    def score(self, batch: Batch, prediction: Tensor | list[str]) -> Tensor:
        if self.bundled:
            return self.names_class(batch, prediction).float()
        all_answers = batch.extra["all_answers"]
        return torch.tensor([self.answer_score(p, a) for p, a in zip(prediction, all_answers)],  # type: ignore
                            dtype=torch.float64)


@TASKS.register("caption")
class Captioning(GenerativeTask):
    """Captioning. Bundled: "a photo of a {class}" references, correct iff the caption names the right
    class; datasets: CIDEr-D against the references with document frequencies of the whole split,
    correct iff >= ``cider_threshold``."""

    def __init__(self, *, dataset: str = "bundled:fmnist", split: str = "test",
                 prompt: PromptSpec = "Describe the image.", prompts: Mapping[str, PromptSpec] | None = None,
                 answer_template: str = "a photo of a {c}", classes: tuple[str, ...] | None = None,
                 image_column: str = "image", answers_column: str = "answer", question_column: str | None = None,
                 max_new_tokens: int = 16, target_template: str = "a photo of a {c}",
                 cider_threshold: float = 0.5) -> None:
        super().__init__(dataset=dataset, split=split, prompt=prompt, prompts=prompts,
                         answer_template=answer_template, classes=classes, image_column=image_column,
                         answers_column=answers_column, question_column=question_column,
                         max_new_tokens=max_new_tokens, target_template=target_template)
        if float(cider_threshold) <= 0:
            raise ConfigError(f"cider_threshold {cider_threshold!r} must be positive")
        self.cider_threshold = self.threshold = float(cider_threshold)
        self._corpus: CiderCorpus | None = None

    @property
    def metric(self) -> str:  # type: ignore[override]
        return "class_named" if self.bundled else "cider_d"

    @property
    def corpus(self) -> CiderCorpus:
        """CIDEr-D document frequencies over every image of the split (read once)."""
        if self._corpus is None:
            self._corpus = CiderCorpus.from_references([_answer_list(a) for a in self.ds[self.answers_column]])
        return self._corpus

    def score(self, batch: Batch, prediction: Tensor | list[str]) -> Tensor:
        if self.bundled:
            return self.names_class(batch, prediction).float()
        scores = cider_d(list(prediction), batch.extra["all_answers"], corpus=self.corpus)  # type: ignore[arg-type]
        return torch.tensor(scores, dtype=torch.float64)
