"""PGD: validity guard, determinism, strength against torchattacks.PGD on a trained classifier."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustbench_mm.attacks import build
from robustbench_mm.attacks.guard import check_valid
from robustbench_mm.errors import ValidityError


@pytest.fixture(scope="module")
def mlp_and_data(fmnist_model) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """The small network of tests/attacks/conftest.py and 128 held-out images (not filtered)."""
    model, held_out = fmnist_model
    return model, held_out.x[:128], held_out.y[:128]


def _acc(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_guard_rejects_violations() -> None:
    x = torch.rand(2, 3, 4, 4) * 0.5 + 0.25
    check_valid(x, x + 0.01, "linf", 0.02)
    with pytest.raises(ValidityError, match="exceeds eps"):
        check_valid(x, x + 0.03, "linf", 0.02)
    with pytest.raises(ValidityError, match=r"\[0,1\]"):
        check_valid(x, x + 1.0, "linf", 2.0)
    with pytest.raises(ValidityError, match="NaN"):
        check_valid(x, x * float("nan"), "linf", 0.1)
    with pytest.raises(ValidityError, match="l2"):
        check_valid(x, x + 0.05, "l2", 0.1)  # l2 of 0.05 over 48 pixels = 0.35
    with pytest.raises(ValidityError, match="changed the input"):
        check_valid(x, x + 0.01, None, None)


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_pgd_in_ball_and_deterministic(mlp_and_data, norm: str, eps: float) -> None:  # type: ignore[no-untyped-def]
    model, x, y = mlp_and_data
    attack = build("pgd", norm=norm, eps=eps, steps=5, seed=3)
    a1, a2 = attack(model, x, y), attack(model, x, y)
    assert torch.equal(a1, a2)
    check_valid(x, a1, norm, eps)  # type: ignore[arg-type]
    assert not torch.equal(a1, build("pgd", norm=norm, eps=eps, steps=5, seed=4)(model, x, y))


def test_pgd_at_least_as_strong_as_torchattacks(mlp_and_data) -> None:  # type: ignore[no-untyped-def]
    import torchattacks

    model, x, y = mlp_and_data
    eps, steps = 8 / 255, 10
    clean = _acc(model, x, y)
    ours = _acc(model, build("pgd", norm="linf", eps=eps, steps=steps, step_size=eps / 4, seed=0)(model, x, y), y)
    torch.manual_seed(0)
    ta = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=steps, random_start=True)
    theirs = _acc(model, ta(x, y), y)
    assert clean > 0.7
    assert theirs < clean - 0.2, "the budget must actually hurt the model for the comparison to mean anything"
    assert ours <= theirs + 0.01, (ours, theirs)


def test_more_steps_never_weaker_and_noise_weaker(mlp_and_data) -> None:  # type: ignore[no-untyped-def]
    model, x, y = mlp_and_data
    eps = 8 / 255
    acc5 = _acc(model, build("pgd", eps=eps, steps=5, seed=0)(model, x, y), y)
    acc20 = _acc(model, build("pgd", eps=eps, steps=20, restarts=2, seed=0)(model, x, y), y)
    assert acc20 <= acc5 + 0.01
    noise = (x + (torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1) * eps).clamp(0, 1)
    assert _acc(model, noise, y) > acc20 + 0.2
    unbounded = build("pgd", eps=1.0, steps=20, seed=0)(model, x, y)
    assert _acc(model, unbounded, y) == 0.0
