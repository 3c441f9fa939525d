"""Attacks on the bundled clip-tiny through the real path: objectives, runner cells, text-embed,
embedding attacks, the torchattacks bridge, BPDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchattacks

from robustbench_mm.attacks import build
from robustbench_mm.attacks.eot import bpda, straight_through
from robustbench_mm.attacks.guard import check_valid
from robustbench_mm.attacks.objectives import ClassifierObjective
from robustbench_mm.attacks.text_embed import encode_text_with_delta, text_embedding_attack
from robustbench_mm.attacks.torchattacks_bridge import LogitsModule
from robustbench_mm.tasks.bundled import FMNIST_CLASSES, fmnist_eval_arrays, to_model_pixels
from robustbench_mm.types import Batch

PROMPTS = [f"a photo of a {c}" for c in FMNIST_CLASSES]
EPS = 8 / 255


@pytest.fixture(scope="module")
def clip_tiny():  # type: ignore[no-untyped-def]
    from robustbench_mm.models.zoo import load_model

    torch.set_num_threads(1)
    return load_model("clip-tiny")


@pytest.fixture(scope="module")
def clip_batch(clip_tiny) -> Batch:  # type: ignore[no-untyped-def]
    """Up to 32 of the first 160 bundled images clip-tiny gets right."""
    images, labels, _ = fmnist_eval_arrays()
    x = to_model_pixels(images[:160], clip_tiny.image_size)
    y = torch.as_tensor(labels[:160], dtype=torch.long)
    with torch.no_grad():
        ok = clip_tiny.classify(x, PROMPTS).argmax(1) == y
    assert int(ok.sum()) >= 32, f"clip-tiny gets only {int(ok.sum())}/160 right; retrain the zoo"
    x, y = x[ok][:32], y[ok][:32]
    return Batch(pixels=x, labels=y, index=torch.arange(len(y)), seeds=torch.arange(len(y)))


def _ra(model, objective, x, y) -> float:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        return float((objective.logits(model, x).argmax(1) == y).float().mean())


@pytest.mark.slow
def test_clip_tiny_ours_vs_torchattacks(clip_tiny, clip_batch) -> None:  # type: ignore[no-untyped-def]
    obj = ClassifierObjective(PROMPTS)
    module = LogitsModule(clip_tiny, obj).eval()
    x, y = clip_batch.pixels, clip_batch.labels
    slack = 1 / len(y) + 1e-9
    pairs = {
        "pgd": (dict(steps=10, step_size=EPS / 4), torchattacks.PGD(module, eps=EPS, alpha=EPS / 4, steps=10)),
        "apgd-ce": (dict(steps=10), torchattacks.APGD(module, eps=EPS, steps=10, loss="ce")),
        "apgd-dlr": (dict(steps=10), torchattacks.APGD(module, eps=EPS, steps=10, loss="dlr")),
        "apgd-t": (dict(steps=10, n_targets=3), torchattacks.APGDT(module, eps=EPS, steps=10, n_classes=4)),
    }
    for name, (kw, ref) in pairs.items():
        attack = build(name, eps=EPS, **kw)
        b = clip_batch
        loss = getattr(attack, "loss", None)
        res = attack.perturb(clip_tiny, b, obj.with_loss(loss) if loss else obj,
                             generator=torch.Generator().manual_seed(0))
        check_valid(x, res.pixels, "linf", EPS)
        ours, theirs = _ra(clip_tiny, obj, res.pixels, y), _ra(clip_tiny, obj, ref(x, y), y)
        assert ours <= theirs + slack, f"{name}: ours {ours:.3f} vs torchattacks {theirs:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("attack", ["apgd-ce", "aa-white", "embed", "mf-ii", "mf-it", "text-embed", "ta-square"])
def test_runner_cell(attack: str, tmp_path: Path) -> None:
    from robustbench_mm import api
    from robustbench_mm.runner.resolve import CellSpec

    steps = 50 if attack == "ta-square" else 3
    spec = CellSpec(model="clip-tiny", attack=attack, n=16, batch_size=16, device="cpu", steps=steps)
    summary = api.run_cell(spec, out=tmp_path / "store")
    row = summary.row
    assert summary.status == "ok", row.get("error")
    assert 0.0 <= row["robust_accuracy"] <= row["clean_accuracy"] <= 1.0
    if attack != "text-embed":
        assert row["max_linf"] <= float(build(attack).eps or 0) + 1e-5


def test_text_embedding_attack_raises_loss(clip_tiny) -> None:  # type: ignore[no-untyped-def]
    images, labels, _ = fmnist_eval_arrays()
    x = to_model_pixels(images[:16], clip_tiny.image_size)
    y = torch.as_tensor(labels[:16], dtype=torch.long)
    with torch.no_grad():
        feats = clip_tiny.vision_features(x)
    clean = text_embedding_attack(clip_tiny, PROMPTS, feats, labels=y, eps=1e-6, steps=1)
    adv = text_embedding_attack(clip_tiny, PROMPTS, feats, labels=y, eps=1.0, steps=5)
    assert float(adv.loss) > float(clean.loss)
    assert float(adv.delta.flatten(1).norm(dim=1).max()) <= 1.0 + 1e-5
    again = encode_text_with_delta(clip_tiny, PROMPTS, adv.delta)
    assert torch.allclose(again, adv.text_features, atol=1e-5)
    paired = text_embedding_attack(clip_tiny, PROMPTS[:4], feats[:4], norm="linf", eps=0.05, steps=2)
    assert float(paired.delta.abs().max()) <= 0.05 + 1e-7


def test_mf_it_moves_towards_target_text(clip_tiny) -> None:  # type: ignore[no-untyped-def]
    images, labels, _ = fmnist_eval_arrays()
    x = to_model_pixels(images[:8], clip_tiny.image_size)
    b = Batch(pixels=x, labels=torch.as_tensor(labels[:8]), index=torch.arange(8))
    attack = build("mf-it", steps=5, target_text="a photo of a bag")
    objective = attack.prepare(clip_tiny, b, ClassifierObjective(PROMPTS))
    res = attack.perturb(clip_tiny, b, objective, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float(objective(clip_tiny, res.pixels, b).mean()) > float(objective(clip_tiny, x, b).mean())


def test_bpda_value_and_gradient() -> None:
    x = torch.rand(4, 3, 8, 8, requires_grad=True)
    quant = lambda t: (t * 7).round() / 7  # noqa: E731 - non-differentiable (zero gradient a.e.)
    for fn in (bpda(quant), straight_through(quant)):
        y = fn(x)
        assert torch.allclose(y, quant(x.detach()), atol=1e-6)
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.allclose(g, torch.ones_like(x))
