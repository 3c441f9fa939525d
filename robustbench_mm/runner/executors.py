"""Executors: where a grid's cells run. The driver alone writes the store.

``local`` runs cells one after another in this process. ``ray`` sends one cell per Ray task
(one GPU each when the cluster has GPUs) to every node of a cluster; each task returns the cell's
tables and the driver commits them (``ResultStore.commit_cell``), so the store never has two
writers. A task whose worker process dies (crash, node loss, OOM kill) is resubmitted by the
driver up to ``max_attempts`` times; the attempts and their errors go into the cell's
``meta.json`` (``executor``, ``attempts``, ``retry_errors``), and a cell that never finishes is
committed as ``failed`` with the last error. Numbers are identical to the local executor for the
same seeds: the task runs the very same ``run_cell`` code, only its commit is captured.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Callable, Protocol

from robustbench_mm.errors import ConfigError, MMRobustError

# torch-heavy modules load lazily: a Ray worker unpickling ``compute_cell`` imports this module
if TYPE_CHECKING:
    import pandas as pd

    from robustbench_mm.runner.cell import CellSummary
    from robustbench_mm.runner.resolve import ResolvedCell
    from robustbench_mm.runner.store import ResultStore

log = logging.getLogger(__name__)
EXECUTORS = ("local", "ray")
OnCell = Callable[["ResolvedCell", "CellSummary"], None]
# Test hook: a Ray task whose cell id starts with this value (``*`` = every cell) kills its own
# worker process with ``os._exit`` on its first attempt, as a crashing node would.
CRASH_ENV = "MMROBUST_TEST_RAY_CRASH_FIRST_ATTEMPT"


class Executor(Protocol):
    def run(self, cells: list[ResolvedCell], store: ResultStore, *, force: bool = False,
            on_cell: OnCell | None = None, progress: Callable[[int], None] | None = None) -> list[CellSummary]: ...


class LocalExecutor:
    """All cells in this process, in order (``runner.grid.run_grid``)."""

    def run(self, cells: list[ResolvedCell], store: ResultStore, *, force: bool = False,
            on_cell: OnCell | None = None, progress: Callable[[int], None] | None = None) -> list[CellSummary]:
        from robustbench_mm.runner.grid import run_grid

        return run_grid(cells, store, force=force, on_cell=on_cell, progress=progress)


class CaptureStore:
    """Stands in for ``ResultStore`` inside a worker: holds the one commit instead of writing it."""

    def __init__(self) -> None:
        self.committed: tuple[str, dict[str, pd.DataFrame], dict[str, Any]] | None = None
        self.root = "<ray task>"

    def finished(self, cell_id: str) -> bool:
        return False  # the driver already skipped finished cells

    def cell_row(self, cell_id: str) -> None:
        return None

    def commit_cell(self, cell_id: str, tables: dict[str, pd.DataFrame], meta: dict[str, Any]) -> None:
        self.committed = (cell_id, tables, meta)


def compute_cell(spec: dict[str, Any], expected_id: str, attempt: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Body of a Ray task: resolve and run one cell, return ``(status, tables, meta)``; no store writes.

    Args:
        spec: ``CellSpec`` fields (plain dict so any node can unpickle it).
        expected_id: the driver's cell id; a different id on the worker means its presets or
            package differ from the driver's, which would silently mix configurations.
        attempt: 1 for the first try; the crash test hook fires only on attempt 1.
    """
    crash = os.environ.get(CRASH_ENV, "")
    if crash and attempt == 1 and (crash == "*" or expected_id.startswith(crash)):
        os._exit(17)
    from robustbench_mm.runner.cell import run_cell
    from robustbench_mm.runner.resolve import CellSpec, resolve

    cell = resolve(CellSpec(**spec))
    if cell.cell_id != expected_id:
        raise ConfigError(f"worker resolved cell {cell.cell_id} but the driver planned {expected_id}: presets or "
                          f"mmrobust versions differ between nodes; install the same tree everywhere")
    capture = CaptureStore()
    summary = run_cell(cell, store=capture, force=True)  # type: ignore[arg-type]
    assert capture.committed is not None
    _, tables, meta = capture.committed
    return summary.status, tables, meta


class RayExecutor:
    """One Ray task per cell; the driver commits results as they arrive.

    Args:
        address: Ray cluster address (``auto`` = the running cluster); ``None`` starts a local Ray
            when none is initialised in this process.
        max_attempts: tries per task when its worker dies (application errors are not retried:
            ``run_cell`` already records them as a failed cell).
        shards: split every cell into this many shards (``runner.shards``), one task each, and
            commit the merged cell once all are back (equal to the unsharded cell); 1 = whole cells.
    """

    def __init__(self, address: str | None = None, max_attempts: int = 3, shards: int = 1) -> None:
        if shards < 1:
            raise ConfigError(f"--shards {shards} must be a positive number of shards per cell")
        self.address = address
        self.max_attempts = max_attempts
        self.shards = shards

    def _init(self) -> Any:
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray: pip install 'mmrobust[ray]' (or use --executor local)") \
                from None
        if not ray.is_initialized():
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR)
            except ConnectionError as exc:
                raise ConfigError(f"--address {self.address}: no Ray cluster reachable ({exc}); start one with "
                                  f"`ray start --head` or drop --address for a local Ray") from None
        return ray

    def run(self, cells: list[ResolvedCell], store: ResultStore, *, force: bool = False,
            on_cell: OnCell | None = None, progress: Callable[[int], None] | None = None) -> list[CellSummary]:
        from robustbench_mm.runner.cell import CellSummary

        ray = self._init()
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        remote = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=0)(compute_cell)
        summaries: dict[str, CellSummary] = {}
        pending: dict[Any, tuple[ResolvedCell, int, list[str], int]] = {}
        parts: dict[str, dict[int, tuple[str, dict[str, Any], dict[str, Any]]]] = {}
        split = {c.cell_id: self.shards if c.spec.shard is None else 1 for c in cells}

        def submit(cell: ResolvedCell, attempt: int, errors: list[str], part: int) -> None:
            spec = asdict(cell.spec)
            if split[cell.cell_id] > 1:
                spec["shard"] = f"{part}/{split[cell.cell_id]}"
            ref = remote.remote(spec, cell.cell_id, attempt)
            pending[ref] = (cell, attempt, errors, part)

        for cell in cells:
            if store.finished(cell.cell_id) and not force:
                summaries[cell.cell_id] = CellSummary(cell.cell_id, "skipped", store.cell_row(cell.cell_id) or {})
                if on_cell:
                    on_cell(cell, summaries[cell.cell_id])
            else:
                for part in range(1, split[cell.cell_id] + 1):
                    submit(cell, 1, [], part)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            cell, attempt, errors, part = pending.pop(ref)
            try:
                status, tables, meta = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, MMRobustError):
                    raise cause from None  # bad input (e.g. missing weights on the worker): one line, exit 2
                raise
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                    ray.exceptions.OutOfMemoryError, ray.exceptions.LocalRayletDiedError) as exc:
                errors = [*errors, f"attempt {attempt}: {type(exc).__name__}: {str(exc).splitlines()[0]}"]
                if attempt < self.max_attempts:
                    log.warning("cell %s: worker died (attempt %d/%d); resubmitting", cell.cell_id, attempt,
                                self.max_attempts)
                    submit(cell, attempt + 1, errors, part)
                    continue
                status, tables, meta = _failed_tables(cell, errors)
            meta = {**meta, "executor": "ray", "attempts": attempt, "retry_errors": errors}
            if progress:
                progress(int(cell.spec.n or 0) if split[cell.cell_id] == 1 else len(tables["samples"]))
            got = parts.setdefault(cell.cell_id, {})
            got[part] = (status, tables, meta)
            if len(got) < split[cell.cell_id]:
                continue
            status, tables, meta = _whole(cell, [got[i] for i in sorted(got)])
            store.commit_cell(cell.cell_id, tables, meta)
            summaries[cell.cell_id] = CellSummary(cell.cell_id, status, dict(tables["asr"].iloc[0]))
            if on_cell:
                on_cell(cell, summaries[cell.cell_id])
        return [summaries[c.cell_id] for c in cells]


def _whole(cell: ResolvedCell, results: list[tuple[str, dict[str, Any], dict[str, Any]]]
           ) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """One cell's commit from its task results: the single task's, or its shards merged (a failed
    shard fails the whole cell, with that shard's error; the finished shards are not kept)."""
    if len(results) == 1:
        return results[0]
    failed = [(i, r) for i, r in enumerate(results, 1) if r[0] != "ok"]
    if failed:
        i, (_, tables, meta) = failed[0]
        error = str(tables["asr"].iloc[0].get("error", "")) or "failed"
        status, tables, fmeta = _failed_tables(cell, [*meta.get("retry_errors", []), f"shard {i}/{len(results)}: "
                                                      f"{error}"])
        return status, tables, {**fmeta, "executor": "ray", "shards": len(results)}
    from robustbench_mm.runner.merge import merge_tables
    from robustbench_mm.runner.summary import cell_meta

    tables, row = merge_tables(cell, [r[1] for r in results])
    meta = {**cell_meta(cell, row), "executor": "ray", "shards": len(results),
            "attempts": [r[2].get("attempts", 1) for r in results],
            "retry_errors": [e for r in results for e in r[2].get("retry_errors", [])]}
    return "ok", tables, meta


def _failed_tables(cell: ResolvedCell, errors: list[str]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A ``failed`` asr row for a cell whose worker died on every attempt (no model was loaded here)."""
    import pandas as pd

    from robustbench_mm.runner import provenance
    from robustbench_mm.runner.summary import cell_meta, empty_tables
    from robustbench_mm.runner.store import SCHEMA_VERSION

    threat = cell.attack.describe()
    nan = float("nan")
    row = {"cell_id": cell.cell_id, "model": cell.entry.name, "attack": cell.attack.name,
           "defense": cell.defense.name, "task": cell.task.name, "norm": threat["norm"], "eps": threat["eps"],
           "steps": threat["steps"], "seed": cell.spec.seed, "n": cell.spec.n or 0, "clean_accuracy": nan,
           "robust_accuracy": nan, "asr": nan, "asr_low": nan, "asr_high": nan, "max_linf": nan, "max_l2": nan,
           "wall_s": nan, "samples_per_s": nan, "device": "", "dtype": cell.spec.dtype, "precision_policy": "",
           "status": "failed", "error": f"Ray worker died {len(errors)} times; last: {errors[-1]}",
           "unreliable": False, "sanity": "{}", "created_at": provenance.now(),
           "git_commit": provenance.git_commit(), "versions": provenance.versions_json(), "model_revision": "",
           "schema_version": SCHEMA_VERSION, "batch_size": cell.spec.batch_size}
    tables = {**empty_tables(), "asr": pd.DataFrame([row])}
    return "failed", tables, cell_meta(cell, row)


def make_executor(name: str, address: str | None = None, shards: int = 1) -> Executor:
    """``local`` or ``ray``; anything else is bad input."""
    if name == "local":
        if address:
            raise ConfigError("--address only applies to --executor ray")
        if shards != 1:
            raise ConfigError("--shards only applies to --executor ray (for one machine, run --shard i/k "
                              "commands yourself and `mmrobust merge` them)")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address=address, shards=shards)
    raise ConfigError(f"--executor {name!r}: choose one of {', '.join(EXECUTORS)}")
