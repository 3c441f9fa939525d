"""The ``rs`` defense and the smoothed classifier of ``fs``: certificate rows, verdict, masking control."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import robustbench_mm
from robustbench_mm.defenses.rs import RandomizedSmoothing
from robustbench_mm.defenses.smoothed_class import SmoothedVerdict, curve_radii
from robustbench_mm.errors import CapabilityError
from robustbench_mm.tasks.bundled import fmnist_eval_arrays, to_model_pixels
from robustbench_mm.types import Batch

FMNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
PROMPTS = tuple(f"a photo of a {c}" for c in FMNIST)
SIGMA = 0.25


@pytest.fixture(scope="module")
def clip():  # type: ignore[no-untyped-def]
    from robustbench_mm.models.zoo import load_model

    return load_model("clip-tiny")


class _Task:
    name = "fake-zeroshot"

    def class_prompts(self) -> tuple[str, ...]:
        return PROMPTS

    def correct(self, batch: Batch, pred: Any) -> torch.Tensor:
        return pred.cpu() == batch.labels.cpu()


def _batch(n: int) -> Batch:
    images, labels, _ = fmnist_eval_arrays()
    idx = [31 * k for k in range(n)]
    return Batch(pixels=to_model_pixels(images[idx], 32), labels=torch.as_tensor(labels[idx]),
                 index=torch.as_tensor(idx), extra={"class_prompts": PROMPTS})


def _defense(**kw: Any) -> RandomizedSmoothing:
    d = RandomizedSmoothing(sigma=SIGMA, rs_n0=16, rs_n=128, predict_n=32, **kw)
    d.name = "rs"
    return d


def test_base_classifier_takes_pixels_before_the_models_normalisation(clip) -> None:  # type: ignore[no-untyped-def]
    """The certified base classifier is the model's own zero-shot argmax on [0,1] pixels (noise is added
    there, before the adapter normalises): its logits are the model's cosine logits, up to the scale."""
    x = _batch(4).pixels
    d = _defense()
    ours = d.class_logits(clip, PROMPTS)(x)
    theirs = clip.classify(x, PROMPTS) / clip.logit_scale_value
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_certificate_rows_match_the_api_and_cover_the_curve(clip) -> None:  # type: ignore[no-untyped-def]
    b = _batch(6)
    d = _defense()
    frame = d.certify(d.apply(clip), b, (0.25,))
    acc = frame[frame.quantity == "certified_accuracy"]
    assert set(curve_radii(SIGMA)) | {0.25} == set(acc["radius"]) and max(acc["radius"]) == 4 * SIGMA
    assert (frame[frame.quantity == "certified_accuracy"]["bound_kind"] == "sound").all()
    seeds = [int(i) + 1 + 3_333_333 for i in b.index.tolist()]
    api = robustbench_mm.certify(lambda z: d.class_logits(clip, PROMPTS)(z), b.pixels, b.labels, sigma=SIGMA,
                                 n0=16, n=128, alpha=0.001, seeds=seeds)
    radius = frame[frame.quantity == "rs_radius"].set_index("index")["value"]
    assert torch.allclose(torch.tensor(radius.loc[b.index.tolist()].to_numpy()), api.radius)
    at = acc[acc.radius == 0.25].set_index("index")
    want = api.certified_at(b.labels, 0.25)
    assert (at.loc[b.index.tolist(), "value"].fillna(0).to_numpy() == want.double().numpy()).all()
    # abstentions are NaN + abstain, never a 0 or 1 that a mean could count
    assert (acc[acc.abstain]["value"].isna()).all()


class _RescaledLogits(RandomizedSmoothing):
    """Masking control: only multiplies the base classifier's logits (no argmax changes)."""

    def class_logits(self, model: Any, prompts: Any) -> Any:
        base = super().class_logits(model, prompts)
        return lambda z: 1000.0 * base(z)


def test_rescaling_logits_gains_no_certified_accuracy(clip) -> None:  # type: ignore[no-untyped-def]
    b = _batch(6)
    plain, fake = _defense(), _RescaledLogits(sigma=SIGMA, rs_n0=16, rs_n=128, predict_n=32)
    a = plain.certify(plain.apply(clip), b, (0.25,))
    c = fake.certify(fake.apply(clip), b, (0.25,))
    qa = a[a.quantity == "certified_accuracy"]["value"].fillna(0)
    qc = c[c.quantity == "certified_accuracy"]["value"].fillna(0)
    assert qc.sum() <= qa.sum() and (qa.to_numpy() == qc.to_numpy()).all()


def test_verdict_is_predict_of_the_certified_classifier(clip) -> None:  # type: ignore[no-untyped-def]
    d = _defense()
    v = d.verdict(_Task(), 1)
    assert isinstance(v, SmoothedVerdict) and v.draws > 1  # attacks treat the model as randomized
    b = _batch(4)
    pred = v.predict(clip, b)
    assert pred.shape == (4,) and ((pred >= -1) & (pred < len(PROMPTS))).all()
    assert torch.equal(v.correct(clip, b), pred == b.labels)  # an abstention (-1) is never correct
    assert torch.equal(v.predict(clip, b), pred)  # seeded per sample: the same verdict twice


def test_rs_refuses_tasks_without_classes() -> None:
    class Vqa:
        name = "fmnist-vqa"

    with pytest.raises(CapabilityError, match="fmnist-zeroshot"):
        _defense().check_task(Vqa())
