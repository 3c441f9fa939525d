"""``mmrobust run`` with a certifying defense: the certified accuracy at the threat model's radius is
printed and a curve PNG is written for the cell, from the same sound rows the store holds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.cli_invoke import invoke


def test_run_prints_certified_accuracy_and_writes_the_curve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "store"
    code, stdout, err = invoke(monkeypatch, capsys, "run", "--model", "clip-tiny", "--defense", "rs-quick",
                               "--attack", "pgd-l2", "--eps", "0.1", "--steps", "2", "--n", "6", "--out", str(out))
    assert code == 0, err
    summary = pd.read_parquet(out / "asr.parquet").iloc[0]
    cert = float(summary["certified_accuracy"])
    assert f"certified {cert:.3f} at l2 0.1000" in stdout
    curves = list((out / "curves").glob("*--certified.png"))
    assert len(curves) == 1 and curves[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(curves[0]) in stdout
    rows = pd.read_parquet(out / "certified.parquet")
    at = rows[(rows.quantity == "certified_accuracy") & ((rows.radius - 0.1).abs() < 1e-9)]
    assert (at.bound_kind == "sound").all() and float(at["mean"].iloc[0]) == pytest.approx(cert)
    samples = pd.read_parquet(out / "samples.parquet")
    assert not (samples["certified"].fillna(False).astype(bool) & ~samples["adv_correct"].astype(bool)).any()


def test_run_without_certificate_writes_no_curve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "store"
    code, stdout, err = invoke(monkeypatch, capsys, "run", "--model", "clip-tiny", "--attack", "pgd", "--steps", "2",
                               "--n", "4", "--out", str(out))
    assert code == 0, err
    assert "certified" not in stdout and not (out / "curves").exists()
