"""Gradient-masking sanity checks: signs that an evaluation is unreliable.

Gradient masking or a broken attack shows in these checks; each is explained in docs/checks.md.

``run_sanity(model, defense, n)`` loads a model, applies the defense, takes ``n`` examples of the
model family's default task and runs, on the clean-correct ones:

- ``zero_gradients``: share of samples whose input gradient of the task objective is zero or not
  finite (fail > 10%).
- ``more_steps``: APGD-CE with 4x the steps must not leave more samples robust (1 sample slack).
- ``more_restarts``: APGD-CE with 2 restarts must not leave more samples robust.
- ``unbounded``: APGD-CE at linf eps = 1 must reach 100% ASR.
- ``noise``: uniform sign noise of the same linf norm must be far weaker (ASR <= half the attack's).
- ``black_box``: Square (score-based) must not leave fewer samples robust than APGD (1 sample slack).
- ``transfer``: APGD-CE crafted on a surrogate (by default the same model without the defense)
  must not leave fewer samples robust than APGD-CE on the defended model itself (1 sample slack).
- ``eot``: a randomized defense must be attacked with EOT (flagged when it is randomized).

``checks=`` runs a subset by name (the expensive ones cost minutes on a randomized VLM defense).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from robustbench_mm.types import Batch

DOCS = "docs/checks.md"
NAMES = ("zero_gradients", "more_steps", "more_restarts", "unbounded", "noise", "black_box", "transfer", "eot")
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
    surrogate: Any = None  # a model to craft transfer adversarials on (None: no transfer check)
    surrogate_name: str = ""
    surrogate_randomized: bool = False
    eot: int = 16  # EOT evaluations per step against a randomized model (run_sanity: the rand protocol's)
    surrogate_eot: int = 16


@dataclass(frozen=True)
class MaxLoss:
    """An objective without its success test: the attack runs every step on every sample and returns
    its highest-loss point. Transfer adversarials need that: the first point that fools the
    surrogate sits on its decision boundary and transfers poorly, which would flatter the defense."""

    objective: Any

    def __call__(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        return self.objective(model, pixels, batch)  # type: ignore[no-any-return]


def _robust(s: Setting, name: str, *, on: Any = None, **overrides: Any) -> tuple[float, int]:
    """(robust accuracy, robust count) on the defended model of a preset's adversarials on the
    clean-correct batch, crafted on ``on`` (default: the defended model itself)."""
    from robustbench_mm.attacks import build

    source = s.model if on is None else on
    objective = s.objective if on is None else MaxLoss(s.objective)
    attack = build(name, **{"norm": "linf", "eps": s.eps, "steps": s.steps, "seed": s.seed, **overrides})
    gen = torch.Generator().manual_seed(s.seed)
    res = attack.perturb(source, s.batch, attack.prepare(source, s.batch, objective), generator=gen)
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


def sanity_checks(s: Setting, *, square_queries: int = 1000, checks: tuple[str, ...] = NAMES) -> list[CheckResult]:
    """The named checks on one setting, in ``NAMES`` order (see module docstring)."""
    n = len(s.batch)
    slack = 1 / max(n, 1) + 1e-9
    eot = {"eot": s.eot} if s.randomized else {}
    cache: dict[str, float] = {}

    def base() -> float:  # the white-box APGD-CE robust accuracy most checks compare with
        if "base" not in cache:
            cache["base"] = _robust(s, "apgd-ce", **eot)[0]
        return cache["base"]

    def zero_gradients() -> CheckResult:
        zg = zero_gradient_share(s)
        return CheckResult("zero_gradients", zg <= ZERO_GRAD_MAX, zg, f"<= {ZERO_GRAD_MAX:.0%} of samples")

    def more_steps() -> CheckResult:
        more, _ = _robust(s, "apgd-ce", steps=4 * s.steps, **eot)
        return CheckResult("more_steps", more <= base() + slack, more, f"<= {base():.3f} (+1 sample)",
                           f"robust acc {s.steps} steps {base():.3f}, {4 * s.steps} steps {more:.3f}")

    def more_restarts() -> CheckResult:
        rest, _ = _robust(s, "apgd-ce", restarts=2, **eot)
        return CheckResult("more_restarts", rest <= base() + 1e-9, rest, f"<= {base():.3f}",
                           f"robust acc 1 restart {base():.3f}, 2 restarts {rest:.3f}")

    def unbounded() -> CheckResult:
        unb, _ = _robust(s, "apgd-ce", eps=1.0, **eot)
        return CheckResult("unbounded", unb == 0.0, 1 - unb, "ASR = 1.0 at linf eps = 1")

    def noise() -> CheckResult:
        g = torch.Generator().manual_seed(s.seed)
        x = s.batch.pixels
        noisy = (x + s.eps * (torch.randint(0, 2, x.shape, generator=g) * 2 - 1).to(x)).clamp(0, 1)
        noise_asr, attack_asr = 1 - float(s.is_correct(noisy).float().mean()), 1 - base()
        return CheckResult("noise", noise_asr <= 0.5 * attack_asr + 1e-9, noise_asr,
                           f"<= {0.5 * attack_asr:.3f} (half the APGD-CE ASR)")

    def black_box() -> CheckResult:
        try:
            square, _ = _robust(s, "ta-square", steps=square_queries)
        except Exception as exc:  # noqa: BLE001 - a classification-only check; say why it did not run
            return CheckResult("black_box", True, float("nan"), "n/a", f"not run: {exc}")
        return CheckResult("black_box", square + slack >= base(), square, f">= {base():.3f} (-1 sample)",
                           f"Square {square_queries} queries robust acc {square:.3f}, APGD-CE {base():.3f}")

    def transfer() -> CheckResult:
        if s.surrogate is None:
            return CheckResult("transfer", True, float("nan"), "n/a", "not run: no surrogate (undefended model)")
        # the surrogate is attacked as it needs (EOT when randomized); the verdict is on the defended model
        moved, _ = _robust(s, "apgd-ce", on=s.surrogate, **({"eot": s.surrogate_eot} if s.surrogate_randomized else {}))
        return CheckResult("transfer", moved + slack >= base(), moved, f">= {base():.3f} (-1 sample)",
                           f"APGD-CE crafted on {s.surrogate_name or 'the surrogate'}: robust acc {moved:.3f}; "
                           f"white-box APGD-CE {base():.3f}")

    def eot_check() -> CheckResult:
        return CheckResult("eot", True, float(s.randomized), "EOT used when the defense is randomized",
                           f"randomized defense: checks above used eot={s.eot}" if s.randomized else "deterministic")

    run = {"zero_gradients": zero_gradients, "more_steps": more_steps, "more_restarts": more_restarts,
           "unbounded": unbounded, "noise": noise, "black_box": black_box, "transfer": transfer, "eot": eot_check}
    return [run[name]() for name in NAMES if name in checks]


def check_names(text: str | None) -> tuple[str, ...]:
    """``--checks a,b`` -> the names (``ConfigError`` naming the valid ones); ``None``: all."""
    if not text:
        return NAMES
    from robustbench_mm.errors import ConfigError

    names = tuple(t.strip().replace("-", "_") for t in text.split(",") if t.strip())
    unknown = [t for t in names if t not in NAMES]
    if unknown or not names:
        raise ConfigError(f"--checks {text!r}: unknown check(s) {unknown}; choose from {', '.join(NAMES)}")
    return names


def run_sanity(model_name: str, defense: str = "none", n: int = 64, *, task: str | None = None,
               eps: float = 8 / 255, steps: int = 20, seed: int = 0, device: str | None = None,
               surrogate: str = "none", checks: tuple[str, ...] = NAMES) -> list[CheckResult]:
    """Load ``model_name`` with ``defense`` and run the ``checks`` on ``n`` examples of ``task``
    (default: the family's task). Only clean-correct examples are attacked; correctness is the
    verdict procedure's (fp32; majority of 16 fresh draws for a randomized defense). ``surrogate``:
    the defense preset whose model the transfer check crafts on (none = the undefended model)."""
    from robustbench_mm.attacks.verdict import DEFAULT_DRAWS, Verdict
    from robustbench_mm.models.zoo import LoadOptions, load_model
    from robustbench_mm.models.device import pick_device
    from robustbench_mm.runner.protocol import LATEST, load_protocol
    from robustbench_mm.runner.resolve import CellSpec, resolve

    def resolved(name: str) -> Any:
        return resolve(CellSpec(model=model_name, attack="apgd-ce", defense=name, task=task, n=n, seed=seed,
                                device=device, batch_size=n))

    cell = resolved(defense)
    other = resolved(surrogate) if "transfer" in checks and surrogate != defense else None  # fail fast on bad names
    dev = pick_device(device)
    model = cell.defense.apply(load_model(cell.model_name, LoadOptions(device=dev.type)))
    randomized = bool(getattr(cell.defense, "randomized", False))
    verdict = Verdict(cell.task, DEFAULT_DRAWS if randomized else 1)
    batch = next(cell.task.examples(n=n, seed=seed, batch_size=n, image_size=model.image_size)).to(dev)
    ok = verdict.correct(model, batch).to(dev)
    if not bool(ok.any()):
        return [CheckResult("clean_accuracy", False, 0.0, "> 0", "no clean-correct sample to attack")]
    sub = batch.select(ok)
    sub.seeds = seed * 1_000_003 + sub.index

    def is_correct(pixels: Tensor) -> Tensor:
        return verdict.correct(model, sub.with_pixels(pixels))

    # EOT as the rand protocol attacks: every step averages >= its eot_draws noise draws
    rand = load_protocol(LATEST["rand"])
    setting = Setting(model, cell.task.objective(None), sub, is_correct, eps, steps, seed, randomized=randomized,
                      eot=rand.eot_for(cell.defense) or 16)
    if other is not None:  # a fresh copy of the model: a defense may wrap or change the one it is given
        setting.surrogate = other.defense.apply(load_model(other.model_name, LoadOptions(device=dev.type)))
        setting.surrogate_name = f"{model_name} + {surrogate}" if surrogate != "none" else f"{model_name} undefended"
        setting.surrogate_randomized = bool(getattr(other.defense, "randomized", False))
        setting.surrogate_eot = rand.eot_for(other.defense) or 16
    return sanity_checks(setting, checks=checks)
