"""`mmrobust benchmark --task fmnist-retrieval`: the retrieval protocol file, its worst case per query."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from robustbench_mm.errors import ConfigError
from robustbench_mm.runner.protocol import load_protocol
from tests.cli_invoke import invoke


def test_retrieval_protocol_names_the_joint_attacks_at_the_papers_budget() -> None:
    protocol = load_protocol("retrieval-v1")
    plan = protocol.plan("retrieval", "fmnist-retrieval")
    assert plan.members == ("pgd", "sep-attack", "co-attack", "sga")
    assert [(t.norm, round(t.eps * 255, 6)) for t in plan.threat_models] == [("linf", 2.0)]


@pytest.mark.slow
def test_benchmark_reports_recall_and_takes_the_worst_case_per_query(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "store"
    code, stdout, stderr = invoke(monkeypatch, capsys, "benchmark", "--model", "clip-tiny", "--task",
                                  "fmnist-retrieval", "--n", "16", "--out", str(out))
    assert code == 0, stdout + stderr
    assert "image->text R@1/5/10 clean" in stdout and "text->image R@1/5/10 clean" in stdout
    assert "mm-retrieval/standard/v1" in stdout
    row = pd.read_parquet(out / "asr.parquet").iloc[0]
    samples = pd.read_parquet(out / "samples.parquet")
    assert row["word_budget"] == 1 and row["eps"] == pytest.approx(2 / 255)
    # the worst case is at least as strong as image-only PGD at the same budget, query by query
    code, _, _ = invoke(monkeypatch, capsys, "run", "--model", "clip-tiny", "--task", "fmnist-retrieval",
                        "--attack", "pgd", "--eps", "2/255", "--n", "16", "--out", str(tmp_path / "pgd"))
    pgd = pd.read_parquet(tmp_path / "pgd" / "samples.parquet").set_index("index")
    worst = samples.set_index("index")
    assert code == 0 and not (worst["tr_r1_adv"] & ~pgd.loc[worst.index, "tr_r1_adv"]).any()
    assert (worst["ir_r1_adv"] <= pgd.loc[worst.index, "ir_r1_adv"]).all()
    broken = worst[worst["success"]]
    assert broken["broken_by"].isin(["pgd", "sep-attack", "co-attack", "sga"]).all() and len(broken) > 0
    # the store makes a leaderboard section with Recall@1 clean and robust in both directions
    code, _, _ = invoke(monkeypatch, capsys, "leaderboard", str(out), "--out", str(tmp_path / "board"))
    board = (tmp_path / "board" / "leaderboard.md").read_text()
    assert code == 0 and "## fmnist-retrieval" in board and "mm-retrieval/standard/v1" in board
    line = next(x for x in board.splitlines() if x.startswith("| 1 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert "text->image R@1 robust" in board and "image->text R@1 clean" in board
    assert cells[4] == f"{row['tr_r1_clean'] * 100:.1f}%" and cells[5].startswith(f"[{row['tr_r1_adv'] * 100:.1f}%]")
    assert cells[6:8] == [f"{row['ir_r1_clean'] * 100:.1f}%", f"{row['ir_r1_adv'] * 100:.1f}%"]
    entries = pd.read_parquet(tmp_path / "board" / "entries.parquet")
    assert entries["ir_r1_robust"].iloc[0] == pytest.approx(row["ir_r1_adv"])
    html = (tmp_path / "board" / "index.html").read_text()
    assert "text&rarr;image R@1 robust" in html


def test_rand_version_has_no_retrieval_protocol() -> None:
    from robustbench_mm import benchmarking

    with pytest.raises(ConfigError, match="no randomized-defense retrieval protocol"):
        benchmarking.plan("clip-tiny", task="fmnist-retrieval", version="rand")
