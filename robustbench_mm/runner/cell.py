"""Run one cell: load, defend, attack every batch, verdict in fp32, write rows atomically.

The steps live beside it: ``batch_eval`` (one batch), ``certified_rows`` (certificates),
``summary`` (the asr row), ``resume`` (progress saved after each batch), ``store`` (the commit)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import pandas as pd
import torch

from robustbench_mm.errors import MMRobustError, StoreError
from robustbench_mm.models.device import pick_device
from robustbench_mm.models.zoo import LoadOptions, load_model
from robustbench_mm.runner import gallery_capture
from robustbench_mm.runner.batch_eval import evaluate_halving_on_oom
from robustbench_mm.runner.certified_rows import (
    aggregate_certified, attach_bound, attach_certified, attach_rs, certify_batch, only_clean_correct,
)
from robustbench_mm.runner.resolve import CellSpec, ResolvedCell, resolve
from robustbench_mm.runner.resume import Checkpoint, CellProgress
from robustbench_mm.runner.shards import SHARD_CERTIFICATES, batch_random_state, batch_seed, in_shard, parse_shard
from robustbench_mm.runner.retrieval_eval import evaluate_retrieval
from robustbench_mm.runner.store import ResultStore
from robustbench_mm.runner.summary import cell_meta, empty_tables, summary_row
from robustbench_mm.runner.vision_encoder import with_encoder
from robustbench_mm.tasks.retrieval import is_retrieval

log = logging.getLogger(__name__)
Progress = Callable[[int], None]  # called with the number of samples just finished


@dataclass
class CellSummary:
    cell_id: str
    status: str  # ok | failed | skipped
    row: dict[str, Any] = field(default_factory=dict)


def run_cell(spec: CellSpec | ResolvedCell, *, store: ResultStore, force: bool = False,
             progress: Progress | None = None) -> CellSummary:
    """Run a cell unless the store has it (``force`` recomputes). Bad input raises before any write;
    a failure during evaluation (NaN, OOM at batch 1, invalid adversarial) is recorded as ``failed``."""
    cell = spec if isinstance(spec, ResolvedCell) else resolve(spec)
    device = pick_device(cell.spec.device)
    held = store.cell_row(cell.cell_id)
    if held is not None and str(held.get("shard") or "") != str(cell.spec.shard or ""):
        what = f"shard {held['shard']}" if held.get("shard") else "the whole cell"
        raise StoreError(f"store {store.root} holds {what} of cell {cell.cell_id}; give each shard (and the whole "
                         f"cell) its own --out, then `mmrobust merge` the shard stores")
    if store.finished(cell.cell_id) and not force:
        log.info("cell %s already in %s; skipped", cell.cell_id, store.root)
        return CellSummary(cell.cell_id, "skipped", store.cell_row(cell.cell_id) or {})
    start = time.time()
    options = LoadOptions(device=str(device), dtype=cell.spec.load_dtype, allow_pickle=cell.spec.allow_pickle,
                          trust_remote_code=cell.spec.trust_remote_code,
                          revision=cell.entry.revision or cell.spec.revision, device_map=cell.spec.device_map)
    model = load_model(cell.model_name, options)
    if cell.encoder is not None:  # a width or grid mismatch raises here, before anything is written
        model = with_encoder(model, cell.encoder, str(cell.spec.vision_encoder), replace(options, revision=None))
    if cell.spec.compile:
        model.compile_for_attacks()
    checkpoint = Checkpoint.for_cell(store, cell)
    if checkpoint is not None and force:
        checkpoint.drop()  # --force recomputes from the first batch
    done = (checkpoint.load() if checkpoint is not None else None) or CellProgress()
    start -= done.elapsed_s  # the wall time counts the interrupted runs too
    try:
        tables = evaluate(cell, model, device, progress, checkpoint, done)
        status, error = "ok", ""
    except MMRobustError:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded as a failed cell, never as a number
        log.exception("cell %s failed", cell.cell_id)
        tables, status, error = empty_tables(), "failed", f"{type(exc).__name__}: {exc}"
    row = summary_row(cell, model, device, tables, status, error, time.time() - start)
    tables["asr"] = pd.DataFrame([row])
    gallery = gallery_capture.take(cell, status == "ok")
    if gallery is not None:
        tables[gallery_capture.TABLE] = gallery  # written as cells/<id>/gallery/*, same atomic commit
    store.commit_cell(cell.cell_id, tables, cell_meta(cell, row))
    if checkpoint is not None and status == "ok":
        checkpoint.drop()  # a failed cell keeps its finished batches for the retry
    return CellSummary(cell.cell_id, status, row)


def evaluate(cell: ResolvedCell, model: Any, device: torch.device, progress: Progress | None,
             checkpoint: Checkpoint | None = None, done: CellProgress | None = None) -> dict[str, Any]:
    """Per-sample rows of the cell (``samples`` and ``certified`` tables). With a ``checkpoint`` the
    finished batches are saved after each batch; ``done`` (what an earlier run saved there) is
    continued after its last batch (``runner.resume``)."""
    started = time.time()
    defended = cell.defense.apply(model)
    task, attack = cell.task, cell.attack
    if is_retrieval(task):  # ranked over the whole gallery once every batch is attacked
        return evaluate_retrieval(cell, defended, device, progress)
    gallery_capture.reset(cell.cell_id)
    if getattr(attack, "targeted", False):
        objective = task.targeted_objective(getattr(attack, "loss", None))
    else:
        objective = task.objective(getattr(attack, "loss", None))
    done = done or CellProgress()
    if done.batches:  # random state needs no restoring: every batch is seeded by itself
        gallery_capture.restore(cell.cell_id, done.gallery)
    rows, cert_frames = list(done.rows), list(done.cert)
    spec = cell.spec
    shard = parse_shard(spec.shard)
    batches = task.examples(n=spec.n, seed=spec.seed, batch_size=spec.batch_size, image_size=model.image_size)
    for k, batch in enumerate(batches):
        if not in_shard(k, shard):  # another shard's batch
            continue
        if k < done.batches:  # finished in an earlier run
            if progress:
                progress(len(batch))
            continue
        batch = batch.to(device)
        # a batch's draws depend on the batch alone, so shards and resumed runs draw what one whole run draws
        cell.defense.reseed(defended, batch_seed(spec.seed, k))
        with batch_random_state(batch_seed(spec.seed, k), batch.pixels.device):
            batch_rows, cert = evaluate_one(cell, defended, objective, batch)
        if cell.certify:
            cert_frames.append(cert)
            attach_bound(batch_rows, cert, cell)
            attach_certified(batch_rows, cert, cell)
            attach_rs(batch_rows, cert)
        rows.extend(batch_rows)
        if checkpoint is not None:
            checkpoint.save(CellProgress(k + 1, rows, cert_frames, gallery_capture.pending(cell.cell_id),
                                         done.elapsed_s + time.time() - started))
        if progress:
            progress(len(batch))
    per_sample = pd.concat(cert_frames, ignore_index=True) if cert_frames else pd.DataFrame()
    tables = {"samples": pd.DataFrame(rows), "certified": aggregate_certified(cell, per_sample) if cert_frames
              else pd.DataFrame()}
    if shard is not None:
        tables[SHARD_CERTIFICATES] = per_sample  # what `mmrobust merge` aggregates over all shards
    return tables


def evaluate_one(cell: ResolvedCell, defended: Any, objective: Any, batch: Any) -> tuple[list[dict[str, Any]], Any]:
    """One batch's sample rows and (certifying cells) its per-sample certificate rows."""
    batch_rows = evaluate_halving_on_oom(cell, defended, objective, batch)
    cert = only_clean_correct(certify_batch(cell, defended, batch), batch_rows) if cell.certify else None
    return batch_rows, cert
