"""Evaluation sanity checks (design 'Trust', style rule 7): signs that an evaluation is unreliable
because of gradient masking or a broken attack. Each check is explained in docs/checks.md.

``run_sanity(model, defense, n)`` loads a model, applies the defense, takes ``n`` examples of the
model family's default task and runs, on the clean-correct ones:

- ``zero_gradients``: share of samples whose input gradient of the task objective is zero or not
  finite (fail > 10%).
- ``more_steps``: APGD-CE with 4x the steps must not leave more samples robust (1 sample slack).
- ``more_restarts``: APGD-CE with 2 restarts must not leave more samples robust.
- ``unbounded``: APGD-CE at linf eps = 1 must reach 100% ASR.
- ``noise``: uniform sign noise of the same linf norm must be far weaker (ASR <= half the attack's).
- ``black_box``: Square (score-based) must not leave fewer samples robust than APGD (1 sample slack).
- ``eot``: a randomized defense must be attacked with EOT (flagged when it is randomized).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from robustbench_mm.types import Batch

DOCS = "docs/checks.md"
ZERO_GRAD_MAX = 0.10  # share of samples with zero/non-finite gradients before we call it masking


@dataclass(frozen=True)
class CheckResult:
    """One check: ``passed``, the measured ``value``, what was expected, and a doc link."""

    name: str
    passed: bool
    value: float
    expected: str
    detail: str = ""

    @property
    def doc(self) -> str:
        return f"{DOCS}#{self.name.replace('_', '-')}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "doc": self.doc}


@dataclass
class Setting:
    """What the checks attack: model, task objective, clean-correct batch and the verdict function."""

    model: Any
    objective: Any
    batch: Batch
    is_correct: Callable[[Tensor], Tensor]  # adversarial pixels -> bool [B] still correct (fp32)
    eps: float
    steps: int
    seed: int
    randomized: bool = False


def _robust(s: Setting, name: str, **overrides: Any) -> tuple[float, int]:
    """(robust accuracy, robust count) of a preset on the clean-correct batch."""
    from robustbench_mm.attacks import build

    attack = build(name, **{"norm": "linf", "eps": s.eps, "steps": s.steps, "seed": s.seed, **overrides})
    gen = torch.Generator().manual_seed(s.seed)
    res = attack.perturb(s.model, s.batch, attack.prepare(s.model, s.batch, s.objective), generator=gen)
    ok = s.is_correct(res.pixels)
    return float(ok.float().mean()), int(ok.sum())


def zero_gradient_share(s: Setting) -> float:
    x = s.batch.pixels.detach().requires_grad_(True)
    loss = s.objective(s.model, x, s.batch).float()
    (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
    if grad is None:
        return 1.0
    norms = grad.flatten(1).norm(dim=1)
    bad = (norms <= 1e-12) | ~torch.isfinite(norms)
    return float(bad.float().mean())


def sanity_checks(s: Setting, *, square_queries: int = 1000) -> list[CheckResult]:
    """All checks on one setting (see module docstring)."""
    n = len(s.batch)
    slack = 1 / max(n, 1) + 1e-9
    out = []
    zg = zero_gradient_share(s)
    out.append(CheckResult("zero_gradients", zg <= ZERO_GRAD_MAX, zg, f"<= {ZERO_GRAD_MAX:.0%} of samples"))
    eot = {"eot": 16} if s.randomized else {}
    base, _ = _robust(s, "apgd-ce", **eot)
    more, _ = _robust(s, "apgd-ce", steps=4 * s.steps, **eot)
    out.append(CheckResult("more_steps", more <= base + slack, more, f"<= {base:.3f} (+1 sample)",
                           f"robust acc {s.steps} steps {base:.3f}, {4 * s.steps} steps {more:.3f}"))
    rest, _ = _robust(s, "apgd-ce", restarts=2, **eot)
    out.append(CheckResult("more_restarts", rest <= base + 1e-9, rest, f"<= {base:.3f}",
                           f"robust acc 1 restart {base:.3f}, 2 restarts {rest:.3f}"))
    unb, _ = _robust(s, "apgd-ce", eps=1.0, **eot)
    out.append(CheckResult("unbounded", unb == 0.0, 1 - unb, "ASR = 1.0 at linf eps = 1"))
    g = torch.Generator().manual_seed(s.seed)
    x = s.batch.pixels
    noise = (x + s.eps * (torch.randint(0, 2, x.shape, generator=g) * 2 - 1).to(x)).clamp(0, 1)
    noise_asr, attack_asr = 1 - float(s.is_correct(noise).float().mean()), 1 - base
    out.append(CheckResult("noise", noise_asr <= 0.5 * attack_asr + 1e-9, noise_asr,
                           f"<= {0.5 * attack_asr:.3f} (half the APGD-CE ASR)"))
    try:
        square, _ = _robust(s, "ta-square", steps=square_queries)
        out.append(CheckResult("black_box", square + slack >= base, square, f">= {base:.3f} (-1 sample)",
                               f"Square {square_queries} queries robust acc {square:.3f}, APGD-CE {base:.3f}"))
    except Exception as exc:  # noqa: BLE001 - a classification-only check; say why it did not run
        out.append(CheckResult("black_box", True, float("nan"), "n/a", f"not run: {exc}"))
    out.append(CheckResult("eot", True, float(s.randomized), "EOT used when the defense is randomized",
                           "randomized defense: checks above used eot=16" if s.randomized else "deterministic"))
    return out


def run_sanity(model_name: str, defense: str = "none", n: int = 64, *, task: str | None = None,
               eps: float = 8 / 255, steps: int = 20, seed: int = 0, device: str | None = None) -> list[CheckResult]:
    """Load ``model_name`` with ``defense`` and run ``sanity_checks`` on ``n`` examples of ``task``
    (default: the family's task). Only clean-correct examples are attacked."""
    from robustbench_mm.models.zoo import LoadOptions, load_model
    from robustbench_mm.runner.cell import pick_device
    from robustbench_mm.runner.resolve import CellSpec, resolve

    cell = resolve(CellSpec(model=model_name, attack="apgd-ce", defense=defense, task=task, n=n, seed=seed,
                            device=device, batch_size=n))
    dev = pick_device(device)
    model = cell.defense.apply(load_model(cell.model_name, LoadOptions(device=dev.type)))
    batch = next(cell.task.examples(n=n, seed=seed, batch_size=n, image_size=model.image_size)).to(dev)
    ok = cell.task.correct(batch, cell.task.predict(model, batch)).to(dev)
    if not bool(ok.any()):
        return [CheckResult("clean_accuracy", False, 0.0, "> 0", "no clean-correct sample to attack")]
    sub = batch.select(ok)
    sub.seeds = seed * 1_000_003 + sub.index

    def is_correct(pixels: Tensor) -> Tensor:
        return cell.task.correct(sub, cell.task.predict(model, sub.with_pixels(pixels))).cpu()

    setting = Setting(model, cell.task.objective(None), sub, is_correct, eps, steps, seed,
                      randomized=bool(getattr(cell.defense, "randomized", False)))
    return sanity_checks(setting)
