"""Square Attack (Andriushchenko et al. 2020, arXiv:1912.00049), linf, score-based, with
AutoAttack standard's settings by default (5,000 queries, p_init 0.8, margin loss, one restart).

Why our own rather than torchattacks' (which ``aa-square`` runs): the late members of the protocol
run on the few samples still standing, thousands of queries each, so the loop around the forward
is most of Square's cost. This loop keeps only the standing rows (no scatter per query), draws each
sample's windows and colours from the sample's own stream up front (``batch.seeds``; so a sample's
result does not depend on the batch it is in, and cells may pool samples in any batch size), and
queries through the Objective API directly (row-bound objectives need no tracing).

The search is the paper's: vertical-stripe start at the linf sphere; at query ``i`` a square of
side ``s(i)`` (AutoAttack's p schedule, unscaled) at a random place of each image is set to
``x ± eps`` with a random sign per channel; the candidate is kept when the loss decreases or the sample becomes misclassified. The window is drawn per image (as in the paper's code) where
AutoAttack's PyTorch port shares one window across the batch. l2 runs torchattacks' Square.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from robustbench_mm.attacks.apgd import LogitsCall
from robustbench_mm.attacks.base import ATTACKS, Attack, check_threat
from robustbench_mm.attacks.objectives import bound, has_logits
from robustbench_mm.attacks.verdict import judge_run, verdict_of
from robustbench_mm.attacks.worst_case import rows_like
from robustbench_mm.errors import CapabilityError, ConfigError
from robustbench_mm.types import AttackResult, Batch, Objective

# AutoAttack's p schedule (resc_schedule false): (last query of the stage, divisor of p_init)
_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256))


def p_selection(p_init: float, it: int) -> float:
    """Fraction of pixels the square covers at query ``it`` (0-based)."""
    for last, div in _SCHEDULE:
        if it <= last:
            return p_init / div
    return p_init / 512


def margin_and_loss(logits: Tensor, batch: Batch, loss: str, targeted: bool) -> tuple[Tensor, Tensor]:
    """``margin`` (> 0 while the attack has not succeeded) and the loss Square minimises, ``[B]``."""
    z = logits.float()
    rows = torch.arange(len(z), device=z.device)
    ref = (batch.targets if targeted else batch.labels).to(z.device)  # type: ignore[union-attr]
    z_ref = z[rows, ref]
    z_other = z.index_put((rows, ref), torch.tensor(-math.inf, device=z.device)).amax(dim=1)
    margin = z_other - z_ref if targeted else z_ref - z_other
    if loss == "margin":
        return margin, margin
    ce = torch.nn.functional.cross_entropy(z, ref, reduction="none")
    return margin, (ce if targeted else -ce)


class _Draws:
    """Every random number one restart needs, per sample: start signs ``[B,C,1,W]`` and, per query,
    the window's place in [0,1)^2 and one sign per channel (``place [B,Q,2]``, ``signs [B,Q,C]``).

    With per-example ``seeds`` a sample's stream depends on its seed and the restart number only, not
    on the caller's generator: how far earlier members advanced it depends on the other samples of
    the batch (APGD-T stops drawing once every sample is broken)."""

    def __init__(self, shape: torch.Size, queries: int, generator: torch.Generator, seeds: Tensor | None,
                 restart: int) -> None:
        n, c, _, w = shape
        if seeds is not None:
            streams = [torch.Generator().manual_seed((int(s) * 1_000_033 + 7_919 * (restart + 1)) % 2**62)
                       for s in seeds.tolist()]
        else:
            streams = [generator] * n
        self.start = torch.stack([_signs((c, 1, w), g) for g in streams])
        self.place = torch.stack([torch.rand((queries, 2), generator=g) for g in streams])
        self.signs = torch.stack([_signs((queries, c), g) for g in streams])


def _signs(shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


@ATTACKS.register("square")
class Square(LogitsCall, Attack):
    """Score-based Square Attack on the samples still standing (see module docstring).

    Args:
        norm, eps: threat model (l2 delegates to torchattacks' Square with the same options).
        steps: queries per restart (5,000 in AutoAttack standard).
        p_init: initial fraction of pixels per square (0.8 in AutoAttack standard).
        restarts: restarts, each on the samples the previous ones left standing.
        loss: ``margin`` (AutoAttack) or ``ce``.
        seed: generator seed when called as ``attack(model, x, y)``.
    """

    def __init__(self, *, norm: Literal["linf", "l2"] = "linf", eps: float = 8 / 255, steps: int = 5000,
                 p_init: float = 0.8, restarts: int = 1, loss: Literal["margin", "ce"] = "margin", seed: int = 0) -> None:
        check_threat(norm, eps, steps)
        if not 0 < p_init <= 1 or restarts <= 0:
            raise ConfigError(f"p_init={p_init} must lie in (0, 1] and restarts={restarts} be a positive integer")
        if loss not in ("margin", "ce"):
            raise ConfigError(f"loss={loss!r} must be margin or ce")
        self.norm, self.eps, self.steps, self.p_init = norm, eps, steps, p_init
        self.restarts, self.square_loss, self.seed = restarts, loss, seed
        self.loss = None  # the task's objective decides labels/targets; Square uses its own loss on the logits

    def check_task(self, objective: Objective, capabilities: frozenset[str]) -> None:
        if not has_logits(objective):
            raise CapabilityError("square needs a classification task (class logits); use apgd for generative tasks")

    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        self.check_task(objective, frozenset())
        if self.norm == "l2":
            return self._torchattacks_l2(model, batch, objective, generator)
        x = batch.pixels.detach()
        out = x.clone()
        standing = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for restart in range(self.restarts):
            if not bool(standing.any()):
                break
            sub = batch.select(standing)
            adv, succ = self.run_once(model, sub, objective, generator, restart)
            succ = judge_run(model, sub, objective, adv, succ)
            rows = standing.nonzero().flatten()
            out[rows] = adv
            if succ is None:  # randomized model: every restart sees every sample, the last one stands
                continue
            standing[rows[succ.to(rows.device)]] = False
        with torch.no_grad():
            loss = objective(model, out, batch).float()
        return AttackResult(out, loss, self.restarts * (self.steps + 1))

    def run_once(self, model: Any, batch: Batch, objective: Any, generator: torch.Generator,
                 restart: int = 0) -> tuple[Tensor, Tensor | None]:
        """One restart: the adversarial images and success (None for randomized models, whose
        one-draw flag is no verdict: they query to the end and keep the lowest-loss point)."""
        assert self.eps is not None
        x, eps = batch.pixels.detach(), float(self.eps)
        n, c, h, w = x.shape
        draws = _Draws(x.shape, self.steps, generator, batch.seeds, restart)
        # moved to the images' device once, not per query (drawn on CPU so a seed means one search everywhere)
        place_all, signs_all = draws.place.to(x.device), draws.signs.to(x)
        can_stop = verdict_of(batch).draws == 1
        targeted = bool(getattr(objective, "targeted", False))
        ys, xs = torch.arange(h, device=x.device).view(1, h, 1), torch.arange(w, device=x.device).view(1, 1, w)
        out = (x + eps * draws.start.to(x)).clamp(0.0, 1.0)
        with torch.no_grad():
            margin, loss = margin_and_loss(bound(objective, batch).logits(model, out), batch, self.square_loss, targeted)
        rows = torch.arange(n, device=x.device)  # the standing rows, in their compact tensors below
        x_s, best, m_s, l_s, sub = x, out.clone(), margin, loss, batch
        for i in range(self.steps):
            if can_stop:
                keep = m_s > 0
                if not bool(keep.all()):
                    out[rows[~keep]] = best[~keep]
                    rows, x_s, best, m_s, l_s = rows[keep], x_s[keep], best[keep], m_s[keep], l_s[keep]
                    if not len(rows):
                        break
                    sub = batch.take(rows)
            s = min(max(int(round(math.sqrt(p_selection(self.p_init, i) * h * w))), 1), h - 1)
            place = place_all[rows, i]
            top = (place[:, 0] * (h - s)).long().view(-1, 1, 1)
            left = (place[:, 1] * (w - s)).long().view(-1, 1, 1)
            window = ((ys >= top) & (ys < top + s) & (xs >= left) & (xs < left + s)).unsqueeze(1)
            colour = signs_all[rows, i].view(-1, c, 1, 1)
            cand = torch.where(window, (x_s + eps * colour).clamp(0.0, 1.0), best)
            with torch.no_grad():
                margin, loss = margin_and_loss(bound(objective, sub).logits(model, cand), sub,
                                               self.square_loss, targeted)
            take = (loss < l_s) | (margin <= 0)
            l_s = torch.where(loss < l_s, loss, l_s)
            m_s = torch.where(take, margin, m_s)
            best = torch.where(rows_like(take, best), cand, best)
        out[rows] = best
        if not can_stop:
            return out, None
        final = torch.ones(n, dtype=torch.bool, device=x.device)
        final[rows] = m_s <= 0
        return out, final

    def _torchattacks_l2(self, model: Any, batch: Batch, objective: Objective, generator: torch.Generator) -> AttackResult:
        from robustbench_mm.attacks.torchattacks_bridge import TorchattacksBridge

        options = {"p_init": self.p_init, "n_restarts": self.restarts, "loss": self.square_loss, "resc_schedule": False}
        bridge = TorchattacksBridge(cls="Square", norm="l2", eps=float(self.eps or 0), steps=self.steps,
                                    options=options, seed=self.seed)
        return bridge.perturb(model, batch, objective, generator=generator)
