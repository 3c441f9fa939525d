"""Leaderboard tables merged from result stores, and the nightly comparison with a snapshot.

Three tables, each row traceable to its cells:

- ``cells`` (``leaderboard.parquet``): one row per cell (the newest run of a cell id wins), with
  the provenance a reader needs to trust it: exact model and ``model_revision``, attack budget
  (norm, eps, steps), defense preset and its resolved parameters (``defense_config``), n, seed,
  git commit, the store it came from.
- ``worst`` (``leaderboard_worst.parquet``): per (task, model, defense, threat, seed, n), the
  per-sample worst case over every attack cell at that budget (design "Trust": a sample is
  robust only if it survives every attack), computed from ``samples.parquet``.
- ``certified`` (``leaderboard_certified.parquet``): certified quantities per radius.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from robustbench_mm.errors import StoreError
from robustbench_mm.runner.stats import wilson_interval

# what makes two rows "the same measurement" across runs and snapshots
KEY = ["task", "model", "defense", "attack", "norm", "eps", "steps", "n", "seed"]
THREAT_GROUP = ["task", "model", "defense", "norm", "eps", "seed", "n"]
CELL_COLUMNS = KEY + ["clean_accuracy", "robust_accuracy", "asr", "asr_low", "asr_high", "status", "error",
                      "unreliable", "model_revision", "defense_config", "attack_config", "git_commit", "created_at",
                      "device", "dtype", "cell_id", "run_dir"]


@dataclass
class Leaderboard:
    cells: pd.DataFrame
    worst: pd.DataFrame
    certified: pd.DataFrame
    sources: list[str] = field(default_factory=list)

    def tasks(self) -> list[str]:
        return sorted(set(self.cells["task"]))


def build(run_dirs: Sequence[str | Path]) -> Leaderboard:
    """Merge stores; raise ``StoreError`` for a missing/empty store (one line for the CLI)."""
    if not run_dirs:
        raise StoreError("leaderboard needs at least one RUN_DIR (a store written by `mmrobust run/grid --out`)")
    asr, samples, certified = [], [], []
    for d in run_dirs:
        a, s, c = _read_store(Path(d))
        asr.append(a), samples.append(s), certified.append(c)
    cells = _dedupe(pd.concat(asr, ignore_index=True))
    # per-sample rows come from the same run as the cell's winning row (a cell id can be in many stores)
    keep = set(zip(cells["cell_id"], cells["run_dir"]))
    return Leaderboard(cells, worst_case(cells, _winning(samples, keep)),
                       certified_table(cells, _winning(certified, keep)), [str(d) for d in run_dirs])


def _winning(frames: list[pd.DataFrame], keep: set[tuple[str, str]]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    mask = [(c, r) in keep for c, r in zip(df["cell_id"], df["run_dir"])]
    return df[mask].drop(columns="run_dir").reset_index(drop=True)


def _read_store(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    from robustbench_mm.runner.store import MARKER, ResultStore

    if not (root / MARKER).exists():
        raise StoreError(f"{root} is not an mmrobust store (no {MARKER}); pass a directory written by "
                         f"`mmrobust grid --out DIR`")
    store = ResultStore(root)
    asr = store.read("asr")
    if asr.empty:
        raise StoreError(f"store {root} has no cells yet; run `mmrobust grid --out {root}` first")
    metas = {d.name: _meta(d) for d in (root / "cells").iterdir() if d.is_dir()}
    asr = asr.copy()
    asr["defense_config"] = [_config(metas.get(c, {}), "defense") for c in asr["cell_id"]]
    asr["attack_config"] = [_config(metas.get(c, {}), "attack") for c in asr["cell_id"]]
    asr["run_dir"] = str(root)
    samples, certified = store.read("samples"), store.read("certified")
    for df in (samples, certified):
        if not df.empty:
            df["run_dir"] = str(root)
    return asr, samples, certified


def _meta(cell_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((cell_dir / "meta.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def _config(meta: dict[str, Any], kind: str) -> str:
    """The resolved preset as JSON: name, version, parameters (what determines the numbers)."""
    cfg = (meta.get("config") or {}).get(kind) or {}
    return json.dumps({k: cfg[k] for k in ("name", "impl", "version", "params") if k in cfg}, sort_keys=True,
                      default=str)


def _dedupe(asr: pd.DataFrame) -> pd.DataFrame:
    """One row per cell id: an ``ok`` row beats a failed one, then the newest wins."""
    for col in CELL_COLUMNS:
        if col not in asr.columns:
            asr[col] = None
    asr = asr.assign(_ok=(asr["status"] == "ok").astype(int))
    asr = asr.sort_values(["cell_id", "_ok", "created_at"]).drop_duplicates("cell_id", keep="last")
    order = ["task", "model", "defense", "norm", "eps", "attack"]
    return asr.drop(columns="_ok").sort_values(order, kind="stable").reset_index(drop=True)


def worst_case(cells: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Per-sample worst case over the attacks of one threat model (clean ``none`` cells excluded)."""
    cols = THREAT_GROUP + ["attacks", "n_attacks", "clean_accuracy", "worst_robust_accuracy", "worst_asr",
                           "worst_asr_low", "worst_asr_high"]
    attacked = cells[(cells["status"] == "ok") & (cells["attack"] != "none") & (cells["eps"].fillna(0) > 0)]
    if attacked.empty or samples.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for keys, group in attacked.groupby(THREAT_GROUP, sort=True, dropna=False):
        s = samples[samples["cell_id"].isin(group["cell_id"])]
        if s.empty:
            continue
        per = s.groupby("index").agg(clean=("clean_correct", "all"), robust=("adv_correct", "all"),
                                     broken=("success", "any"))
        clean_ok = int(per["clean"].sum())
        broken = int((per["broken"] & per["clean"]).sum())
        lo, hi = wilson_interval(broken, clean_ok)
        out.append({**dict(zip(THREAT_GROUP, keys)), "attacks": ",".join(sorted(group["attack"])),
                    "n_attacks": len(group), "clean_accuracy": clean_ok / len(per),
                    "worst_robust_accuracy": float((per["robust"] & per["clean"]).mean()),
                    "worst_asr": broken / clean_ok if clean_ok else math.nan,
                    "worst_asr_low": lo, "worst_asr_high": hi})
    return pd.DataFrame(out, columns=cols)


def certified_table(cells: pd.DataFrame, cert: pd.DataFrame) -> pd.DataFrame:
    """Certified rows with provenance; ``bound_kind`` says which may be called certified."""
    from robustbench_mm.report.bound_kind import with_bound_kind

    cols = ["task", "model", "defense", "quantity", "radius", "mean", "q05", "median", "abstain_rate", "n",
            "mc_samples", "alpha", "model_revision", "defense_config", "git_commit", "cell_id", "bound_kind"]
    if cert.empty:
        return pd.DataFrame(columns=cols)
    cert = with_bound_kind(cert)
    prov = cells[["cell_id", "model_revision", "defense_config", "git_commit"]]
    df = cert.drop(columns=[c for c in prov.columns if c != "cell_id" and c in cert.columns]).merge(
        prov, on="cell_id", how="left")
    for c in cols:
        if c not in df.columns:
            df[c] = math.nan
    return df[cols].sort_values(["task", "model", "defense", "quantity", "radius"]).reset_index(drop=True)


# ---- nightly comparison ----------------------------------------------------------------------

@dataclass
class Comparison:
    changes: pd.DataFrame          # one row per key present in either table, with a ``change`` label
    regressions: list[str]         # human-readable, one per regressed cell

    def summary(self) -> str:
        counts = self.changes["change"].value_counts().to_dict() if not self.changes.empty else {}
        return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no cells"


def compare(old: pd.DataFrame, new: pd.DataFrame) -> Comparison:
    """What changed since the snapshot ``old``.

    A regression is a cell whose ASR left the snapshot's 95% interval ``[asr_low, asr_high]``
    (in either direction: with fixed seeds a real move means code, weights or data changed; the
    direction says whether attacks got weaker or models less robust), or a cell that was ``ok``
    and now failed. New and removed cells are listed, never fatal.
    """
    o = old.set_index(KEY) if not old.empty else pd.DataFrame(columns=old.columns).set_index(KEY)
    n = new.set_index(KEY)
    rows, regressions = [], []
    for key in sorted(set(o.index) | set(n.index), key=str):
        label = "/".join(str(k) for k in key[:4]) + f" ({key[4]} eps={_num(key[5])}, n={key[7]}, seed={key[8]})"
        before = o.loc[key] if key in o.index else None
        after = n.loc[key] if key in n.index else None
        before = before.iloc[0] if isinstance(before, pd.DataFrame) else before
        after = after.iloc[0] if isinstance(after, pd.DataFrame) else after
        change, note = _classify(before, after)
        if change in ("regressed", "failed"):
            regressions.append(f"{label}: {note}")
        rows.append({**dict(zip(KEY, key)), "change": change, "note": note,
                     "asr_before": _get(before, "asr"), "asr_after": _get(after, "asr")})
    return Comparison(pd.DataFrame(rows), regressions)


def _classify(before: pd.Series | None, after: pd.Series | None) -> tuple[str, str]:
    if before is None:
        return "new", "not in the snapshot"
    if after is None:
        return "removed", "in the snapshot, not in this run"
    if before["status"] == "ok" and after["status"] != "ok":
        return "failed", f"was ok, now failed: {after.get('error', '')}"
    if after["status"] != "ok":
        return "still-failed", str(after.get("error", ""))
    if before["status"] != "ok":
        return "fixed", "was failed, now ok"
    a, lo, hi = float(after["asr"]), float(before["asr_low"]), float(before["asr_high"])
    rev_a, rev_b = str(before.get("model_revision") or ""), str(after.get("model_revision") or "")
    weights = f" (weights changed: {rev_a[:12]} -> {rev_b[:12]})" if rev_a != rev_b else ""
    if math.isnan(a) and math.isnan(float(before["asr"])):
        return "same", "no clean-correct samples"
    if math.isnan(a) or a < lo - 1e-9 or a > hi + 1e-9:
        direction = "up (less robust or stronger attack)" if a > hi else "down (more robust or weaker attack)"
        return "regressed", (f"ASR {_num(before['asr'])} -> {_num(a)}, outside the snapshot's 95% interval "
                             f"[{_num(lo)}, {_num(hi)}]; {direction}{weights}")
    if abs(a - float(before["asr"])) < 1e-12:
        return "same", ""
    return "within-interval", f"ASR {_num(before['asr'])} -> {_num(a)} (inside [{_num(lo)}, {_num(hi)}])"


def _get(row: pd.Series | None, col: str) -> float:
    return float(row[col]) if row is not None and row.get(col) is not None else math.nan


def _num(x: Any) -> str:
    try:
        return f"{float(x):.4g}"
    except (TypeError, ValueError):
        return str(x)
