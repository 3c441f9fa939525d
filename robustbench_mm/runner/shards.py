"""Shards of one cell: a deterministic slice of its batches, run on its own, merged back exactly.

``--shard i/k`` runs the batches ``j`` of the cell with ``j % k == i - 1`` (batches of ``--batch-size``
samples in the task's sample order; round-robin, so a shard's cost does not depend on where hard
samples sit). Everything random in a batch is seeded by the batch alone (``batch_random_state``, the
defense's ``reseed``, per-sample attack seeds), never by the batches run before it, so a shard draws
exactly what the whole cell draws for the same samples. A shard's cell keeps the whole cell's id; its
``asr`` row says ``shard = "i/k"`` and it also stores its per-sample certificates
(``shard_certificates.parquet``), from which ``merge_shard_stores`` rebuilds ``certified.parquet``.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import torch

from robustbench_mm.errors import ConfigError, StoreError

SHARD_CERTIFICATES = "shard_certificates"  # per-sample certificate rows of a shard cell


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/k"`` -> ``(i, k)`` with 1 <= i <= k; None/"" -> None (the whole cell)."""
    if not text:
        return None
    try:
        i, k = (int(p) for p in str(text).split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r} must be i/k with whole numbers, e.g. 1/4") from None
    if not 1 <= i <= k:
        raise ConfigError(f"--shard {text!r}: need 1 <= i <= k (shards are numbered 1..k), e.g. 1/{max(k, 1)}")
    return i, k


def in_shard(batch_number: int, shard: tuple[int, int] | None) -> bool:
    return shard is None or batch_number % shard[1] == shard[0] - 1


def shard_size(n: int, batch_size: int, shard: tuple[int, int] | None) -> int:
    """Samples a shard evaluates (for progress bars): full batches, the last one possibly short."""
    if shard is None:
        return n
    batches = math.ceil(n / batch_size)
    return sum(min(batch_size, n - j * batch_size) for j in range(batches) if in_shard(j, shard))


def batch_seed(seed: int, batch_number: int) -> int:
    """Seed of everything the cell draws in batch ``batch_number`` besides per-sample attack seeds."""
    return int(seed) * 1_000_003 + 7_919 * (batch_number + 1)


@contextlib.contextmanager
def batch_random_state(seed: int, device: torch.device) -> Iterator[None]:
    """torch's global generators seeded for one batch, and restored after it (the caller's state
    is not consumed by the cell)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def interleave(parts: Sequence[pd.DataFrame], batch_size: int) -> pd.DataFrame:
    """Rows of shards 1..k back in the whole cell's order: batch ``j`` comes from shard ``j % k``."""
    k = len(parts)
    taken, out, j = [0] * k, [], 0
    while any(taken[s] < len(parts[s]) for s in range(k)):
        s = j % k
        if taken[s] >= len(parts[s]):
            break  # the shard that would own batch j ran out: every later batch is past the end too
        out.append(parts[s].iloc[taken[s]:taken[s] + batch_size])
        taken[s] += batch_size
        j += 1
    left = [s + 1 for s in range(k) if taken[s] < len(parts[s])]
    if left:
        raise StoreError(f"shard stores do not fit together: rows of shard(s) {left} are left over; "
                         f"pass every shard of one run exactly once")
    return pd.concat(out, ignore_index=True)


def read_shard_cells(stores: Sequence[str | Path]) -> dict[str, list[tuple[tuple[int, int], Path]]]:
    """``{cell_id: [((i, k), cell_dir), ...]}`` over the shard stores, checked to be complete sets."""
    found: dict[str, list[tuple[tuple[int, int], Path]]] = {}
    for root in map(Path, stores):
        cells = root / "cells"
        if not cells.is_dir():
            raise StoreError(f"{root} is not an mmrobust store; pass stores written by `mmrobust run/benchmark "
                             f"--shard i/k --out DIR`")
        for cell_dir in sorted(p for p in cells.iterdir() if p.is_dir() and not p.name.startswith(".")):
            row = pd.read_parquet(cell_dir / "asr.parquet").iloc[0]
            shard = parse_shard(row.get("shard") if "shard" in row else None)
            if shard is None:
                raise StoreError(f"{root} holds cell {cell_dir.name} run whole (no --shard); merge takes shard "
                                 f"stores only")
            if row["status"] != "ok":
                raise StoreError(f"shard {shard[0]}/{shard[1]} of cell {cell_dir.name} in {root} is "
                                 f"{row['status']}; rerun that shard's command (it resumes) before merging")
            found.setdefault(cell_dir.name, []).append((shard, cell_dir))
    if not found:
        raise StoreError("no shard cells in the given stores; run `mmrobust run/benchmark --shard i/k` first")
    for cell_id, parts in found.items():
        ks = {k for (_, k), _ in parts}
        have = sorted(i for (i, _), _ in parts)
        if len(ks) != 1 or have != list(range(1, max(ks) + 1)):
            raise StoreError(f"cell {cell_id}: shards {have} of {sorted(ks)} given; pass each of shards 1..k of "
                             f"one run exactly once")
        parts.sort(key=lambda p: p[0][0])
    return found


def shard_meta(cell_dir: Path) -> dict[str, Any]:
    return json.loads((cell_dir / "meta.json").read_text())  # type: ignore[no-any-return]


def same_run(cell_id: str, metas: Sequence[dict[str, Any]]) -> None:
    """Shards merge only when they are slices of one run: same spec (but the shard), same commit."""
    def key(m: dict[str, Any]) -> tuple[str, str]:
        spec = {k: v for k, v in m["spec"].items() if k not in ("shard", "device")}
        return json.dumps(spec, sort_keys=True, default=str), str(m.get("git_commit"))

    if len({key(m) for m in metas}) != 1:
        raise StoreError(f"cell {cell_id}: its shards were run with different options or at different commits; "
                         f"rerun the odd shard with the same command at the same commit")
