"""Targeted FAB (Croce & Hein 2020, "Minimally distorted adversarial examples with a fast adaptive
boundary attack", arXiv:1907.02044), AutoAttack's FAB-T, linf, with the targets run side by side.

Per (sample, target) row, from the clean image and without a random start (AutoAttack's one
restart): linearise the difference of the target's and the true class's logit at the iterate,
project both the iterate and the clean image onto the plane where it vanishes (``fab_projection``),
step ``eta`` past the plane, biased towards the clean image's projection by ``alpha = a1/(a1+a2)``
(capped at ``alpha_max``), clip to the box; an iterate that is misclassified is recorded if it is
the closest so far and pulled back towards the clean image by ``beta``. The targets are the 9 most
likely non-true classes of the clean logits, as in AutoAttack.

Why our own rather than torchattacks' FAB (which ``ta-fab-t`` runs): the protocol runs FAB-T on the
few samples APGD left standing, one target after the other, at batches of a few rows; its time
was 2.4x the forward+backward passes its budget needs, a third of it in the projection's sort.
Here the targets of a sample are rows of one batch (``STACKED_ROWS`` at most), the projection
needs no sort (Newton steps, ``fab_projection``), and a sample stops once one of its rows finds a
misclassified point inside the budget: FAB only shrinks that point's distance afterwards, which cannot change the verdict at
``eps`` (the returned image is then the first such point, not the smallest one). Every row's
trajectory depends on its sample and target only, so the samples broken are the ones
torchattacks' FAB-T breaks (tests/attacks/test_fab.py). l2 runs torchattacks' FAB.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from robustbench_mm.attacks.apgd import LogitsCall, targets_in_turn, targets_per_chunk
from robustbench_mm.attacks.base import ATTACKS, Attack, check_threat
from robustbench_mm.attacks.fab_projection import project_linf
from robustbench_mm.attacks.objectives import bound, has_logits
from robustbench_mm.attacks.verdict import fp32_forward, verdict_of
from robustbench_mm.attacks.worst_case import rows_like
from robustbench_mm.errors import CapabilityError, ConfigError
from robustbench_mm.types import AttackResult, Batch, Objective


@ATTACKS.register("fab-t")
class FABTargeted(LogitsCall, Attack):
    """FAB-T over the ``n_targets`` most likely non-true classes (see module docstring).

    Args:
        norm, eps: threat model (l2 delegates to torchattacks' FAB with the same options).
        steps: iterations per target (100 in AutoAttack standard).
        n_targets: target classes per sample (9 in AutoAttack standard).
        alpha_max, eta, beta: FAB's bias cap, overshoot and pull-back (0.1, 1.05, 0.9 in AutoAttack).
        seed: unused by the search (deterministic), kept for the common attack interface.
    """

    def __init__(self, *, norm: Literal["linf", "l2"] = "linf", eps: float = 8 / 255, steps: int = 100,
                 n_targets: int = 9, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                 seed: int = 0) -> None:
        check_threat(norm, eps, steps)
        if n_targets <= 0:
            raise ConfigError(f"n_targets={n_targets} must be a positive integer")
        if not (0 <= alpha_max <= 1 and eta >= 1 and 0 < beta < 1):
            raise ConfigError(f"alpha_max={alpha_max} must lie in [0,1], eta={eta} be >= 1 and beta={beta} in (0,1)")
        self.norm, self.eps, self.steps, self.n_targets = norm, eps, steps, n_targets
        self.alpha_max, self.eta, self.beta, self.seed = alpha_max, eta, beta, seed
        self.loss = None  # FAB needs the logits only; the task decides labels

    def check_task(self, objective: Objective, capabilities: frozenset[str]) -> None:
        if not has_logits(objective):
            raise CapabilityError("fab-t needs a classification task (class logits); use apgd for generative tasks")

    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        self.check_task(objective, frozenset())
        base: Any = objective
        base = base.with_loss(base.loss, targeted=False) if getattr(base, "targeted", False) else base
        if self.norm == "l2":
            return self._torchattacks_l2(model, batch, base, generator)
        x = batch.pixels.detach()
        clean = verdict_of(batch).mean_logits(bound(base, batch).logits, model, x)  # fp32, as the verdict
        n_t = min(self.n_targets, clean.shape[1] - 1)
        targets = clean.argsort(dim=1, descending=True)[:, 1:n_t + 1]
        out, nominated, used = self._stacked(model, batch, base, targets)
        broken = verdict_of(batch).confirm(model, out, batch, base, nominated)  # the verdict, not the search, breaks
        out = torch.where(rows_like(broken, x), out, x)
        with torch.no_grad():
            loss = base(model, out, batch).float()
        return AttackResult(out, loss, used * (2 * self.steps + 1))

    def _stacked(self, model: Any, batch: Batch, base: Any, targets: Tensor) -> tuple[Tensor, Tensor, int]:
        """Rows (sample x target) in chunks of ``STACKED_ROWS``, target-major; returns the images, the
        samples the search nominates as broken and the targets the loop in turn would have run."""
        x, n, n_t = batch.pixels.detach(), len(batch), targets.shape[1]
        out, nominated = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
        first = torch.full((n,), n_t, dtype=torch.long, device=x.device)  # first breaking target per sample
        per_chunk = targets_per_chunk(n, x.device)
        for k0 in range(0, n_t, per_chunk):
            rows = (~nominated).nonzero().flatten()
            if not len(rows):
                break
            ks = list(range(k0, min(k0 + per_chunk, n_t)))
            sample = rows.repeat(len(ks))
            adv, found = self.run_rows(model, batch.take(sample), base, torch.cat([targets[rows, k] for k in ks]))
            for j in reversed(range(len(ks))):  # the lowest target that breaks a sample picks its image
                part = slice(j * len(rows), (j + 1) * len(rows))
                hit = rows[found[part]]
                out[hit], first[hit] = adv[part][found[part]], ks[j]
            nominated[sample[found]] = True
        return out, nominated, targets_in_turn(first, n_t)

    def run_rows(self, model: Any, rows: Batch, base: Any, targets: Tensor) -> tuple[Tensor, Tensor]:
        """FAB on every row towards its target; ``(image, found)``: for rows that found a
        misclassified point within ``eps``, the first such point."""
        assert self.eps is not None
        x0 = rows.pixels.detach()
        labels = rows.labels.to(x0.device)
        eps = float(self.eps)
        stop_early = verdict_of(rows).draws == 1
        found = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
        closest = torch.full((len(x0),), float("inf"), device=x0.device)
        best, x1 = x0.clone(), x0.clone()
        live = torch.arange(len(x0), device=x0.device)  # rows still iterating, in the compact tensors below
        scorer, y, t, start = bound(base, rows), labels, targets.to(x0.device), x0  # logits of the live rows
        for _ in range(self.steps):
            diff, grad = _target_margin_and_grad(model, scorer, x1, y, t)
            w = grad.flatten(1)
            b = (w * x1.flatten(1)).sum(1) - diff
            moves = project_linf(torch.cat([x1.flatten(1), start.flatten(1)]), torch.cat([w, w]), torch.cat([b, b]))
            size = moves.abs().amax(1).clamp_min(1e-8)
            a1, a2 = size[: len(x1)], size[len(x1):]
            alpha = rows_like((a1 / (a1 + a2)).clamp(0.0, self.alpha_max), x1)
            d1, d2 = moves[: len(x1)].view_as(x1), moves[len(x1):].view_as(x1)
            x1 = ((x1 + self.eta * d1) * (1 - alpha) + (start + self.eta * d2) * alpha).clamp(0.0, 1.0)
            with fp32_forward(x1.device):
                wrong = scorer.logits(model, x1).argmax(1) != y
            dist = (x1 - start).flatten(1).abs().amax(1)
            closer = wrong & (dist < closest[live])
            best[live[closer]] = x1[closer]
            closest[live[closer]] = dist[closer]
            found[live[closer & (dist <= eps)]] = True
            x1 = torch.where(rows_like(wrong, x1), start + (x1 - start) * self.beta, x1)
            if stop_early:
                keep = ~found[live]
                if not bool(keep.all()):
                    live, x1, y, t, start = live[keep], x1[keep], y[keep], t[keep], start[keep]
                    if not len(live):
                        break
                    scorer = bound(base, rows.take(live))
        return best, found

    def _torchattacks_l2(self, model: Any, batch: Batch, objective: Any, generator: torch.Generator) -> AttackResult:
        from robustbench_mm.attacks.torchattacks_bridge import TorchattacksBridge

        options = {"multi_targeted": True, "n_restarts": 1, "alpha_max": self.alpha_max, "eta": self.eta,
                   "beta": self.beta}
        bridge = TorchattacksBridge(cls="FAB", norm="l2", eps=float(self.eps or 0), steps=self.steps,
                                    options=options, seed=self.seed)
        return bridge.perturb(model, batch, objective, generator=generator)


def _target_margin_and_grad(model: Any, scorer: Any, x: Tensor, labels: Tensor,
                            targets: Tensor) -> tuple[Tensor, Tensor]:
    """``z_target - z_true`` per row at ``x`` (``scorer``: the objective bound to these rows) and its
    gradient in the pixels (one forward+backward)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = scorer.logits(model, x).float()
        idx = torch.arange(len(x), device=x.device)
        diff = z[idx, targets] - z[idx, labels]
        (grad,) = torch.autograd.grad(diff.sum(), x)
    return diff.detach(), grad.detach()
