"""The per-sample worst case over several runs (restarts, targets, ensemble members, adaptive
variants): design 'Trust' — a sample is robust only if it survives every run.

Runs go in order; when the objective can tell success, each later run sees only the samples still
standing (the AutoAttack way), and a success beats any non-success; otherwise every run sees every
sample and the higher objective wins.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, NamedTuple

import torch
from torch import Tensor


class RunResult(NamedTuple):
    pixels: Tensor  # successful iterate where one exists, else the best-objective point
    loss: Tensor  # objective at ``pixels``
    success: Tensor | None


# A run attacks the rows of ``alive`` (bool mask; None = all rows) and returns a RunResult on them.
Run = Callable[[Tensor | None], RunResult]


def fold_worst_case(x: Tensor, runs: Iterable[Run]) -> tuple[RunResult, int]:
    """Per-sample worst case of ``runs`` (called lazily, stopping once every sample is broken);
    returns it and the number of runs that ran."""
    out_x = x.detach().clone()
    out_loss = torch.full((len(x),), -math.inf, device=x.device)
    out_succ: Tensor | None = None
    done = 0
    for run in runs:
        alive = None if out_succ is None else ~out_succ
        if alive is not None and not bool(alive.any()):
            break
        res = run(alive)
        done += 1
        out_x, out_loss, out_succ = merge(out_x, out_loss, out_succ, res, alive)
    return RunResult(out_x, out_loss, out_succ), done


def merge(out_x: Tensor, out_loss: Tensor, out_succ: Tensor | None, res: RunResult,
          rows: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Fold a run on ``rows`` (bool mask or row indices; None = all) into the running per-sample
    worst case: a success beats any non-success, else the higher objective wins."""
    if rows is None:
        idx = torch.arange(len(out_x), device=out_x.device)
    else:
        idx = rows.nonzero().flatten() if rows.dtype == torch.bool else rows
    cur_loss = out_loss[idx]
    take = res.loss > cur_loss
    if res.success is not None:
        cur_succ = out_succ[idx] if out_succ is not None else torch.zeros_like(res.success)
        take = (res.success & ~cur_succ) | (take & ~cur_succ)
    out_x, out_loss = out_x.clone(), out_loss.clone()
    out_x[idx] = torch.where(rows_like(take, res.pixels), res.pixels, out_x[idx])
    out_loss[idx] = torch.where(take, res.loss, cur_loss)
    if res.success is not None:
        out_succ = torch.zeros(len(out_x), dtype=torch.bool, device=out_x.device) if out_succ is None else out_succ.clone()
        out_succ[idx] = out_succ[idx] | res.success
    return out_x, out_loss, out_succ


def rows_like(mask: Tensor, like: Tensor) -> Tensor:
    """``mask [B]`` viewed to broadcast over ``like [B,...]``."""
    return mask.view(-1, *([1] * (like.dim() - 1)))
