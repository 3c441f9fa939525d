"""Margin loss added for defenses that rescale logits (design 'Trust').

A network whose logits are multiplied by 1e4 has a saturated softmax: the cross-entropy of a
confidently correct sample is exactly 0 in fp32, with a zero gradient, so a CE attack cannot move
it (the classic gradient masking of logit rescaling). The margin loss is unaffected by the scale.
"""

from __future__ import annotations

import torch
from torch import nn

from robustbench_mm.attacks.adaptive import WithMarginLoss, needs_margin
from robustbench_mm.attacks.objectives import ModuleObjective
from robustbench_mm.attacks.pgd import PGD
from robustbench_mm.types import Batch


class Rescaled(nn.Module):
    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


def robust_accuracy(model: nn.Module, attack, x: torch.Tensor, y: torch.Tensor) -> float:
    batch = Batch(pixels=x, labels=y, index=torch.arange(len(x)))
    res = attack.perturb(model, batch, ModuleObjective(loss="ce"), generator=torch.Generator().manual_seed(0))
    assert (res.pixels - x).abs().max() <= 8 / 255 + 1e-6
    with torch.no_grad():
        return float((model(res.pixels).argmax(1) == y).float().mean())


def test_margin_loss_defeats_logit_rescaling(fmnist_model, eval_set):
    net, _ = fmnist_model
    masked = Rescaled(net, 1e4).eval()
    x, y = eval_set
    pgd = PGD(norm="linf", eps=8 / 255, steps=10)
    ce_only = robust_accuracy(masked, pgd, x, y)
    with_margin = robust_accuracy(masked, WithMarginLoss(pgd), x, y)
    plain = robust_accuracy(net, pgd, x, y)  # the same network without the rescaling
    assert with_margin <= ce_only
    assert ce_only - with_margin >= 0.2, (ce_only, with_margin)  # the masking is real and undone
    assert with_margin <= plain + 0.05, (with_margin, plain)  # as strong as on the unmasked network


def test_margin_not_added_twice():
    from robustbench_mm.attacks import build

    assert needs_margin(build("pgd"), True)
    assert not needs_margin(build("apgd-dlr"), True)
    assert not needs_margin(build("aa-white"), True)  # its APGD-T member already uses targeted DLR
    assert not needs_margin(build("pgd"), False)  # generative / embedding objectives have no logits


def test_runner_names_the_margin_attack(tmp_path):
    """topk-rs declares rescales_logits: the cell's attack becomes pgd+margin; clean stays as is."""
    from robustbench_mm.runner.resolve import CellSpec, resolve

    cell = resolve(CellSpec(model="clip-tiny", attack="pgd", defense="topk-rs", n=8))
    assert cell.attack.name == "pgd+margin" and isinstance(cell.attack, WithMarginLoss)
    assert resolve(CellSpec(model="clip-tiny", attack="apgd-dlr", defense="topk-rs", n=8)).attack.name == "apgd-dlr"
    assert resolve(CellSpec(model="clip-tiny", attack="none", defense="topk-rs", n=8)).attack.name == "none"
    assert resolve(CellSpec(model="clip-tiny", attack="pgd", defense="tecoa", n=8)).attack.name == "pgd"
