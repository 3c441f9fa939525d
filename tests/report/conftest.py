"""Result stores for the report tests: real ``ResultStore`` commits of synthetic cells, and one real
``run_cell`` on clip-tiny given the protocol columns that ``mmrobust benchmark`` adds
(``protocol``, ``verdict_draws``, ``broken_by``; ``bound_kind`` on certificates)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from robustbench_mm.runner.gallery_render import GRID_FILE, META_FILE, GallerySample, captions, render_grid
from robustbench_mm.runner.stats import wilson_interval
from robustbench_mm.runner.store import ResultStore

EVIL = "<script>alert(1)</script>"
PROTOCOL = "mm-aa/standard/v1"


@lru_cache(maxsize=None)
def _grid(n: int, title: str) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        clean = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        adv = np.clip(clean.astype(int) + rng.integers(-8, 9, clean.shape), 0, 255).astype(np.uint8)
        samples.append(GallerySample(i, clean, adv, "coat", "coat", "sandal", "broken"))
    return render_grid(samples, title), json.dumps({"title": title, "samples": captions(samples)}).encode()


def gallery_table(n: int = 8, title: str = "cell") -> pd.DataFrame:
    grid, meta = _grid(n, title)
    return pd.DataFrame({"name": [GRID_FILE, META_FILE], "data": [grid, meta]})


def add_cell(store: ResultStore, cell_id: str, *, model: str = "clip-tiny", attack: str = "mm-aa",
             defense: str = "none", task: str = "fmnist-zeroshot", eps: float = 8 / 255, norm: str = "linf",
             n: int = 20, clean: list[bool] | None = None, adv: list[bool] | None = None,
             certified: list[tuple[str, float, float, str]] | None = None, status: str = "ok",
             protocol: str | None = PROTOCOL, unreliable: bool = False, sanity: dict[str, str] | None = None,
             gallery: bool = True, created_at: str = "2026-01-01T00:00:00+00:00", schema_version: int = 1,
             git_commit: str = "abc123def4567890", certified_samples: list[bool] | None = None) -> None:
    """One committed cell; ``clean``/``adv``: per-sample correctness (adv defaults to clean);
    ``certified``: (quantity, radius, mean, bound_kind) rows; ``protocol=None`` leaves the column out;
    ``certified_samples``: the per-sample sound ``certified`` flag (the column is left out without it)."""
    clean = clean if clean is not None else [True] * n
    n = len(clean)
    adv = adv if adv is not None else list(clean)
    success = [c and not a for a, c in zip(adv, clean)]
    samples = pd.DataFrame({"cell_id": cell_id, "index": range(n), "label": 0, "clean_pred": 0, "adv_pred": 0,
                            "clean_correct": clean, "adv_correct": [a and c for a, c in zip(adv, clean)],
                            "success": success, "linf": eps, "l2": 0.1, "feature_cosine": 0.9,
                            "certified_bound": float("nan")})
    if certified_samples is not None:
        samples["certified"] = certified_samples
    if protocol is not None:
        samples["broken_by"] = [("apgd-ce" if i % 2 else "apgd-t") if s else "" for i, s in enumerate(success)]
    k, m = int(samples["success"].sum()), int(samples["clean_correct"].sum())
    lo, hi = wilson_interval(k, m)
    row = {"cell_id": cell_id, "model": model, "attack": attack, "defense": defense, "task": task, "norm": norm,
           "eps": eps, "steps": 10, "seed": 0, "n": n,
           "clean_accuracy": m / n, "robust_accuracy": float(samples["adv_correct"].mean()),
           "asr": k / m if m else float("nan"), "asr_low": lo, "asr_high": hi, "max_linf": eps, "max_l2": 0.1,
           "wall_s": 1.0, "samples_per_s": n, "device": "cpu", "dtype": "fp32", "precision_policy": "fp32",
           "status": status, "error": "" if status == "ok" else "boom", "unreliable": unreliable,
           "sanity": json.dumps(sanity or {"validity_guard": "pass"}),
           "created_at": created_at, "git_commit": git_commit, "versions": "{}",
           "model_revision": f"rev-{model}", "schema_version": schema_version}
    if protocol is not None:
        row.update(protocol=protocol, verdict_draws=1)
    tables = {"asr": pd.DataFrame([row]), "samples": samples if status == "ok" else pd.DataFrame()}
    if certified:
        tables["certified"] = pd.DataFrame([
            {"cell_id": cell_id, "model": model, "defense": defense, "task": task, "radius": r, "quantity": q,
             "mean": v, "q05": v - 0.1, "median": v, "n": n, "abstain_rate": 0.1 if q == "fcsb" else 0.0,
             "mc_samples": 256, "alpha": 0.001, "bound_kind": kind, "schema_version": 1}
            for q, r, v, kind in certified])
    if gallery and status == "ok":
        tables["gallery"] = gallery_table(title=f"{model} / {defense}")
    meta = {"cell_id": cell_id, "config": {"defense": {"kind": "defense", "name": defense, "impl": defense,
                                                       "version": 1, "params": {}},
                                           "attack": {"kind": "attack", "name": attack, "impl": attack,
                                                      "version": 1, "params": {"eps": eps}}}}
    store.commit_cell(cell_id, tables, meta)


@pytest.fixture
def make_store(tmp_path: Path):  # type: ignore[no-untyped-def]
    def _make(name: str, cells: list[dict[str, Any]]) -> Path:
        store = ResultStore(tmp_path / name).open()
        for c in cells:
            add_cell(store, **c)
        return store.root

    return _make


def as_protocol_store(root: Path) -> None:
    """Give a store's cells the columns ``mmrobust benchmark`` writes (its cells ran one attack)."""
    for d in sorted((root / "cells").iterdir()):
        asr = pd.read_parquet(d / "asr.parquet")
        asr["protocol"], asr["verdict_draws"] = PROTOCOL, 1
        asr.to_parquet(d / "asr.parquet", index=False)
        s = pd.read_parquet(d / "samples.parquet")
        s["broken_by"] = [asr["attack"].iloc[0] if x else "" for x in s["success"]]
        s.to_parquet(d / "samples.parquet", index=False)
    ResultStore(root).rebuild_views()


@pytest.fixture(scope="session")
def real_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real clip-tiny cell (PGD, 2 steps, n=10) run through ``run_cell``, with protocol columns."""
    from robustbench_mm import api
    from robustbench_mm.runner.resolve import CellSpec

    root = tmp_path_factory.mktemp("real") / "store"
    api.run_cell(CellSpec(model="clip-tiny", attack="pgd", defense="none", steps=2, n=10, device="cpu"), out=root)
    as_protocol_store(root)
    return root


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


@pytest.fixture
def cli(capsys, monkeypatch):  # type: ignore[no-untyped-def]
    """``cli(*args) -> (exit code, stdout, stderr)`` through the real entry point, in this process."""
    import sys

    from robustbench_mm import cli as climod

    def _run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["mmrobust", *args])
        capsys.readouterr()
        try:
            climod.main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return _run
