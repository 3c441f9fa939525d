"""``mmrobust merge``: shard stores of one run -> one store equal to the unsharded run.

Per-sample rows are the shards' rows back in the whole cell's batch order; ``certified.parquet`` is
aggregated again over all shards' per-sample certificates and the ``asr`` row recomputed from the
merged rows, so every number equals the unsharded run's (``tests/runner/test_shards.py``). What is
about the run rather than the numbers is carried over: the commit, device and versions (equal across
shards, checked), ``wall_s`` as the shards' summed wall time. Galleries are not merged (each shard
drew its own from its samples); rerun a gallery on the merged store's cell if one is needed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import pandas as pd
import torch

from robustbench_mm.errors import StoreError
from robustbench_mm.runner.certified_rows import aggregate_certified
from robustbench_mm.runner.resolve import CellSpec, ResolvedCell, resolve
from robustbench_mm.runner.shards import SHARD_CERTIFICATES, interleave, read_shard_cells, same_run, shard_meta
from robustbench_mm.runner.store import ResultStore
from robustbench_mm.runner.summary import cell_meta, summary_row

CARRIED = ("created_at", "git_commit", "versions", "device", "model_revision")  # about the run, not the numbers


def merge_shard_stores(stores: Sequence[str | Path], out: str | Path, force: bool = False) -> list[str]:
    """Merge every cell found in ``stores`` (each a complete set of shards 1..k) into ``out``;
    returns the merged cell ids. Nothing is written unless every cell's shard set is valid."""
    found = read_shard_cells(stores)
    planned = []
    for cell_id, parts in found.items():
        metas = [shard_meta(d) for _, d in parts]
        same_run(cell_id, metas)
        spec = CellSpec(**{**metas[0]["spec"], "shard": None})
        cell = resolve(spec)
        if cell.cell_id != cell_id:
            raise StoreError(f"cell {cell_id} resolves to {cell.cell_id} with this mmrobust; merge with the "
                             f"version that ran the shards (commit {metas[0].get('git_commit')})")
        planned.append((cell, parts))
    with ResultStore(out) as store:
        for cell, _ in planned:
            if store.cell_row(cell.cell_id) is not None and not force:
                raise StoreError(f"{out} already holds cell {cell.cell_id}; pass --force to replace it or choose "
                                 f"another --out")
        for cell, parts in planned:
            tables, row = _merged_tables(cell, [d for _, d in parts])
            store.commit_cell(cell.cell_id, tables, cell_meta(cell, row) | {"merged_from": [str(d) for _, d in parts]})
    return [cell.cell_id for cell, _ in planned]


def _merged_tables(cell: ResolvedCell, dirs: list[Path]) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    parts = []
    for d in dirs:
        cert = d / f"{SHARD_CERTIFICATES}.parquet"
        parts.append({"asr": pd.read_parquet(d / "asr.parquet"), "samples": pd.read_parquet(d / "samples.parquet"),
                      SHARD_CERTIFICATES: pd.read_parquet(cert) if cert.exists() else pd.DataFrame()})
    return merge_tables(cell, parts)


def merge_tables(cell: ResolvedCell, parts: Sequence[dict[str, pd.DataFrame]]
                 ) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """The whole cell's tables and ``asr`` row from its shards' tables (shards 1..k, in order)."""
    rows = [p["asr"].iloc[0] for p in parts]
    samples = interleave([p["samples"] for p in parts], cell.spec.batch_size)
    certs = [c for p in parts if (c := p.get(SHARD_CERTIFICATES)) is not None and not c.empty]
    per_sample = pd.concat(certs, ignore_index=True) if certs else pd.DataFrame()
    if len(per_sample):  # the whole run's row order (batch by batch): float sums then agree to the last bit
        batch_of = {int(ix): pos // cell.spec.batch_size for pos, ix in enumerate(samples["index"])}
        order = per_sample["index"].astype(int).map(batch_of)
        per_sample = per_sample.iloc[order.argsort(kind="stable").to_numpy()].reset_index(drop=True)
    certified = aggregate_certified(cell, per_sample) if len(per_sample) else pd.DataFrame()
    tables = {"samples": samples, "certified": certified}
    wall = float(sum(float(r["wall_s"]) for r in rows))
    model = SimpleNamespace(revision=rows[0].get("model_revision", ""))
    row = summary_row(replace(cell, spec=replace(cell.spec, shard=None)), model, torch.device("cpu"), tables,
                      "ok", "", wall)
    row.update({k: rows[0][k] for k in CARRIED if k in rows[0]})
    tables["asr"] = pd.DataFrame([row])
    return tables, row
