"""Our Square (``square``) against torchattacks' Square at AutoAttack's settings, on the small trained
network of ``conftest`` (128 held-out images it gets right).

Square is a random search, so one run of either side varies by about 1.5pp here; strength is the
mean robust accuracy over three seeds, with two samples of slack (about 2 standard errors of the
difference). The negative control shows the comparison can fail.
"""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import Tensor, nn

from robustbench_mm.attacks import build
from robustbench_mm.attacks.guard import check_valid
from robustbench_mm.errors import CapabilityError, ConfigError
from robustbench_mm.types import Batch

EPS = 16 / 255
QUERIES = 500
SEEDS = (0, 1, 2)
SLACK = 2 / 128


def robust_acc(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def theirs(model: nn.Module, x: Tensor, y: Tensor) -> float:
    runs = [torchattacks.Square(model, norm="Linf", eps=EPS, n_queries=QUERIES, p_init=0.8, loss="margin",
                                resc_schedule=False, seed=s)(x, y) for s in SEEDS]
    return sum(robust_acc(model, a, y) for a in runs) / len(runs)


def ours(model: nn.Module, x: Tensor, y: Tensor, **kw: object) -> float:
    params = {"eps": EPS, "steps": QUERIES} | kw
    return sum(robust_acc(model, build("square", seed=s, **params)(model, x, y), y) for s in SEEDS) / len(SEEDS)


@pytest.fixture(scope="module")
def reference(fmnist_model, eval_set) -> float:  # type: ignore[no-untyped-def]
    model, _ = fmnist_model
    return theirs(model, *eval_set)


def test_as_strong_as_torchattacks_square(fmnist_model, eval_set, reference: float) -> None:
    model, _ = fmnist_model
    got = ours(model, *eval_set)
    assert got <= reference + SLACK, f"ours {got:.3f} vs torchattacks {reference:.3f}"
    assert got < 0.8, f"Square barely moves the model ({got:.3f}); the comparison would be vacuous"


def test_comparison_detects_a_weak_square(fmnist_model, eval_set, reference: float) -> None:
    """Negative control: 25 queries instead of 500 must lose to the reference."""
    model, _ = fmnist_model
    assert ours(model, *eval_set, steps=25) > reference + SLACK


def test_outputs_stay_in_the_ball_and_in_range(fmnist_model, eval_set) -> None:
    model, _ = fmnist_model
    x, y = eval_set
    x_adv = build("square", eps=EPS, steps=100)(model, x, y)
    check_valid(x, x_adv, "linf", EPS)
    assert float((x_adv - x).abs().amax()) == pytest.approx(EPS, abs=1e-6)  # Square sits on the sphere


def test_a_samples_result_does_not_depend_on_its_batch(fmnist_model, eval_set) -> None:
    """Per-sample streams: the same sample gives the same image alone, in a small batch or in all 128,
    which is what lets a cell pool survivors into any batch size."""
    from robustbench_mm.attacks.objectives import ModuleObjective

    model, _ = fmnist_model
    x, y = eval_set
    attack = build("square", eps=EPS, steps=200)
    whole = Batch(pixels=x, labels=y, index=torch.arange(len(x)), seeds=torch.arange(len(x)) * 31 + 5)

    def run(rows: Tensor, gen_seed: int = 0) -> Tensor:
        part = whole.take(rows)
        gen = torch.Generator().manual_seed(gen_seed)
        return attack.perturb(model, part, ModuleObjective(loss="ce"), generator=gen).pixels

    all_rows = run(torch.arange(len(x)))
    for rows in (torch.tensor([7]), torch.tensor([3, 50, 90, 7])):
        assert torch.equal(run(rows), all_rows[rows])
    # nor on how far earlier members advanced the cell's generator
    assert torch.equal(run(torch.arange(len(x)), gen_seed=123), all_rows)
    other = Batch(pixels=x, labels=y, index=whole.index, seeds=whole.seeds + 1)  # another seed: another search
    gen = torch.Generator().manual_seed(0)
    assert not torch.equal(attack.perturb(model, other, ModuleObjective(loss="ce"), generator=gen).pixels, all_rows)


def test_l2_runs_torchattacks_square_in_the_l2_ball(fmnist_model, eval_set) -> None:
    model, _ = fmnist_model
    x, y = eval_set
    x_adv = build("square", norm="l2", eps=1.0, steps=50)(model, x[:16], y[:16])
    check_valid(x[:16], x_adv, "l2", 1.0)


def test_bad_parameters_and_tasks_get_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="p_init"):
        build("square", p_init=0.0)
    with pytest.raises(ConfigError, match="loss"):
        build("square", loss="dlr")
    from robustbench_mm.attacks.objectives import LMObjective

    with pytest.raises(CapabilityError, match="classification"):
        build("square").check_task(LMObjective.__new__(LMObjective), frozenset())
