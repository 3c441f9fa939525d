"""Masking control for the shipped FARE encoders (issue 33), at the budget they trained for: the
standard protocol's white-box members must find FARE more robust than the undefended clip-tiny, and
must not find a fake "defense" that only multiplies the logit scale by 1e4 so (cross-entropy alone is
fooled by it). Shared machinery: ``test_masking_control``."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.defenses.test_masking_control import _setup, robust_accuracy

EPS = 4 / 255  # the fare preset's training budget (FARE^4)
GAIN = 0.05  # measured: clip-tiny 62.5%, shipped fare 68.8% on these 48 samples; the fake gains 0 here


@pytest.fixture(scope="module")
def baseline() -> tuple[Any, Any, float]:
    from robustbench_mm.models.zoo import load_model

    task, batch = _setup()
    return task, batch, robust_accuracy(load_model("clip-tiny"), task, batch, eps=EPS)


@pytest.mark.slow
def test_logit_scale_fake_fools_cross_entropy_but_not_the_protocol_at_4_255(baseline: tuple[Any, Any, float]) -> None:
    from robustbench_mm.models.zoo import load_model

    task, batch, none = baseline
    fake = copy.deepcopy(load_model("clip-tiny"))
    fake.logit_scale_value *= 1e4
    assert robust_accuracy(fake, task, batch, ce_only=True, eps=EPS) >= none + GAIN
    assert robust_accuracy(fake, task, batch, eps=EPS) < none + GAIN


@pytest.mark.slow
def test_shipped_fare_passes_the_protocol_at_its_budget(baseline: tuple[Any, Any, float]) -> None:
    from tests.defenses.defense_helpers import shipped

    task, batch, none = baseline
    defense, model = shipped("fare")
    assert defense.eps == EPS
    robust = robust_accuracy(model, task, batch, eps=EPS)
    assert robust >= none + GAIN, (robust, none)
