"""The leaderboard names the vision encoder of each VLM entry (issue 33): the same VLM with two towers is
two entries, each called ``<vlm> + <encoder>``, and its model card says the tower was replaced."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robustbench_mm.report import entries as entries_mod
from robustbench_mm.report.cards import model_card
from robustbench_mm.runner.store import ResultStore

T, F = True, False


def _with_encoders(root: Path, encoders: dict[str, str]) -> None:
    for d in sorted((root / "cells").iterdir()):
        asr = pd.read_parquet(d / "asr.parquet")
        asr["vision_encoder"] = encoders.get(str(asr["cell_id"].iloc[0]), "")
        asr.to_parquet(d / "asr.parquet", index=False)
    ResultStore(root).rebuild_views()


def test_each_encoder_is_its_own_entry_named_with_it(make_store) -> None:  # type: ignore[no-untyped-def]
    clean = [T] * 10
    root = make_store("s", [
        dict(cell_id="own", model="llava-tiny", task="fmnist-caption", clean=clean, adv=[F] * 8 + [T] * 2),
        dict(cell_id="fare", model="llava-tiny", task="fmnist-caption", clean=clean, adv=[F] * 4 + [T] * 6),
        dict(cell_id="clip", model="clip-tiny", clean=clean),
    ])
    _with_encoders(root, {"fare": "fare-clip-tiny"})
    board = entries_mod.build([root]).entries
    caption = board[board["task"] == "fmnist-caption"].set_index("model")
    assert sorted(caption.index) == ["llava-tiny", "llava-tiny + fare-clip-tiny"]
    assert caption.loc["llava-tiny + fare-clip-tiny", "robust_accuracy"] == 0.6
    assert caption.loc["llava-tiny", "robust_accuracy"] == 0.2
    assert caption.loc["llava-tiny + fare-clip-tiny", "rank"] == 1
    assert list(board[board["task"] == "fmnist-zeroshot"]["model"]) == ["clip-tiny"]


def test_model_card_of_a_swapped_vlm_names_the_encoder_and_keeps_the_vlm_card() -> None:
    source, text = model_card("llava-tiny + fare-clip-tiny")
    own_source, own_text = model_card("llava-tiny")
    assert source == own_source and own_text and own_text in text
    assert text.startswith("Vision tower replaced by the CLIP image encoder `fare-clip-tiny`")
