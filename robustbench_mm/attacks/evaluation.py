"""One evaluation of an Objective at the current iterate, shared by the iterative attacks.

The search may run under bf16 autocast (precision policy: the verdict is recomputed in fp32).
Objectives with ``loss_and_success`` (classification) report success from the same forward pass;
that flag only nominates: ``attacks.verdict.confirm_success`` re-judges nominated rows with the
verdict procedure (fp32; majority of fresh draws for randomized models) wherever the search's
forward is not already the verdict, so an attack only ever stops on a verdict.
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch
from torch import Tensor

from robustbench_mm.attacks.verdict import confirm_success
from robustbench_mm.types import Batch, Objective


def autocast_context(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast for the search (precision policy: the verdict is recomputed in fp32)."""
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Evaluation(NamedTuple):
    """Objective ``[B]`` (mean over EOT draws), its input gradient, success ``bool[B]`` (None when
    the objective cannot tell)."""

    loss: Tensor
    grad: Tensor
    success: Tensor | None


def evaluate(model: Any, x: Tensor, batch: Batch, objective: Objective, eot: int, search_dtype: str) -> Evaluation:
    """One forward+backward per EOT draw; success must hold in every draw to count."""
    x = x.detach().requires_grad_(True)
    loss, success = _draws(model, x, batch, objective, eot, search_dtype)
    grad = torch.autograd.grad(loss.sum(), x)[0] / eot
    success = confirm_success(model, x, batch, objective, success, search_dtype)
    return Evaluation(loss.detach() / eot, grad.detach(), success)


def score(model: Any, x: Tensor, batch: Batch, objective: Objective, eot: int,
          search_dtype: str) -> tuple[Tensor, Tensor | None]:
    """Objective ``[B]`` and success at ``x`` without a gradient (a final iterate's check)."""
    with torch.no_grad():
        loss, success = _draws(model, x.detach(), batch, objective, eot, search_dtype)
    return loss / eot, confirm_success(model, x, batch, objective, success, search_dtype)


def _draws(model: Any, x: Tensor, batch: Batch, objective: Objective, eot: int,
           search_dtype: str) -> tuple[Tensor, Tensor | None]:
    """Sum of the objective over ``eot`` draws, and success in every draw."""
    fn = getattr(objective, "loss_and_success", None)
    total = torch.zeros(len(x), device=x.device)
    success: Tensor | None = None
    for _ in range(eot):
        with autocast_context(x.device, search_dtype):
            if fn is not None:
                loss, s = fn(model, x, batch)
                success = s if success is None else success & s
            else:
                loss = objective(model, x, batch)
        total = total + loss.float()
    return total, success


def syncs_are_free(device: torch.device) -> bool:
    """On CPU reading a value back costs nothing, so broken samples leave the batch at once; on an
    accelerator they ride along (their first success stays recorded), so the step loop never syncs."""
    return device.type == "cpu"


def keep_rows(keep: Tensor, batch: Batch, *per_row: Tensor) -> tuple[Batch, tuple[Tensor, ...]]:
    """The rows of ``batch`` and of each per-row tensor where ``keep`` (bool ``[B]``) holds: how an
    attack drops its broken samples. Nothing is copied when every row is kept."""
    if bool(keep.all()):
        return batch, per_row
    return batch.select(keep), tuple(t[keep] for t in per_row)
