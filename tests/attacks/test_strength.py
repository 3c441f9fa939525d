"""Our attacks vs torchattacks on the same model, data, budget and steps; gradient-masking checks.

Robust accuracy is measured on 128 held-out images the model gets right (fixture ``eval_set``).
"At least as strong" allows one sample (< 1pp of 128). ``test_comparison_detects_weak_attack``
shows the comparison has teeth: a crippled attack fails it.
"""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import Tensor, nn

from robustbench_mm.attacks import build
from robustbench_mm.attacks.guard import check_valid

EPS = 16 / 255  # this small network is robust-ish at 8/255; 16/255 leaves room to tell attacks apart
ONE = 1 / 128 + 1e-9  # one sample of slack


def robust_acc(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


L2_EPS = 1.5  # the pooled network is smooth in l2; 1.5 brings robust accuracy to ~0.63


def reference(name: str, model: nn.Module, x: Tensor, y: Tensor, steps: int, norm: str = "linf") -> Tensor:
    eps = EPS if norm == "linf" else L2_EPS
    ta_norm = "Linf" if norm == "linf" else "L2"
    if name == "pgd":
        cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
        return cls(model, eps=eps, alpha=eps / 4, steps=steps)(x, y)  # type: ignore[no-any-return]
    if name in ("apgd-ce", "apgd-dlr"):
        return torchattacks.APGD(model, norm=ta_norm, eps=eps, steps=steps, loss=name[5:], seed=0)(x, y)  # type: ignore
    # 3 targets
    return torchattacks.APGDT(model, norm=ta_norm, eps=eps, steps=steps, n_classes=4, seed=0)(x, y)  # type: ignore


OURS = {
    "pgd": dict(steps=10),  # step eps/4, as the reference
    "apgd-ce": dict(steps=20),
    "apgd-dlr": dict(steps=20),
    "apgd-t": dict(steps=20, n_targets=3),
}


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", list(OURS))
def test_at_least_as_strong_as_torchattacks(name: str, norm: str, fmnist_model, eval_set) -> None:
    model, _ = fmnist_model
    x, y = eval_set
    eps = EPS if norm == "linf" else L2_EPS
    kw = dict(OURS[name]) | ({"step_size": eps / 4} if name == "pgd" else {})
    ours = robust_acc(model, build(name, norm=norm, eps=eps, seed=0, **kw)(model, x, y), y)
    theirs = robust_acc(model, reference(name, model, x, y, int(kw["steps"]), norm), y)
    assert ours <= theirs + ONE, f"{name} {norm}: ours {ours:.3f} vs torchattacks {theirs:.3f}"
    assert ours < 0.9, f"{name} {norm} barely moves the model ({ours:.3f}); the comparison would be vacuous"


def test_comparison_detects_weak_attack(fmnist_model, eval_set) -> None:
    """Negative control: a 1-step, eps/4-sized APGD must lose to torchattacks' APGD-20."""
    model, _ = fmnist_model
    x, y = eval_set
    weak = robust_acc(model, build("apgd-ce", eps=EPS / 4, steps=1, seed=0)(model, x, y), y)
    theirs = robust_acc(model, reference("apgd-ce", model, x, y, 20), y)
    assert weak > theirs + ONE


def test_apgd_at_least_pgd_and_ensemble_worst_case(fmnist_model, eval_set) -> None:
    model, _ = fmnist_model
    x, y = eval_set
    pgd = robust_acc(model, build("pgd", eps=EPS, steps=20, step_size=EPS / 4)(model, x, y), y)
    ce = robust_acc(model, build("apgd-ce", eps=EPS, steps=20)(model, x, y), y)
    t = robust_acc(model, build("apgd-t", eps=EPS, steps=20, n_targets=3)(model, x, y), y)
    aa = robust_acc(model, build("aa-white", eps=EPS, steps=20)(model, x, y), y)
    assert ce <= pgd + ONE
    assert aa <= ce  # first member is the same APGD-CE run; later members only add successes
    assert aa <= t + ONE


def test_more_steps_and_restarts_never_weaken(fmnist_model, eval_set) -> None:
    model, _ = fmnist_model
    x, y = eval_set
    ra = {(s, r): robust_acc(model, build("apgd-ce", eps=EPS / 2, steps=s, restarts=r)(model, x, y), y)
          for s, r in ((5, 1), (40, 1), (5, 3))}
    assert ra[(40, 1)] <= ra[(5, 1)] + ONE
    assert ra[(5, 3)] <= ra[(5, 1)]  # restart 1 is identical, later ones only add successes


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "apgd-dlr"])
def test_unbounded_budget_reaches_full_asr(name: str, fmnist_model, eval_set) -> None:
    model, _ = fmnist_model
    x, y = eval_set
    x_adv = build(name, norm="linf", eps=1.0, steps=10, **({"step_size": 0.25} if name == "pgd" else {}))(model, x, y)
    assert robust_acc(model, x_adv, y) == 0.0


def test_random_noise_far_weaker(fmnist_model, eval_set) -> None:
    model, _ = fmnist_model
    x, y = eval_set
    g = torch.Generator().manual_seed(0)
    noise = (x + EPS * (torch.randint(0, 2, x.shape, generator=g) * 2 - 1)).clamp(0, 1)  # same linf norm
    attack = robust_acc(model, build("apgd-ce", eps=EPS, steps=20)(model, x, y), y)
    assert robust_acc(model, noise, y) >= attack + 0.3


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "apgd-t", "aa-white", "embed", "mf-ii", "eot-apgd-ce"])
def test_same_seed_same_output(name: str, fmnist_model, eval_set) -> None:
    model, _ = fmnist_model
    x, y = eval_set[0][:32], eval_set[1][:32]
    kw = dict(eps=EPS, steps=3, seed=5)
    a, b = build(name, **kw)(model, x, y), build(name, **kw)(model, x, y)
    assert torch.equal(a, b)
    c = build(name, **{**kw, "seed": 6})(model, x, y)
    assert not torch.equal(a, c)


_VALID_NAMES = ["pgd", "apgd-ce", "apgd-dlr", "apgd-t", "aa-white", "embed", "mf-ii", "eot-pgd", "eot-apgd-ce",
                "ta-pgd", "ta-apgd"]
_VALID_CASES = [(name, norm, eps) for name in _VALID_NAMES
                for norm, eps in [("linf", 8 / 255), ("l2", 0.5), ("linf", 1.0)]
                if not (name == "ta-pgd" and norm == "l2")]  # torchattacks PGD is linf only


@pytest.mark.parametrize("name,norm,eps", _VALID_CASES)
def test_outputs_valid(name: str, norm: str, eps: float, fmnist_model, eval_set) -> None:
    model, _ = fmnist_model
    x, y = eval_set[0][:16], eval_set[1][:16]
    x_adv = build(name, norm=norm, eps=eps, steps=2)(model, x, y)
    check_valid(x, x_adv, norm, eps)  # type: ignore[arg-type]  # inside the ball, [0,1], finite
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype


def test_bf16_search_stays_strong(fmnist_model, eval_set) -> None:
    model, _ = fmnist_model
    x, y = eval_set
    fp32 = robust_acc(model, build("apgd-ce", eps=EPS, steps=20)(model, x, y), y)
    bf16 = robust_acc(model, build("apgd-ce", eps=EPS, steps=20, search_dtype="bf16")(model, x, y), y)
    assert bf16 <= fp32 + 2 * ONE
