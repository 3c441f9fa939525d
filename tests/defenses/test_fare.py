"""FARE and Sim-CLIP (issue 33): the losses, the inner attack, the frozen target and ``mmrobust train``."""

from __future__ import annotations

import math

import pytest
import torch

from robustbench_mm.defenses.fare import FARE, SimCLIP, embedding_pgd, fare_loss, sim_clip_loss
from tests.cli_invoke import invoke


def test_fare_loss_is_the_squared_l2_distance_per_sample() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    expected = [sum((float(a[i, j]) - float(b[i, j])) ** 2 for j in range(5)) for i in range(3)]
    assert torch.allclose(fare_loss(a, b), torch.tensor(expected), atol=1e-5)
    assert float(fare_loss(a, a).abs().max()) == 0.0


def test_sim_clip_loss_is_negative_cosine_with_no_gradient_into_the_clean_branch() -> None:
    g = torch.Generator().manual_seed(1)
    adv = torch.randn(4, 6, generator=g, requires_grad=True)
    clean = torch.randn(4, 6, generator=g, requires_grad=True)
    loss = sim_clip_loss(adv, clean)
    a, c = adv.detach().tolist(), clean.detach().tolist()
    cos = [sum(a[i][j] * c[i][j] for j in range(6))
           / math.sqrt(sum(v * v for v in a[i]) * sum(v * v for v in c[i])) for i in range(4)]
    assert torch.allclose(loss, -torch.tensor(cos), atol=1e-5)
    loss.sum().backward()
    assert clean.grad is None and adv.grad is not None and float(adv.grad.abs().sum()) > 0
    assert torch.allclose(sim_clip_loss(clean, clean), -torch.ones(4), atol=1e-5)


def test_embedding_pgd_stays_in_the_ball_and_raises_the_loss() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(5, 3, 4, 4, generator=g)
    w = torch.randn(48, generator=g)
    loss_of = lambda z: z.flatten(1) @ w  # noqa: E731
    z = embedding_pgd(loss_of, x, eps=4 / 255, steps=3, alpha=2 / 255, random_start=True,
                      gen=torch.Generator().manual_seed(0))
    assert float((z - x).abs().max()) <= 4 / 255 + 1e-6 and 0 <= float(z.min()) and float(z.max()) <= 1
    assert (loss_of(z) > loss_of(x)).all()
    assert torch.equal(embedding_pgd(loss_of, x, eps=0.0, steps=3, alpha=1.0, random_start=True,
                                     gen=torch.Generator()), x)


def test_bad_budget_is_a_config_error() -> None:
    from robustbench_mm.errors import ConfigError

    with pytest.raises(ConfigError, match="eps"):
        FARE(eps=4.0)
    with pytest.raises(ConfigError, match="pgd_steps"):
        SimCLIP(pgd_steps=-1)


def _drifted_clip_tiny(defense: FARE):  # type: ignore[no-untyped-def]
    """clip-tiny after ``prepare`` with its vision tower moved, as it is a few updates into training."""
    from robustbench_mm.defenses.training import tower_parameters
    from robustbench_mm.models.zoo import load_model

    model = load_model("clip-tiny")
    defense.prepare(model)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in tower_parameters(model, ("vision",)):
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _pixels(n: int = 8) -> torch.Tensor:
    from robustbench_mm.tasks.bundled import fmnist_eval_arrays, to_model_pixels

    images, _, _ = fmnist_eval_arrays()
    return to_model_pixels(images[:n], 32)


def test_fare_loss_targets_the_frozen_original_encoder() -> None:
    from robustbench_mm.defenses.training import image_features
    from robustbench_mm.models.zoo import load_model

    fare = FARE(eps=4 / 255)
    model = _drifted_clip_tiny(fare)
    x = _pixels()
    with torch.no_grad():
        original = image_features(load_model("clip-tiny"), x)  # an independent copy of phi_0
        moved = image_features(model, x)
        expected = (moved - original).pow(2).sum(-1).mean()
        got = fare.loss(model, x, x)
    # with the moving encoder as target the loss at x_adv = x would be exactly 0
    assert float(expected) > 1e-3
    assert abs(float(got) - float(expected)) <= 1e-4 * float(expected)


def test_fare_inner_attack_targets_the_frozen_original_encoder() -> None:
    """From z = x with no random start, the gradient of ||phi(z) - t||^2 vanishes when t = phi(x);
    only the frozen target phi_0(x) gives the attack a direction, so a moving target fails here."""
    fare = FARE(eps=4 / 255, pgd_steps=2, random_start=False)
    model = _drifted_clip_tiny(fare)
    x = _pixels()
    x_adv = fare.attack(model, x, torch.Generator().manual_seed(0))
    assert float((x_adv - x).abs().max()) <= 4 / 255 + 1e-6
    assert float((x_adv - x).abs().amax(dim=(1, 2, 3)).min()) > 0  # every image moved
    with torch.no_grad():
        assert float(fare.loss(model, x, x_adv)) > float(fare.loss(model, x, x))


@pytest.mark.slow
def test_fare_training_steps_lower_the_loss_at_fixed_adversarial_images() -> None:
    fare = FARE(eps=4 / 255, pgd_steps=2, lr=5e-4, warmup=0)
    model = _drifted_clip_tiny(fare)
    module = model.model
    opt = fare.optimizers(module, model)["main"]
    x = _pixels(16)
    x_adv = fare.attack(model, x, torch.Generator().manual_seed(0))
    before = float(fare.loss(model, x, x_adv))
    for _ in range(5):
        loss = fare.loss(model, x, x_adv)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(fare.loss(model, x, x_adv)) < before


def test_presets_carry_the_papers_budgets_and_settings() -> None:
    from robustbench_mm.defenses.base import DEFENSES
    from robustbench_mm.presets import build, load_preset
    from robustbench_mm.runner.registration import register_all

    register_all()
    got = {n: build(DEFENSES.get(load_preset("defense", n, DEFENSES).impl), load_preset("defense", n, DEFENSES))
           for n in ("fare", "fare2", "fare-paper", "sim-clip", "sim-clip2", "sim-clip-paper")}
    assert [round(got[n].eps * 255, 6) for n in ("fare", "fare2", "sim-clip", "sim-clip2")] == [4, 2, 4, 2]
    paper = got["fare-paper"]
    assert (paper.pgd_steps, round(paper.pgd_alpha * 255, 6), paper.steps, paper.batch_size, paper.lr,
            paper.warmup) == (10, 1, 20000, 128, 1e-5, 1400)
    sim = got["sim-clip-paper"]
    assert (sim.steps, sim.batch_size, sim.lr, sim.weight_decay) == (10000, 64, 1e-3, 1e-5)
    assert all(d.towers == ("vision",) for d in got.values())


def test_train_eps_override_reuses_the_shipped_fare2_weights(monkeypatch, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MMROBUST_CACHE", str(tmp_path))
    code, out, err = invoke(monkeypatch, capsys, "train", "--defense", "fare", "--model", "clip-tiny", "--eps", "2/255")
    assert code == 0, err
    assert "reused" in out and "weights/fare2-clip-tiny" in out
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_train_rejects_a_budget_outside_pixel_range(monkeypatch, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MMROBUST_CACHE", str(tmp_path))
    code, out, err = invoke(monkeypatch, capsys, "train", "--defense", "fare", "--model", "clip-tiny", "--eps", "4")
    assert code == 2 and "eps" in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
