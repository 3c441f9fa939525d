"""Randomized smoothing on multimodal classification (image + the sample's own description): the
certified and the attacked classifier are the task's fused classifier, not the image-only zero-shot one."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from robustbench_mm.defenses.rs import RandomizedSmoothing
from robustbench_mm.defenses.rs_certify import ABSTAIN
from robustbench_mm.tasks.crmt_task import MultimodalClassification, fused_logits
from robustbench_mm.types import Batch

SIGMA = 0.25


@pytest.fixture(scope="module")
def clip():  # type: ignore[no-untyped-def]
    from robustbench_mm.models.zoo import load_model

    return load_model("clip-tiny")


@pytest.fixture(scope="module")
def task() -> MultimodalClassification:
    return MultimodalClassification()


def _defense() -> RandomizedSmoothing:
    d = RandomizedSmoothing(sigma=SIGMA, rs_n0=16, rs_n=128, predict_n=64)
    d.name = "rs"
    return d


def _batch(task: MultimodalClassification, n: int, clip) -> Batch:  # type: ignore[no-untyped-def]
    b = task.load_examples([17 * k for k in range(n)], clip.image_size)
    return replace(b, extra={**b.extra, "class_prompts": tuple(task.class_prompts())})


def _wrong_texts(task: MultimodalClassification, b: Batch) -> Batch:
    """Every description names the class after the label: a strong, wrong text signal."""
    texts = [f"a photo of a {task.classes[(int(y) + 1) % 10]}" for y in b.labels]
    return replace(b, extra={**b.extra, "texts": texts})


def test_base_classifier_is_the_fused_classifier_row_by_row(clip, task) -> None:  # type: ignore[no-untyped-def]
    """Noise loops hand over image-major copies; copy j of image i must be fused with text i."""
    d = _defense()
    b = _batch(task, 6, clip)
    f = d.base_classifier(d.apply(clip), task.class_prompts(), b)
    want = fused_logits(clip, b.pixels, b, task.class_prompts()).float()
    torch.testing.assert_close(f(b.pixels), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(f(b.pixels.repeat_interleave(3, 0)), want.repeat_interleave(3, 0), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="multiple"):
        f(b.pixels[:5])


def test_certificate_and_verdict_follow_the_description(clip, task) -> None:  # type: ignore[no-untyped-def]
    """With every text naming a wrong class, the certified and the PREDICT classifier both move
    with the text (an image-only certificate would not), and they agree wherever neither abstains."""
    d = _defense()
    model = d.apply(clip)
    b = _batch(task, 8, clip)
    wrong = _wrong_texts(task, b)
    rows = d.certify(model, wrong, (0.25,))
    pred = rows[rows.quantity == "rs_prediction"].set_index("index")["value"].loc[wrong.index.tolist()]
    shifted = torch.tensor([(int(y) + 1) % 10 for y in wrong.labels])
    assert (torch.tensor(pred.to_numpy()).long() == shifted).float().mean() >= 0.5
    image_only = d.class_logits(model, task.class_prompts())(wrong.pixels).argmax(1)
    assert (torch.tensor(pred.to_numpy()).long() != image_only).any()
    _, votes = d.verdict(task, 16).votes(model, wrong)
    served = votes[0]
    both = (served != ABSTAIN) & (torch.tensor(pred.to_numpy()).long() != ABSTAIN)
    assert both.any() and (served[both] == torch.tensor(pred.to_numpy()).long()[both]).all()


def test_multimodal_rows_have_no_image_only_angle_certificate(clip, task) -> None:  # type: ignore[no-untyped-def]
    from robustbench_mm.defenses.fs_psm.defense import FeatureSmoothing

    fs = FeatureSmoothing(sigma=SIGMA, n0=8, n=64, rs_n0=16, rs_n=64, predict_n=32)
    fs.name = "fs"
    rows = fs.certify(fs.apply(clip), _batch(task, 4, clip), (0.25,))
    assert "angle_certified_accuracy" not in set(rows.quantity)
    assert {"fcsb", "certified_accuracy", "rs_radius"} <= set(rows.quantity)
