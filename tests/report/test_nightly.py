"""Nightly: the grid expands to protocol commands, and scripts/nightly.sh fails on an entry whose robust
accuracy left the release's 95% interval (end to end once ``mmrobust benchmark`` is installed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from robustbench_mm.report import manifest
from robustbench_mm.report.compare import compare
from robustbench_mm.report.entries import build

REPO = Path(__file__).resolve().parents[2]


def test_release_manifest_covers_the_zoo() -> None:
    commands = manifest.load(REPO / "results" / "leaderboard" / "v1" / "manifest.yaml")
    rows = {(manifest.option(c, "--model"), manifest.option(c, "--defense"), manifest.option(c, "--norm")):
            int(manifest.option(c, "--n")) for c in commands}
    assert len(rows) == len(commands)  # one command per entry
    for model in ("clip-tiny", "openclip-tiny", "llava-tiny", "blip2-tiny"):
        for defense in ("none", "fs", "fs-psm", "topk-rs"):
            assert (model, defense, "linf") in rows
        for defense in ("fs", "fs-psm"):
            assert (model, defense, "l2") in rows
    for model in ("clip-tiny", "openclip-tiny"):
        assert (model, "mmcoa", "linf") in rows and (model, "tecoa", "linf") in rows
    assert ("clip-tiny", "crmt", "linf") in rows
    for (model, defense, _), n in rows.items():
        randomized_lvlm = model in ("llava-tiny", "blip2-tiny") and defense in ("fs", "fs-psm")
        assert n >= (64 if randomized_lvlm else 200)
    assert manifest.stores(commands) == [f"results/runs/leaderboard-v1/{m}{half}" for m in
                                         ("clip-tiny", "openclip-tiny", "llava-tiny", "blip2-tiny")
                                         for half in ("", "-rand")]


def test_every_manifest_command_plans() -> None:
    """Each command passes every check `mmrobust benchmark` makes before weights load (names, task,
    threat model in the protocol), so a release build cannot stop halfway on bad input."""
    from robustbench_mm.benchmarking import plan
    from robustbench_mm.presets import parse_number

    for c in manifest.load(REPO / "results" / "leaderboard" / "v1" / "manifest.yaml"):
        _, _, specs = plan(manifest.option(c, "--model"), defense=manifest.option(c, "--defense"),
                           task=manifest.option(c, "--task"), norm=manifest.option(c, "--norm"),
                           eps=parse_number(manifest.option(c, "--eps"), "--eps"), n=int(manifest.option(c, "--n")))
        assert len(specs) == 1, c


def test_manifest_rejects_other_commands(tmp_path: Path) -> None:
    bad = tmp_path / "m.yaml"
    bad.write_text("commands:\n  - mmrobust run --model clip-tiny --out x\n")
    assert manifest.main(["stores", str(bad)]) == 2


def test_grid_expands_to_protocol_commands() -> None:
    commands = manifest.from_grid("smoke", "STORE", device="cpu")
    assert [manifest.option(c, "--model") for c in commands] == ["clip-tiny", "llava-tiny", "blip2-tiny"]
    assert all(c[:2] == ["mmrobust", "benchmark"] and manifest.option(c, "--out") == "STORE" and
               manifest.option(c, "--eps") == "8/255" and manifest.option(c, "--n") == "64" for c in commands)


def test_compare_flags_moves_beyond_the_interval(make_store) -> None:  # type: ignore[no-untyped-def]
    T, F = True, False
    release = build([make_store("rel", [dict(cell_id="a", adv=[T] * 10 + [F] * 10), dict(cell_id="b", defense="fs")])])
    fresh = build([make_store("new", [dict(cell_id="a2", adv=[T] * 9 + [F] * 11, n=20),
                                      dict(cell_id="b2", defense="fs", adv=[F] * 20),
                                      dict(cell_id="c2", defense="tecoa")])])
    cmp = compare(release.entries, fresh.entries)
    change = dict(zip(cmp.changes["defense"], cmp.changes["change"]))
    assert change == {"none": "within-interval", "fs": "regressed", "tecoa": "new"}
    assert len(cmp.regressions) == 1 and "outside the release's 95% interval" in cmp.regressions[0]


@pytest.mark.slow
def test_nightly_passes_then_fails_on_a_regression(tmp_path: Path) -> None:
    grid = tmp_path / "tiny.yaml"
    grid.write_text("name: tiny\nmodels: [clip-tiny]\nattacks: [none]\ndefenses: [none]\nn: 8\n")
    out, runs = tmp_path / "board", tmp_path / "runs"
    env = {**os.environ, "NIGHTLY_GRID": str(grid), "NIGHTLY_OUT": str(out), "NIGHTLY_RUNS": str(runs),
           "NIGHTLY_DEVICE": "cpu", "NIGHTLY_BASELINE": str(tmp_path / "release.parquet"),
           "MMROBUST": str(Path(sys.executable).parent / "mmrobust"), "PYTHON": sys.executable}
    night = lambda: subprocess.run(["bash", str(REPO / "scripts" / "nightly.sh")], capture_output=True,  # noqa: E731
                                   text=True, env=env, timeout=900)
    first = night()
    assert first.returncode == 0, first.stderr
    assert "no release" in first.stderr and (out / "entries.parquet").is_file()
    release = pd.read_parquet(out / "entries.parquet")
    now = float(release["robust_accuracy"].iloc[0])
    fake = 1.0 if now < 0.5 else 0.0
    release[["robust_accuracy", "robust_low", "robust_high"]] = [fake, fake, fake]
    release.to_parquet(tmp_path / "release.parquet", index=False)
    second = night()  # resumes: the cell is skipped, then compared
    assert second.returncode == 1, second.stdout + second.stderr
    assert "regressed" in second.stdout and "1 regression(s)" in second.stderr
