"""Parquet result store: atomic per cell, resumable, locked, self-checking.

Layout of a run directory::

    DIR/cells/<cell_id>/{asr,samples,certified}.parquet + meta.json   # one committed cell
    DIR/asr.parquet, DIR/samples.parquet, DIR/certified.parquet       # merged views
    DIR/.lock                                                          # writer lock
    DIR/progress/<cell_id>.pt                                          # an unfinished cell's batches

A cell commits by renaming a complete temporary directory into ``cells/`` (atomic on POSIX),
so a crash leaves either the whole cell or nothing. The merged views are rebuilt from the cell
directories after every commit (tmp + rename); a stale view is rebuilt on open.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from robustbench_mm.errors import StoreError

SCHEMA_VERSION = 1
TABLES = ("asr", "samples", "certified")
MARKER = "mmrobust_store.json"
FILE_TABLES = ("gallery",)  # tables of (name, data) rows that a commit writes as plain files


class ResultStore:
    """A run directory holding many cells."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock_fd: int | None = None

    # ---- opening and checking ----------------------------------------------------------
    def open(self) -> "ResultStore":
        """Create or validate the directory; raise ``StoreError`` for foreign/corrupt content."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"--out {self.root} is a file, not a directory; choose a directory")
        if self.root.is_dir() and any(self.root.iterdir()) and not (self.root / MARKER).exists():
            raise StoreError(f"--out {self.root} is a non-empty directory that is not an mmrobust store; "
                             f"choose an empty or new directory")
        try:
            (self.root / "cells").mkdir(parents=True, exist_ok=True)
            if not (self.root / MARKER).exists():
                _atomic_write_text(self.root / MARKER, json.dumps({"schema_version": SCHEMA_VERSION}))
        except OSError as exc:
            raise StoreError(f"cannot write to --out {self.root} ({exc.strerror}); choose a writable directory") \
                from None
        problems = self.check()
        if problems:
            raise StoreError(f"store {self.root} is damaged: {problems[0]}; run `mmrobust store repair {self.root}`")
        return self

    def check(self) -> list[str]:
        """Problems found (empty list = healthy): unreadable or foreign parquet files."""
        problems = []
        for cell_dir in self._cell_dirs():
            for table in TABLES:
                f = cell_dir / f"{table}.parquet"
                if f.exists() and _read_or_none(f) is None:
                    problems.append(f"{f} is unreadable or not an mmrobust table")
        for table in TABLES:
            f = self.root / f"{table}.parquet"
            if f.exists() and _read_or_none(f) is None:
                problems.append(f"{f} is unreadable or not an mmrobust table")
        return problems

    def repair(self) -> list[str]:
        """Quarantine damaged cells (moved to ``DIR/quarantine``), keep every valid row, rebuild views."""
        moved = []
        quarantine = self.root / "quarantine"
        for cell_dir in self._cell_dirs():
            bad = [t for t in TABLES if (cell_dir / f"{t}.parquet").exists()
                   and _read_or_none(cell_dir / f"{t}.parquet") is None]
            if bad or not (cell_dir / "asr.parquet").exists():
                quarantine.mkdir(exist_ok=True)
                shutil.move(str(cell_dir), str(quarantine / cell_dir.name))
                moved.append(cell_dir.name)
        for table in TABLES:
            f = self.root / f"{table}.parquet"
            if f.exists() and _read_or_none(f) is None:
                f.unlink()
        self.rebuild_views()
        return moved

    # ---- locking -----------------------------------------------------------------------
    def lock(self) -> None:
        """Take the writer lock or fail at once naming the holder (two grids on one store)."""
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StoreError(f"store {self.root} is in use by pid {holder}; wait for it or use another --out") \
                from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "ResultStore":
        self.open()
        self.lock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlock()

    # ---- cells -------------------------------------------------------------------------
    def _cell_dirs(self) -> list[Path]:
        cells = self.root / "cells"
        return sorted(p for p in cells.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if cells.is_dir() else []

    def progress_file(self, cell_id: str) -> Path:
        """Where an unfinished cell keeps its finished batches (``runner.resume``)."""
        return self.root / "progress" / f"{cell_id}.pt"

    def finished(self, cell_id: str) -> bool:
        """A cell counts as finished when it committed with status ``ok``."""
        row = self.cell_row(cell_id)
        return row is not None and row.get("status") == "ok"

    def cell_row(self, cell_id: str) -> dict[str, Any] | None:
        f = self.root / "cells" / cell_id / "asr.parquet"
        df = _read_or_none(f) if f.exists() else None
        return None if df is None or df.empty else dict(df.iloc[0])

    def commit_cell(self, cell_id: str, tables: dict[str, pd.DataFrame], meta: dict[str, Any]) -> None:
        """Write all tables of one cell atomically, replacing an earlier version of that cell."""
        cells = self.root / "cells"
        tmp = Path(tempfile.mkdtemp(prefix=f".{cell_id}.", dir=cells))
        for table, df in tables.items():
            if df is None or df.empty:
                continue  # a table without rows is simply absent
            if table in FILE_TABLES:  # (name, data) rows become files under the cell, e.g. gallery/grid.png
                _write_files(tmp / table, df)
                continue
            pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp / f"{table}.parquet")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        _fsync_dir(tmp)
        final = cells / cell_id
        if final.exists():  # --force or retry of a failed cell: swap, then drop the old version
            old = cells / f".old.{cell_id}.{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(cells)
        self.rebuild_views()

    def rebuild_views(self) -> None:
        """Merge committed cells into the top-level tables (atomic replace of each file)."""
        for stale in (self.root / "cells").glob(".*"):
            shutil.rmtree(stale, ignore_errors=True)  # leftovers of a crash mid-commit
        for table in TABLES:
            frames = [df for d in self._cell_dirs()
                      if (d / f"{table}.parquet").exists()
                      and (df := _read_or_none(d / f"{table}.parquet")) is not None and not df.empty]
            target = self.root / f"{table}.parquet"
            if not frames:
                if target.exists():
                    target.unlink()
                continue
            merged = pd.concat(frames, ignore_index=True)
            tmp = target.with_suffix(".parquet.tmp")
            pq.write_table(pa.Table.from_pandas(merged, preserve_index=False), tmp)
            os.replace(tmp, target)

    def read(self, table: str) -> pd.DataFrame:
        """A merged table (empty frame when none)."""
        f = self.root / f"{table}.parquet"
        if not f.exists():
            return pd.DataFrame()
        df = _read_or_none(f)
        if df is None:
            raise StoreError(f"{f} is unreadable; run `mmrobust store repair {self.root}`")
        return df


def _read_or_none(path: Path) -> pd.DataFrame | None:
    """Read an mmrobust table; None when truncated, not parquet, or missing ``schema_version``/``cell_id``."""
    try:
        df = pq.read_table(path).to_pandas()
    except Exception:  # noqa: BLE001 - pyarrow raises many error types for damaged files
        return None
    if "cell_id" not in df.columns:
        return None
    return df


def _write_files(folder: Path, rows: pd.DataFrame) -> None:
    folder.mkdir()
    for name, data in zip(rows["name"], rows["data"]):
        if Path(name).name != name:
            raise ValueError(f"file table entry {name!r} must be a plain file name")
        with open(folder / name, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir() if path.is_dir() else []:
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
