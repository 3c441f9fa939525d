"""FAB's linf step: the smallest linf move from a point onto a hyperplane, inside the [0,1] box.

For a point ``t``, a hyperplane ``w . z = b`` and the box, the move ``d`` minimising ``max|d_i|``
with ``w . (t + d) = b`` and ``0 <= t + d <= 1`` (Croce & Hein 2020, FAB, section 3). Oriented so
that ``r = w . t - b >= 0`` has to be removed, coordinate ``i`` moves by ``-sign(w_i) m_i`` with
``0 <= m_i <= cap_i`` (its room to the box face in that direction), and a move of linf size ``l``
removes ``g(l) = sum_i |w_i| min(l, cap_i)``: concave, piecewise linear and nondecreasing. Where
even the full move (every coordinate to its face) removes less than ``r``, FAB takes the full move.

The size solving ``g(l) = r`` is found by Newton's method from ``l0 = r / sum|w|`` (where
``g(l0) <= r``): by concavity each tangent step stays at or below the solution, and a step that
crosses no kink lands on it exactly, so it ends after at most as many steps as kinks crossed (3 to
6 on the bundled images). The published algorithm sorts the caps instead; on Fashion-MNIST images
(a fifth of the coordinates tied at the black background) that sort cost five times these steps
on one CPU thread. The two agree to float rounding (tests/attacks/test_fab.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_NEWTON_STEPS = 100  # a safety bound; each step crosses at least one kink


def project_linf(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """The FAB linf move ``d [R,D]`` of points ``t [R,D]`` in [0,1] onto ``w [R,D] . z = b [R]``."""
    r = (w * t).sum(1) - b
    sign = torch.where(r < 0, -1.0, 1.0).to(t)
    w, r = w * sign[:, None], r * sign
    cap = torch.where(w > 0, t, 1 - t)  # room to the face the descent direction -sign(w) leads to
    aw = w.abs()
    reachable = (aw * cap).sum(1) > r
    size = torch.where(reachable, r / aw.sum(1).clamp_min(1e-30), torch.zeros_like(r))
    for _ in range(MAX_NEWTON_STEPS):
        moving = cap > size[:, None]
        removed = (aw * torch.where(moving, size[:, None], cap)).sum(1)
        slope = (aw * moving).sum(1)
        step = torch.where(reachable & (slope > 0), (r - removed) / slope.clamp_min(1e-30), torch.zeros_like(r))
        if not bool((step > 1e-7 * size.clamp_min(1e-12)).any()):
            break
        size = size + step.clamp_min(0.0)
    move = torch.where(reachable[:, None], torch.minimum(size[:, None], cap), cap)
    return -torch.sign(w) * move
