"""Joint attacks outside retrieval: zero-shot classification (the class prompts are the text side),
LLaVA / BLIP-2 (the prompt is), and the one clear error for what they do not support (SGA without
caption sets, prompt ensembles, losses other than the task's own untargeted one)."""

from __future__ import annotations

import zlib

import pytest
import torch

from robustbench_mm.attacks import build
from robustbench_mm.attacks.objectives import ClassifierObjective
from robustbench_mm.attacks.retrieval_objective import PROTECTED_KEY, text_features
from robustbench_mm.errors import CapabilityError
from robustbench_mm.models.zoo import LoadOptions, load_model
from robustbench_mm.presets import build as build_preset, load_preset
from robustbench_mm.runner.registration import register_all
from robustbench_mm.runner.resolve import CellSpec, resolve
from robustbench_mm.tasks.base import TASKS
from tests.cli_invoke import invoke


class ReadsPromptWords(torch.nn.Module):
    """clip-tiny whose text features also depend on the prompt's template words, so a substitution
    moves them (clip-tiny itself maps every template of a class to nearly the same place)."""

    def __init__(self, model) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.victim = model

    def _text_embed(self, texts):  # type: ignore[no-untyped-def]
        base = self.victim._text_embed(texts)
        noise = torch.stack([torch.randn(base.shape[1], generator=torch.Generator().manual_seed(zlib.crc32(t.encode())))
                             for t in texts]).to(base)
        return base + 3.0 * noise * torch.tensor([0.0 if t.split()[1:2] == ["photo"] else 1.0 for t in texts]).view(-1, 1)

    def classify(self, pixels, class_prompts):  # type: ignore[no-untyped-def]
        image = torch.nn.functional.normalize(self.victim.vision_features(pixels).float(), dim=-1)
        text = torch.nn.functional.normalize(self._text_embed(list(class_prompts)).float(), dim=-1)
        return self.victim.logit_scale_value * image @ text.T

    def __getattr__(self, name):  # type: ignore[no-untyped-def]
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.victim, name)


@pytest.fixture(scope="module")
def zero_shot():  # type: ignore[no-untyped-def]
    register_all()
    task = build_preset(TASKS.get("zero-shot"), load_preset("task", "fmnist-zeroshot", TASKS))
    model = ReadsPromptWords(load_model("clip-tiny", LoadOptions(device="cpu")))
    return task, model, task.load_examples(task.sample_indices(n=32, seed=0), model.image_size)


@pytest.mark.parametrize("name", ["sep-attack", "co-attack"])
def test_joint_attack_substitutes_prompt_words_keeps_class_names_and_is_judged_with_them(zero_shot, name: str) -> None:  # type: ignore[no-untyped-def]
    task, model, batch = zero_shot
    objective = task.objective()
    attack = build(name)
    attack.check_task(objective, frozenset({"classify"}))
    result = attack.perturb(model, batch, objective, generator=torch.Generator().manual_seed(0))
    assert float((result.pixels - batch.pixels).abs().max()) <= 2 / 255 + 1e-6
    judge = attack.verdict_model(model)
    prompts = task.class_prompts()
    # recover the substituted prompts from the judge: its class weights are their text features
    logits = judge.classify(result.pixels, prompts)
    assert logits.shape == (len(batch), len(prompts))
    protected = batch.extra[PROTECTED_KEY]
    changed = 0
    for c, prompt in enumerate(prompts):
        weights = judge.weights[c]
        if torch.allclose(weights, text_features(model, [prompt])[0], atol=1e-5):
            continue
        changed += 1
    assert changed > 0  # the text side did something on a tower that reads the template words
    assert {"t-shirt", "ankle", "boot"} <= set(protected)
    # the verdict is the adversarial one: it breaks at least what the image attack alone breaks on these images
    clean_ok = model.classify(batch.pixels, prompts).argmax(1) == batch.labels
    adv_ok = logits.argmax(1) == batch.labels
    assert int((clean_ok & ~adv_ok).sum()) > 0


def test_substituted_prompts_keep_the_class_name_and_change_at_most_one_word(zero_shot) -> None:  # type: ignore[no-untyped-def]
    from robustbench_mm.attacks.prompt_substitution import class_guides, substitute_class_prompts

    task, model, batch = zero_shot
    prompts = task.class_prompts()
    adversarial = substitute_class_prompts(model, batch, prompts, class_guides(model, batch.pixels),
                                           word_budget=1, top_k=10, mlm="bundled:caption-mlm")
    assert adversarial != prompts
    for clean, adv, name in zip(prompts, adversarial, task.classes):
        assert name in adv
        assert sum(a != b for a, b in zip(clean.split(), adv.split())) <= 1


def test_sga_needs_caption_sets() -> None:
    with pytest.raises(CapabilityError, match="set-level guidance needs a set of captions.*co-attack or sep-attack"):
        resolve(CellSpec(model="clip-tiny", attack="sga", task="fmnist-zeroshot"))


def test_prompt_ensembles_are_refused_with_the_fix() -> None:
    attack = build("co-attack")
    with pytest.raises(CapabilityError, match="keep one template"):
        attack.check_task(ClassifierObjective([["a {c}", "a photo of a {c}"]]), frozenset())


def test_vlm_prompt_substitution_raises_the_answer_loss_and_keeps_class_names() -> None:
    from robustbench_mm.attacks.prompt_substitution import substitute_prompts

    register_all()
    task = build_preset(TASKS.get("caption"), load_preset("task", "fmnist-caption", TASKS))
    model = load_model("blip2-tiny", LoadOptions(device="cpu"))
    batch = task.load_examples(task.sample_indices(n=4, seed=0), model.image_size)
    adversarial = substitute_prompts(model, batch, word_budget=1, top_k=10, mlm="bundled:caption-mlm")
    assert adversarial != batch.prompts  # "Describe the image." has words to replace
    protected = batch.extra[PROTECTED_KEY]
    with torch.no_grad():
        before = model.lm_loss(batch.pixels, batch.prompts, batch.answers)
        after = model.lm_loss(batch.pixels, adversarial, batch.answers)
    for clean, adv in zip(batch.prompts, adversarial):
        a, b = clean.split(), adv.split()
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) <= 1
        assert not set(w.lower() for w in b) & protected
    assert bool((after >= before - 1e-5).all()) and bool((after > before).any())


def test_the_verdict_generates_from_the_substituted_prompts_within_the_budget() -> None:
    from robustbench_mm.errors import ValidityError
    from robustbench_mm.runner.batch_eval import substituted_prompts
    from robustbench_mm.types import Batch

    batch = Batch(pixels=torch.zeros(3, 3, 4, 4), labels=torch.zeros(3, dtype=torch.long), index=torch.arange(3),
                  prompts=["Describe the image."] * 3)
    attacked = torch.tensor([True, False, True])
    sub = batch.select(attacked)
    out = substituted_prompts(batch, attacked, sub, [["Describe the photo"], ["Describe a image."]], 1)
    assert out == ["Describe the photo", "Describe the image.", "Describe a image."]
    assert substituted_prompts(batch, attacked, sub, None, 1) == batch.prompts  # image-only attacks
    with pytest.raises(ValidityError, match="budget 1"):
        substituted_prompts(batch, attacked, sub, [["Explain a photo"], ["Describe the image."]], 1)


def test_co_attack_runs_on_a_vlm_and_sga_there_is_one_clear_error_exit_2(monkeypatch, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    code, out, err = invoke(monkeypatch, capsys, "run", "--model", "blip2-tiny", "--task", "fmnist-caption",
                            "--attack", "co-attack", "--n", "4", "--out", str(tmp_path / "ok"))
    assert code == 0, out + err
    code, out, err = invoke(monkeypatch, capsys, "run", "--model", "llava-tiny", "--task", "fmnist-vqa",
                            "--attack", "sga", "--n", "4", "--out", str(tmp_path / "store"))
    assert code == 2 and "set-level guidance" in err and "co-attack" in err, out + err
    assert not (tmp_path / "store").exists()


def test_other_losses_are_refused_with_the_fix() -> None:
    from robustbench_mm.attacks.objectives import AnswerMarginObjective, LMObjective

    for objective in (AnswerMarginObjective(), LMObjective(targeted=True), ClassifierObjective(["a {c}"], targeted=True)):
        with pytest.raises(CapabilityError, match="untargeted loss.*--attack pgd"):
            build("sep-attack").check_task(objective, frozenset())
