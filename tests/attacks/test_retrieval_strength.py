"""The published ordering of retrieval attacks (SGA >= Co-Attack >= Sep-Attack >= PGD-image-only on
image->text R@1 attack success, within 95% intervals) on clip-tiny at a CI size, through the
committed script's own measurement."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def strength_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("retrieval_attacks", ROOT / "scripts" / "retrieval_attacks.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_ordering_check_flags_a_weaker_stronger_attack() -> None:
    script = strength_script()
    rows = [{"attack": a, "tr_asr": v, "tr_asr_low": v - 0.05, "tr_asr_high": v + 0.05}
            for a, v in (("pgd", 0.5), ("sep-attack", 0.6), ("co-attack", 0.7), ("sga", 0.8))]
    assert script.ordering_holds(rows) == []
    rows[3]["tr_asr"] = 0.6  # SGA below Co-Attack's interval
    assert script.ordering_holds(rows) and "sga" in script.ordering_holds(rows)[0]


@pytest.mark.slow
def test_published_ordering_holds_on_clip_tiny(tmp_path: Path) -> None:
    script = strength_script()
    rows = script.measure("clip-tiny", 40, 0, "cpu", tmp_path / "store")
    by = {r["attack"]: r for r in rows}
    assert script.ordering_holds(rows) == [], rows
    assert by["pgd"]["tr_asr"] > 0  # the image attack breaks some queries: the ordering is not among zeros
    assert all(0 <= r["tr_asr_low"] <= r["tr_asr"] <= r["tr_asr_high"] <= 1 for r in rows)
