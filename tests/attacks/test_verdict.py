"""The verdict procedure: a sample is broken only when the fp32 / majority-of-draws verdict says so,
for early stopping, ensemble members and in the tables."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustbench_mm.attacks.apgd import APGD
from robustbench_mm.attacks.ensemble import Ensemble
from robustbench_mm.attacks.evaluation import _draws, evaluate
from robustbench_mm.attacks.objectives import ModuleObjective
from robustbench_mm.attacks.verdict import VERDICT_KEY, Verdict, check_draws, is_randomized
from robustbench_mm.benchmarking import ModuleTask
from robustbench_mm.errors import ConfigError
from robustbench_mm.runner.stats import wilson_interval
from robustbench_mm.types import Batch


class NoisyLinear(nn.Module):
    """A randomized toy classifier: Gaussian noise on the input, then a fixed linear map."""

    def __init__(self, sigma: float = 0.15, dim: int = 3 * 8 * 8, classes: int = 10) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(dim, classes)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(classes, dim, generator=g) * 0.3)
            self.lin.bias.zero_()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.sigma * torch.randn_like(x)
        return self.lin(x.flatten(1))  # type: ignore[no-any-return]


class NoSuccess:
    """The same loss with no success information: attacks run every step and keep the best-loss point
    (early stopping off)."""

    def __init__(self, inner: ModuleObjective) -> None:
        self.inner = inner

    def __call__(self, model, pixels, batch):  # type: ignore[no-untyped-def]
        return self.inner(model, pixels, batch)


def _toy_data(model: nn.Module, n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 8, 8, generator=g)
    sigma, model.sigma = model.sigma, 0.0  # type: ignore[assignment]
    with torch.no_grad():
        y = model(x).argmax(1)  # noise-free labels: the clean verdict decides which samples count
    model.sigma = sigma  # type: ignore[assignment]
    return x, y


def _robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, verdict: Verdict, attack, objective,
            with_verdict: bool) -> tuple[int, int]:
    """Robust count by the final k-draw verdict, and clean-correct count."""
    batch = Batch(pixels=x, labels=y, index=torch.arange(len(x)))
    clean = verdict.correct(model, batch)
    sub = batch.select(clean)
    sub.seeds = sub.index
    if with_verdict:
        sub.extra[VERDICT_KEY] = verdict
    res = attack.perturb(model, sub, objective, generator=torch.Generator().manual_seed(0))
    robust = verdict.correct(model, sub.with_pixels(res.pixels))
    return int(robust.sum()), int(clean.sum())


def test_randomized_toy_protocol_no_weaker_than_early_stopping_off() -> None:
    torch.manual_seed(0)
    model = NoisyLinear().eval()
    assert is_randomized(model, torch.rand(4, 3, 8, 8))
    x, y = _toy_data(model)
    verdict = Verdict(ModuleTask(), draws=16)
    eps = 4 / 255
    members = ("apgd-ce", "apgd-dlr")
    stop = Ensemble(attacks=members, norm="linf", eps=eps, steps=20)
    robust_stop, n = _robust(model, x, y, verdict, stop, ModuleObjective(loss="ce"), with_verdict=True)
    full = Ensemble(attacks=members, norm="linf", eps=eps, steps=20)
    runs_full = [(m, NoSuccess(ModuleObjective(loss=m.loss))) for m in full.members]  # type: ignore[attr-defined]

    from robustbench_mm.attacks.ensemble import run_in_sequence

    batch = Batch(pixels=x, labels=y, index=torch.arange(len(x)))
    clean = verdict.correct(model, batch)
    sub = batch.select(clean)
    sub.seeds = sub.index
    res = run_in_sequence(model, sub, NoSuccess(ModuleObjective(loss="ce")), runs_full,
                          torch.Generator().manual_seed(0))
    robust_full = int(verdict.correct(model, sub.with_pixels(res.pixels)).sum())
    assert n > 40 and 0 < robust_full < n  # the comparison is informative: some broken, some standing
    lo, hi = wilson_interval(robust_full, n)
    assert robust_stop / n <= hi, (robust_stop, robust_full, n)


def test_randomized_search_never_stops_on_a_noisy_flag() -> None:
    """With a randomized model a one-draw success is no verdict: the search reports none (it attacks
    on), and a finished run is judged by the k-draw majority."""
    torch.manual_seed(0)
    model = NoisyLinear(sigma=0.6).eval()
    x, y = _toy_data(model, 64)
    batch = Batch(pixels=x, labels=y, index=torch.arange(len(x)))
    objective = ModuleObjective(loss="ce")
    _, raw = _draws(model, x, batch, objective, 1, "fp32")
    assert raw is not None and bool(raw.any())  # one noise draw flags some clean samples as broken
    batch.extra[VERDICT_KEY] = Verdict(ModuleTask(), draws=16)
    assert evaluate(model, x, batch, objective, 1, "fp32").success is None
    res = APGD(norm="linf", eps=8 / 255, steps=10).attack_restarts(model, batch, objective,
                                                                    torch.Generator().manual_seed(0))
    assert res.success is not None and bool(res.success.any())
    # the run's breaks hold up under a fresh, larger majority
    again = Verdict(ModuleTask(), draws=64).broken(model, res.pixels[res.success], batch.select(res.success))
    assert again.float().mean() > 0.8


class TieBreaker(nn.Module):
    """Deterministic; fp32 logits put class 1 ahead of class 0 by 2e-4, which bf16 rounds away (argmax 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 3, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0], [1.0002], [0.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1).mean(1, keepdim=True) * 0 + 1.0) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_bf16_search_never_breaks_a_sample_fp32_keeps() -> None:
    model = TieBreaker().eval()
    x = torch.rand(6, 3, 4, 4)
    y = torch.ones(6, dtype=torch.long)
    batch = Batch(pixels=x, labels=y, index=torch.arange(6))
    objective = ModuleObjective(loss="ce")
    with torch.no_grad():
        assert bool((model(x).argmax(1) == 1).all())  # fp32: every sample correct
    _, raw = _draws(model, x, batch, objective, 1, "bf16")
    assert raw is not None and bool(raw.all())  # bf16 search: every sample looks broken
    assert not bool(evaluate(model, x, batch, objective, 1, "bf16").success.any())  # type: ignore[union-attr]
    # end to end: an APGD search in bf16 reports no sample broken, and an ensemble names no breaker
    attack = APGD(norm="linf", eps=1 / 255, steps=5, search_dtype="bf16")
    res = attack.attack_restarts(model, batch, objective, torch.Generator().manual_seed(0))
    assert res.success is not None and not bool(res.success.any())
    ens = Ensemble(attacks=("apgd-ce",), norm="linf", eps=1 / 255, steps=5, search_dtype="bf16")
    out = ens.perturb(model, batch, objective, generator=torch.Generator().manual_seed(0))
    assert out.broken_by == [""] * 6


def test_majority_rule_and_draws_validation() -> None:
    from robustbench_mm.attacks.verdict import majority

    votes = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.bool)  # 2 draws: ties count as wrong
    assert majority(votes).tolist() == [True, False, False, False]
    with pytest.raises(ConfigError, match=">= 8"):
        check_draws(4)
    assert check_draws(16) == 16
    assert not math.isnan(wilson_interval(3, 10)[0])


@pytest.mark.slow
def test_fs_protocol_no_weaker_than_early_stopping_off() -> None:
    """clip-tiny under feature-space smoothing: APGD-CE with EOT, stopping by the verdict rule, leaves
    no more samples robust than the same attack with early stopping off (within the Wilson interval)."""
    from robustbench_mm.models.zoo import load_model
    from robustbench_mm.runner.resolve import CellSpec, resolve

    cell = resolve(CellSpec(model="clip-tiny", defense="fs", attack="apgd-ce", n=24))
    assert cell.verdict_draws == 16
    model = cell.defense.apply(load_model("clip-tiny"))
    task = cell.task
    batch = next(task.examples(n=24, seed=0, batch_size=24, image_size=32))
    verdict = Verdict(task, cell.verdict_draws)
    clean = verdict.correct(model, batch)
    sub = batch.select(clean)
    sub.seeds = sub.index
    objective = task.objective("ce")
    robust = {}
    for rule in ("verdict", "nostop"):
        b = sub.select(torch.ones(len(sub), dtype=torch.bool))
        if rule == "verdict":
            b.extra[VERDICT_KEY] = verdict
        obj = objective if rule == "verdict" else NoSuccess(objective)
        res = APGD(norm="linf", eps=8 / 255, steps=5, eot=2).perturb(model, b, obj, generator=torch.Generator().manual_seed(0))
        robust[rule] = int(verdict.correct(model, sub.with_pixels(res.pixels)).sum())
    n = int(clean.sum())
    assert n >= 8
    assert robust["verdict"] / n <= wilson_interval(robust["nostop"], n)[1], robust
