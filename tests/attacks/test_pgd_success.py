"""Success-aware PGD and APGD: a sample leaves the attack at its first successful iterate. That must
never weaken the attack, and dropping broken samples from the batch (CPU) must not change any
outcome."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from robustbench_mm.attacks import apgd as apgd_module
from robustbench_mm.attacks import pgd as pgd_module
from robustbench_mm.attacks.apgd import APGD
from robustbench_mm.attacks.objectives import ModuleObjective
from robustbench_mm.attacks.pgd import PGD
from robustbench_mm.types import Batch


class RowCounter(nn.Module):
    """The wrapped classifier, counting the rows it is evaluated on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.rows = inner, 0

    def forward(self, x: Tensor) -> Tensor:
        self.rows += len(x)
        return self.inner(x)  # type: ignore[no-any-return]


def _run(model: nn.Module, x: Tensor, y: Tensor, kind: str = "pgd", **kw: Any) -> Tensor:
    batch = Batch(pixels=x, labels=y, index=torch.arange(len(x)), seeds=torch.arange(len(x)))
    attack = (PGD(norm="linf", eps=8 / 255, steps=10, step_size=2 / 255, **kw) if kind == "pgd"
              else APGD(norm="linf", eps=8 / 255, steps=10, **kw))
    return attack.perturb(model, batch, ModuleObjective(), generator=torch.Generator().manual_seed(0)).pixels


def _broken(model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


@pytest.fixture(scope="module")
def correct(fmnist_model):  # type: ignore[no-untyped-def]
    model, held_out = fmnist_model
    x, y = held_out.x[:128], held_out.y[:128]
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return model, x[ok], y[ok]


def test_first_success_breaks_every_sample_the_best_loss_iterate_breaks(correct) -> None:  # type: ignore[no-untyped-def]
    model, x, y = correct
    by_loss = _broken(model, _run(model, x, y, stop_on_success=False), y)
    by_success = _broken(model, _run(model, x, y), y)
    assert 0.2 < float(by_success.float().mean()) < 1.0, "the budget must break some samples, not all"
    assert bool((by_success | ~by_loss).all()), "a sample the best-loss iterate breaks must stay broken"


@pytest.mark.parametrize("kind,module", [("pgd", pgd_module), ("apgd", apgd_module)])
def test_dropping_broken_samples_changes_no_outcome_and_saves_work(correct, monkeypatch, kind: str,  # type: ignore[no-untyped-def]
                                                                   module: Any) -> None:
    model, x, y = correct
    counted = RowCounter(model)
    compacted = _run(counted, x, y, kind)
    rows_compacted, counted.rows = counted.rows, 0
    monkeypatch.setattr(module, "syncs_are_free", lambda device: False)  # the accelerator path
    riding = _run(counted, x, y, kind)
    assert torch.equal(_broken(model, compacted, y), _broken(model, riding, y))
    assert torch.allclose(compacted, riding, atol=1e-6)
    assert counted.rows >= len(x) * 10, "the accelerator path attacks every row at every step"
    assert rows_compacted < 0.9 * counted.rows, (rows_compacted, counted.rows)
