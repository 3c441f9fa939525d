"""Every member of the standard protocol runs with AutoAttack standard's own settings, read back from
the objects the resolver builds for a real cell (and, for torchattacks members, from the torchattacks
object those settings construct). The expected values are AutoAttack's (``autoattack/autoattack.py``,
version 'standard': APGD-CE 1 restart; APGD-T 9 targets, 1 restart; FAB-T 9 targets, 1 restart;
Square p_init 0.8, 5,000 queries, 1 restart, resc_schedule False: our ``square`` member takes the
unscaled schedule always; our ``fab-t`` takes no random start, as AutoAttack's one restart). v2's
``aa-square`` and v3's ``ta-fab-t`` (torchattacks' Square and FAB) are checked the same way."""

from __future__ import annotations

from typing import Any

import pytest
from torch import nn

from robustbench_mm.runner.protocol import LATEST
from robustbench_mm.runner.resolve import CellSpec, resolve

AUTOATTACK_STANDARD: dict[str, dict[str, Any]] = {
    "apgd-ce": {"steps": 100, "restarts": 1, "loss": "ce", "rho": 0.75, "momentum": 0.75, "eot": 1},
    "apgd-t": {"steps": 100, "restarts": 1, "loss": "dlr", "rho": 0.75, "momentum": 0.75, "eot": 1, "n_targets": 9},
    "fab-t": {"steps": 100, "n_targets": 9, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9},
    "square": {"steps": 5000, "p_init": 0.8, "restarts": 1, "square_loss": "margin"},
}


def _members(norm: str, eps: float) -> dict[str, Any]:
    cell = resolve(CellSpec(model="clip-tiny", attack="x", task="fmnist-zeroshot", norm=norm, eps=eps, n=8,
                            protocol=LATEST["standard"]))
    return {m.name: m for m in cell.attack.members}


def _read_back(member: Any) -> dict[str, Any]:
    """Our attack's attributes, or the torchattacks object's, as the run would construct it."""
    if not hasattr(member, "cls_name"):
        return vars(member)
    import torchattacks

    return vars(getattr(torchattacks, member.cls_name)(nn.Linear(2, 10), **member.kwargs))


@pytest.mark.parametrize("norm,eps,ta_norm", [("linf", 8 / 255, "Linf"), ("l2", 0.5, "L2")])
def test_standard_members_equal_autoattack_standard(norm: str, eps: float, ta_norm: str) -> None:
    members = _members(norm, eps)
    assert list(members) == list(AUTOATTACK_STANDARD)  # AutoAttack's order
    for name, expected in AUTOATTACK_STANDARD.items():
        got = _read_back(members[name])
        assert {k: got.get(k) for k in expected} == expected, name
        assert float(got["eps"]) == pytest.approx(eps)
        assert got["norm"] in (norm, ta_norm)


def test_v2_square_member_reads_back_autoattacks_settings() -> None:
    cell = resolve(CellSpec(model="clip-tiny", attack="x", task="fmnist-zeroshot", norm="linf", eps=8 / 255, n=8,
                            protocol="standard-v2"))
    square = {m.name: m for m in cell.attack.members}["aa-square"]
    got = _read_back(square)
    assert {k: got[k] for k in ("n_queries", "p_init", "n_restarts", "loss", "rescale_schedule")} == {
        "n_queries": 5000, "p_init": 0.8, "n_restarts": 1, "loss": "margin", "rescale_schedule": False}


def test_v3_fab_member_reads_back_autoattacks_settings() -> None:
    cell = resolve(CellSpec(model="clip-tiny", attack="x", task="fmnist-zeroshot", norm="linf", eps=8 / 255, n=8,
                            protocol="standard-v3"))
    got = _read_back({m.name: m for m in cell.attack.members}["ta-fab-t"])
    assert {k: got[k] for k in ("steps", "n_restarts", "multi_targeted", "n_target_classes", "alpha_max", "eta",
                                "beta")} == {"steps": 100, "n_restarts": 1, "multi_targeted": True,
                                             "n_target_classes": 9, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9}


def test_torchattacks_square_default_differs_so_v1_member_is_not_autoattacks() -> None:
    """The control: torchattacks' own Square default (v1's ta-square) rescales the schedule."""
    from robustbench_mm.attacks.base import build
    from robustbench_mm.runner.registration import register_all

    register_all()
    assert _read_back(build("ta-square"))["rescale_schedule"] is True
