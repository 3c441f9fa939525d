"""The parquet store: atomic cells, resume without duplicates, corruption detection, repair, lock."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from robustbench_mm.errors import StoreError
from robustbench_mm.runner.store import ResultStore


def _tables(cell: str, k: int) -> dict[str, pd.DataFrame]:
    return {"samples": pd.DataFrame({"cell_id": [cell] * k, "index": list(range(k))}),
            "asr": pd.DataFrame({"cell_id": [cell], "status": ["ok"], "schema_version": [1]})}


def test_commit_is_idempotent_and_merged(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "s").open()
    store.commit_cell("a", _tables("a", 3), {})
    store.commit_cell("b", _tables("b", 2), {})
    store.commit_cell("a", _tables("a", 3), {})  # --force: replaces, never duplicates
    assert sorted(store.read("asr")["cell_id"]) == ["a", "b"]
    assert len(store.read("samples")) == 5
    assert store.finished("a") and not store.finished("zzz")


def test_foreign_directory_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an mmrobust store"):
        ResultStore(tmp_path).open()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_truncated_parquet_detected_and_repaired(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "s").open()
    store.commit_cell("a", _tables("a", 3), {})
    store.commit_cell("b", _tables("b", 2), {})
    bad = tmp_path / "s" / "cells" / "b" / "samples.parquet"
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(StoreError, match="mmrobust store repair"):
        ResultStore(tmp_path / "s").open()
    moved = ResultStore(tmp_path / "s").repair()
    assert moved == ["b"]
    healed = ResultStore(tmp_path / "s").open()
    assert list(healed.read("asr")["cell_id"]) == ["a"] and len(healed.read("samples")) == 3


def test_foreign_parquet_detected(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "s").open()
    store.commit_cell("a", _tables("a", 1), {})
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "s" / "asr.parquet")
    assert ResultStore(tmp_path / "s").check()


def test_crash_leftovers_are_ignored(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "s").open()
    store.commit_cell("a", _tables("a", 1), {})
    partial = tmp_path / "s" / "cells" / ".b.tmp123"
    partial.mkdir()
    (partial / "asr.parquet").write_bytes(b"PAR1garbage")
    store.rebuild_views()
    assert list(store.read("asr")["cell_id"]) == ["a"] and not partial.exists()


def test_second_writer_refused(tmp_path: Path) -> None:
    first = ResultStore(tmp_path / "s").open()
    first.lock()
    try:
        with pytest.raises(StoreError, match="in use by pid"):
            second = ResultStore(tmp_path / "s").open()
            second.lock()
    finally:
        first.unlock()
    ResultStore(tmp_path / "s").open().lock()  # free again
