"""The published ordering of retrieval attacks (SGA >= Co-Attack >= Sep-Attack >= PGD-image-only on
image->text R@1 attack success, within 95% intervals) at a CI size, through the committed script's
own measurement, on the set where the text side matters: fmnist-captions-retrieval with
clip-tiny-captions, whose text tower reads the attribute words (on fmnist-retrieval / clip-tiny the
text side breaks nothing and the ordering holds only as ties)."""

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
def test_published_ordering_holds_and_the_text_side_breaks_queries(tmp_path: Path) -> None:
    script = strength_script()
    task = "fmnist-captions-retrieval"
    rows = script.measure(script.MODEL_FOR_TASK[task], 40, 0, "cpu", tmp_path / "store", task)
    by = {r["attack"]: r for r in rows}
    assert script.ordering_holds(rows) == [], rows
    assert all(0 <= r["tr_asr_low"] <= r["tr_asr"] <= r["tr_asr_high"] <= 1 for r in rows)
    assert by["pgd"]["tr_asr"] > 0  # the image attack breaks some queries: the ordering is not among zeros
    # the text side does something: word substitution alone breaks queries, and the joint attack
    # that adds it to the image attack beats image-only PGD beyond PGD's interval
    assert by["bert-attack"]["tr_asr_low"] > 0
    assert by["co-attack"]["tr_asr"] > by["pgd"]["tr_asr_high"], rows
