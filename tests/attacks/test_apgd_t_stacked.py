"""APGD-T runs several targets of a sample side by side (``APGDTargeted._stacked``); this must give
exactly what AutoAttack's loop over targets in turn (``_in_turn``) gives: the same image per sample,
the same objective, the same query count and the same generator state afterwards."""

from __future__ import annotations

import pytest
import torch

from robustbench_mm.attacks import apgd, build
from robustbench_mm.attacks.objectives import ModuleObjective
from robustbench_mm.types import Batch

EPS = 16 / 255


def _both(model, x, y, monkeypatch, rows_per_chunk: int):  # type: ignore[no-untyped-def]
    attack = build("apgd-t", eps=EPS, steps=20, n_targets=9)
    batch = Batch(pixels=x, labels=y, index=torch.arange(len(x)), seeds=torch.arange(len(x)) * 7 + 3)
    objective = ModuleObjective(loss="ce")
    monkeypatch.setitem(apgd.STACKED_ROWS, "cpu", rows_per_chunk)
    g_stacked = torch.Generator().manual_seed(0)
    stacked = attack.perturb(model, batch, objective, generator=g_stacked)
    g_turn = torch.Generator().manual_seed(0)
    base = objective.with_loss("ce", targeted=False)
    with torch.no_grad():
        order = model(x).argsort(dim=1, descending=True)
    turn, used = attack._in_turn(model, batch, base, apgd.TowardsTarget(base, "dlr"), order[:, 1:10], g_turn)
    return stacked, turn, used, g_stacked, g_turn, attack


@pytest.mark.parametrize("rows_per_chunk", [256, 72, 1])  # all nine at once; three per chunk; one
def test_stacked_targets_equal_targets_in_turn(fmnist_model, eval_set, monkeypatch, rows_per_chunk: int) -> None:
    model, _ = fmnist_model
    x, y = eval_set.x[:24], eval_set.y[:24]
    stacked, turn, used, g_s, g_t, attack = _both(model, x, y, monkeypatch, rows_per_chunk)
    assert torch.equal(stacked.pixels, turn.pixels)
    assert torch.equal(stacked.loss, turn.loss)
    assert stacked.queries == used * (attack.steps + 1)
    assert torch.equal(g_s.get_state(), g_t.get_state())  # later members draw what they drew before
    with torch.no_grad():
        broken = model(stacked.pixels).argmax(1) != y
    assert 0 < int(broken.sum()) < len(y)  # the check means something: some broken, some standing


def test_every_sample_broken_stops_the_generator_where_the_loop_would(fmnist_model, eval_set, monkeypatch) -> None:
    """At a budget that breaks every sample, the loop in turn stops early; the generator must agree."""
    model, _ = fmnist_model
    x, y = eval_set.x[:8], eval_set.y[:8]
    attack = build("apgd-t", eps=0.5, steps=5, n_targets=9)
    batch = Batch(pixels=x, labels=y, index=torch.arange(len(x)), seeds=torch.arange(len(x)))
    g = torch.Generator().manual_seed(1)
    res = attack.perturb(model, batch, ModuleObjective(loss="ce"), generator=g)
    g_turn = torch.Generator().manual_seed(1)
    base = ModuleObjective(loss="ce")
    with torch.no_grad():
        order = model(x).argsort(dim=1, descending=True)
    turn, used = attack._in_turn(model, batch, base, apgd.TowardsTarget(base, "dlr"), order[:, 1:10], g_turn)
    assert used < 9 and res.queries == used * (attack.steps + 1)
    assert torch.equal(res.pixels, turn.pixels)
    assert torch.equal(g.get_state(), g_turn.get_state())
