"""``mmrobust sanity``: the checks on clip-tiny, with masking controls. A fake defense that only
multiplies the logit scale by 1e4 (same predictions, saturated softmax) must fail the transfer check:
adversarials crafted on the undefended model break it, while white-box APGD-CE on it is fooled. A
real defense (TeCoA's shipped weights) must pass it."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from robustbench_mm.attacks.verdict import Verdict
from robustbench_mm.checks import NAMES, Setting, check_names, sanity_checks
from robustbench_mm.errors import ConfigError

N, STEPS, EPS = 48, 10, 8 / 255


@pytest.fixture(scope="module")
def setup() -> tuple[Any, Any, Any]:
    from robustbench_mm.models.zoo import load_model
    from robustbench_mm.presets import load_preset
    from robustbench_mm.presets import build
    from robustbench_mm.runner.registration import register_all
    from robustbench_mm.tasks.base import TASKS

    register_all()
    task = build(TASKS.get("zero-shot"), load_preset("task", "fmnist-zeroshot", TASKS))
    batch = next(task.examples(n=N, seed=0, batch_size=N, image_size=32))
    return task, batch, load_model("clip-tiny")


def _setting(task: Any, batch: Any, model: Any, surrogate: Any) -> Setting:
    verdict = Verdict(task, 1)
    sub = batch.select(verdict.correct(model, batch))
    sub.seeds = sub.index
    return Setting(model, task.objective(None), sub, lambda x: verdict.correct(model, sub.with_pixels(x)), EPS,
                   STEPS, 0, surrogate=surrogate, surrogate_name="clip-tiny undefended")


def test_logit_rescaling_fails_transfer_and_zero_gradients(setup: tuple[Any, Any, Any]) -> None:
    task, batch, plain = setup
    fake = copy.deepcopy(plain)
    fake.logit_scale_value *= 1e4
    results = {r.name: r for r in sanity_checks(_setting(task, batch, fake, plain),
                                                checks=("zero_gradients", "transfer"))}
    assert list(results) == ["zero_gradients", "transfer"]
    assert not results["transfer"].passed, results["transfer"]
    assert results["transfer"].value < 0.5  # most of the fake's samples fall to transfer from the undefended model
    assert not results["zero_gradients"].passed


def test_real_defense_passes_transfer(setup: tuple[Any, Any, Any]) -> None:
    from tests.defenses.defense_helpers import shipped

    task, batch, plain = setup
    _, tecoa = shipped("tecoa")
    (result,) = sanity_checks(_setting(task, batch, tecoa, plain), checks=("transfer",))
    assert result.passed, result
    assert result.value > 0.5  # undefended-model adversarials mostly fail on the adversarially trained one


def test_transfer_crafts_past_the_first_success(setup: tuple[Any, Any, Any]) -> None:
    """The transfer adversarials are the surrogate's highest-loss points, not its first successes."""
    from robustbench_mm.attacks import build
    from robustbench_mm.checks import MaxLoss

    task, batch, plain = setup
    s = _setting(task, batch, plain, plain)
    objective = task.objective(None)
    attack = build("apgd-ce", norm="linf", eps=EPS, steps=STEPS, seed=0)
    first = attack.perturb(plain, s.batch, objective, generator=torch.Generator().manual_seed(0)).pixels
    far = attack.perturb(plain, s.batch, MaxLoss(objective), generator=torch.Generator().manual_seed(0)).pixels
    with torch.no_grad():
        loss_far, loss_first = objective(plain, far, s.batch), objective(plain, first, s.batch)
    assert bool((loss_far >= loss_first - 1e-3).all())  # the best point of the same trajectory
    assert loss_far.mean() > loss_first.mean() + 0.3
    assert (far - s.batch.pixels).abs().max() <= EPS + 1e-6


def test_check_names() -> None:
    assert check_names(None) == NAMES
    assert check_names("transfer, more-steps") == ("transfer", "more_steps")
    with pytest.raises(ConfigError, match="choose from"):
        check_names("transfr")


def test_cli_bad_check_name_is_one_line_exit_2(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from tests.cli_invoke import invoke

    code, out, err = invoke(monkeypatch, capsys, "sanity", "--model", "clip-tiny", "--checks", "nope")
    assert code == 2 and "choose from" in err and len(err.strip().splitlines()) == 1
