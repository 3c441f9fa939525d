"""bert-attack and the joint retrieval attacks: budgets, constraints, presets and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustbench_mm.attacks import build
from robustbench_mm.attacks.bert_attack import STOP_WORDS, caption_loss, clean_guides
from robustbench_mm.attacks.masked_lm import known_word
from robustbench_mm.attacks.retrieval_objective import CAPTIONS_KEY, PROTECTED_KEY, CaptionSetObjective
from robustbench_mm.errors import ConfigError
from robustbench_mm.models.zoo import LoadOptions, load_model
from robustbench_mm.presets import build as build_preset, load_preset
from robustbench_mm.runner.registration import register_all
from robustbench_mm.tasks.base import TASKS
from tests.cli_invoke import invoke


@pytest.fixture(scope="module")
def clip_and_batch():  # type: ignore[no-untyped-def]
    register_all()
    task = build_preset(TASKS.get("retrieval"), load_preset("task", "fmnist-retrieval", TASKS))
    model = load_model("clip-tiny", LoadOptions(device="cpu"))
    return model, task.load_examples(task.sample_indices(n=8, seed=0), model.image_size)


def test_substitutions_respect_budget_stop_words_class_names_and_the_victim_tokenizer(clip_and_batch) -> None:  # type: ignore[no-untyped-def]
    model, batch = clip_and_batch
    attack = build("bert-attack", word_budget=2)
    result = attack.perturb(model, batch, CaptionSetObjective(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.pixels, batch.pixels)
    guides = clean_guides(model, batch.pixels)
    protected = batch.extra[PROTECTED_KEY]
    changed_any = 0
    for i, (caps, adv_caps) in enumerate(zip(batch.extra[CAPTIONS_KEY], result.texts)):
        for clean, adv in zip(caps, adv_caps):
            a, b = clean.split(), adv.split()
            assert len(a) == len(b)
            diff = [j for j in range(len(a)) if a[j] != b[j]]
            assert len(diff) <= 2
            for j in diff:
                assert a[j] not in STOP_WORDS and a[j] not in protected  # never replaced
                assert b[j] not in STOP_WORDS and b[j] not in protected and known_word(model, b[j])
            losses = caption_loss(model, [clean, adv], guides[i])
            assert float(losses[1]) >= float(losses[0]) - 1e-6  # a substitution is kept only if it raises the loss
            changed_any += bool(diff)
    assert changed_any > 0  # the attack did substitute words


def test_budget_zero_changes_nothing_and_budget_one_at_most_one_word(clip_and_batch) -> None:  # type: ignore[no-untyped-def]
    model, batch = clip_and_batch
    gen = torch.Generator().manual_seed(0)
    zero = build("bert-attack", word_budget=0).perturb(model, batch, CaptionSetObjective(), generator=gen)
    assert zero.texts == batch.extra[CAPTIONS_KEY]
    one = build("bert-attack").perturb(model, batch, CaptionSetObjective(), generator=gen)
    for caps, adv_caps in zip(batch.extra[CAPTIONS_KEY], one.texts):
        assert all(sum(x != y for x, y in zip(c.split(), a.split())) <= 1 for c, a in zip(caps, adv_caps))


@pytest.mark.parametrize("name", ["bert-attack", "sep-attack", "co-attack", "sga"])
def test_negative_word_budget_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="word_budget=-1 must be an integer >= 0"):
        build(name, word_budget=-1)


def test_missing_masked_lm_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="masked LM .* not found.*AutoModelForMaskedLM"):
        build("bert-attack", mlm=str(tmp_path / "no-such-mlm"))


def test_cli_bad_word_budget_exits_2_and_writes_nothing(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    preset = tmp_path / "bert-minus.yaml"
    preset.write_text("name: bert-minus\nimpl: bert-attack\nversion: 1\nparams:\n  word_budget: -1\n")
    out = tmp_path / "store"
    code, stdout, stderr = invoke(monkeypatch, capsys, "run", "--model", "clip-tiny", "--task", "fmnist-retrieval",
                                  "--attack", str(preset), "--out", str(out))
    assert code == 2 and "word_budget" in stderr + stdout
    assert not out.exists()


def test_joint_presets_carry_the_papers_budgets() -> None:
    for name in ("sep-attack", "co-attack", "sga"):
        attack = build(name)
        assert attack.norm == "linf" and attack.eps == pytest.approx(2 / 255)
        assert attack.steps == 10 and attack.step_size == pytest.approx(0.5 / 255) and attack.word_budget == 1
    assert build("sga").scales == (1.0, 0.5, 0.75, 1.25, 1.5)
    assert build("sep-attack").order == "separate" and build("co-attack").order == "text-first"


def test_joint_attacks_stay_in_budget_and_reuse_the_text_attack(clip_and_batch) -> None:  # type: ignore[no-untyped-def]
    model, batch = clip_and_batch
    text_only = build("bert-attack").perturb(model, batch, CaptionSetObjective(), generator=torch.Generator())
    obj = CaptionSetObjective()
    for name in ("sep-attack", "co-attack", "sga"):
        result = build(name).perturb(model, batch, obj, generator=torch.Generator().manual_seed(0))
        assert float((result.pixels - batch.pixels).abs().max()) <= 2 / 255 + 1e-6
        assert bool((obj(model, result.pixels, batch) > obj(model, batch.pixels, batch)).all())
        if name != "sga":  # Sep- and Co-Attack attack the text against the clean image, as bert-attack does
            assert result.texts == text_only.texts


def test_bert_attack_refuses_classification_tasks() -> None:
    """bert-attack alone attacks captions only (the joint attacks also take class prompts:
    tests/attacks/test_joint_text_sides.py)."""
    from robustbench_mm.errors import CapabilityError
    from robustbench_mm.runner.resolve import CellSpec, resolve

    with pytest.raises(CapabilityError, match="needs a retrieval task"):
        resolve(CellSpec(model="clip-tiny", attack="bert-attack", task="fmnist-zeroshot"))


def test_open_clip_tokenizer_filters_substitutes() -> None:
    """open_clip wraps its Hugging Face tokenizer: words it reads as <unk> are no substitutes."""
    model = load_model("openclip-tiny", LoadOptions(device="cpu"))
    assert known_word(model, "coat") and known_word(model, "close-up")
    assert not known_word(model, "zebra")
