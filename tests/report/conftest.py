"""Synthetic result stores (no model runs) for the report tests: real ``ResultStore`` commits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from robustbench_mm.runner.stats import wilson_interval
from robustbench_mm.runner.store import ResultStore

EVIL = "<script>alert(1)</script>"


def add_cell(store: ResultStore, cell_id: str, *, model: str = "clip-tiny", attack: str = "pgd",
             defense: str = "none", task: str = "fmnist-zeroshot", eps: float = 8 / 255, norm: str = "linf",
             n: int = 20, clean: list[bool] | None = None, adv: list[bool] | None = None,
             certified: list[tuple[float, float]] | None = None, status: str = "ok",
             defense_params: dict[str, Any] | None = None, created_at: str = "2026-01-01T00:00:00+00:00") -> None:
    """One committed cell; ``clean``/``adv``: per-sample correctness (adv defaults to clean)."""
    clean = clean if clean is not None else [True] * n
    n = len(clean)
    adv = adv if adv is not None else list(clean)
    samples = pd.DataFrame({"cell_id": cell_id, "index": range(n), "label": 0, "clean_pred": 0, "adv_pred": 0,
                            "clean_correct": clean, "adv_correct": [a and c for a, c in zip(adv, clean)],
                            "success": [c and not a for a, c in zip(adv, clean)], "linf": eps, "l2": 0.1,
                            "feature_cosine": 0.9, "certified_bound": float("nan")})
    k, m = int(samples["success"].sum()), int(samples["clean_correct"].sum())
    lo, hi = wilson_interval(k, m)
    row = {"cell_id": cell_id, "model": model, "attack": attack, "defense": defense, "task": task, "norm": norm,
           "eps": eps if attack != "none" else 0.0, "steps": 10, "seed": 0, "n": n,
           "clean_accuracy": m / n, "robust_accuracy": float(samples["adv_correct"].mean()),
           "asr": k / m if m else float("nan"), "asr_low": lo, "asr_high": hi, "max_linf": eps, "max_l2": 0.1,
           "wall_s": 1.0, "samples_per_s": n, "device": "cpu", "dtype": "fp32", "precision_policy": "fp32",
           "status": status, "error": "" if status == "ok" else "boom", "unreliable": False, "sanity": "{}",
           "created_at": created_at, "git_commit": "abc123def4567890", "versions": "{}",
           "model_revision": f"rev-{model}", "schema_version": 1}
    tables = {"asr": pd.DataFrame([row]), "samples": samples if status == "ok" else pd.DataFrame()}
    if certified:
        tables["certified"] = pd.DataFrame([
            {"cell_id": cell_id, "model": model, "defense": defense, "task": task, "radius": r, "quantity": "fcsb",
             "mean": v, "q05": v - 0.1, "median": v, "n": n, "abstain_rate": 0.0, "mc_samples": 256, "alpha": 0.001,
             "schema_version": 1} for r, v in certified])
    meta = {"cell_id": cell_id, "config": {"defense": {"kind": "defense", "name": defense, "impl": defense,
                                                       "version": 1, "params": defense_params or {}},
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


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())
