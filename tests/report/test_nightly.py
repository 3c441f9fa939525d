"""scripts/nightly.sh end to end on a tiny grid: first night writes the leaderboard, a later night
compares with the snapshot and fails with a clear message on a move beyond the 95% interval."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]


def _night(grid: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NIGHTLY_GRID": str(grid), "NIGHTLY_OUT": str(out), "NIGHTLY_DEVICE": "cpu",
           "MMROBUST": str(Path(sys.executable).parent / "mmrobust")}
    return subprocess.run(["bash", str(REPO / "scripts" / "nightly.sh")], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.slow
def test_nightly_first_run_then_regression(random_clip_dir: Path, shapes_task: Path, tmp_path: Path) -> None:
    grid = tmp_path / "tiny.yaml"
    grid.write_text(f"name: tiny\nmodels: ['{random_clip_dir}']\nattacks: [none, pgd]\ndefenses: [none]\n"
                    f"tasks: ['{shapes_task}']\nn: 6\nsteps: 2\n")
    out = tmp_path / "results"
    first = _night(grid, out)
    assert first.returncode == 0, first.stderr
    assert "no snapshot" in first.stderr
    for name in ("leaderboard.parquet", "leaderboard.md", "index.html"):
        assert (out / name).is_file()
    assert (out / "runs" / "tiny" / "asr.parquet").is_file()

    # pretend the committed snapshot had the attack failing almost never, with a tight interval
    snap = pd.read_parquet(out / "leaderboard.parquet")
    pgd = snap["attack"] == "pgd"
    now = float(snap.loc[pgd, "asr"].iloc[0])
    fake = 1.0 if now < 0.5 else 0.0
    snap.loc[pgd, ["asr", "asr_low", "asr_high"]] = [fake, fake, fake]
    snap.to_parquet(out / "leaderboard.parquet", index=False)

    second = _night(grid, out)  # resumes: both cells skipped, then compared
    assert second.returncode == 1, second.stdout + second.stderr
    assert "skipped" in second.stdout
    assert "regressed" in second.stdout and "outside the snapshot's 95% interval" in second.stderr
    assert "1 regression(s)" in second.stderr
