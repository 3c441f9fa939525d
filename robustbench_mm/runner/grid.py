"""Grids: the product of named lists, run cell by cell through an executor; resumable."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from robustbench_mm.presets import load_grid, parse_number
from robustbench_mm.runner.cell import CellSummary, run_cell
from robustbench_mm.runner.resolve import CellSpec, ResolvedCell, resolve
from robustbench_mm.runner.store import ResultStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GridSpec:
    models: Sequence[str]
    attacks: Sequence[str]
    defenses: Sequence[str] = ("none",)
    tasks: Sequence[str | None] = (None,)


def expand(grid: GridSpec, template: CellSpec) -> list[ResolvedCell]:
    """All cells of the grid, resolved up front: every cell is checked before the first one runs.

    The grid is a product over names, so a (model, task) pair whose family cannot do the task is
    skipped when the grid lists several tasks and another model takes it (``zoo-clean``: CLIP
    models take the zero-shot task, LVLMs the VQA one). Anything else wrong in any cell - a name, a
    budget, ``--n``, a defense that does not apply to a model, missing weights, a model left with
    no task - rejects the whole grid with one line naming the cell and the fix.
    """
    from robustbench_mm.errors import MMRobustError
    from robustbench_mm.runner.resolve import TaskMismatch

    cells: list[ResolvedCell] = []
    errors: list[tuple[str, MMRobustError]] = []
    skipped: list[TaskMismatch] = []
    combos = list(itertools.product(grid.models, grid.attacks, grid.defenses, grid.tasks))
    for model, attack, defense, task in combos:
        spec = replace(template, model=model, attack=attack, defense=defense, task=task)
        where = f"{model} / {attack} / {defense} / {task or 'default task'}"
        try:
            cells.append(resolve(spec))
        except TaskMismatch as exc:
            if len(grid.tasks) > 1:
                skipped.append(exc)
            else:
                errors.append((where, exc))
        except MMRobustError as exc:
            errors.append((where, exc))
    for model in grid.models:
        if not errors and not any(c.spec.model == model for c in cells):
            errors.append((model, _no_task(model, skipped)))
    if errors:
        where, exc = errors[0]
        more = f" (and {len(errors) - 1} more of the {len(combos)} cells)" if len(errors) > 1 else ""
        raise type(exc)(f"grid cell {where}: {exc}{more}; nothing was run")
    for exc in skipped:
        log.info("skipped incompatible pair: %s", exc)
    seen: set[str] = set()
    unique = [c for c in cells if not (c.cell_id in seen or seen.add(c.cell_id))]  # type: ignore[func-returns-value]
    return unique


def _no_task(model: str, skipped: list[Any]) -> Exception:
    from robustbench_mm.errors import CapabilityError

    reason = next((str(e) for e in skipped if repr(model) in str(e) or model in str(e)), "")
    return CapabilityError(f"no task of the grid applies to model {model!r}" + (f" ({reason})" if reason else ""))


def run_grid(cells: list[ResolvedCell], store: ResultStore, *, force: bool = False,
             on_cell: Callable[[ResolvedCell, CellSummary], None] | None = None,
             progress: Callable[[int], None] | None = None) -> list[CellSummary]:
    """Run cells in order in this process; the store skips finished ones."""
    summaries = []
    for cell in cells:
        summary = run_cell(cell, store=store, force=force, progress=progress)
        if summary.status == "skipped" and progress:  # a finished cell counts as done in the progress
            progress(int(cell.spec.n or 0))
        summaries.append(summary)
        if on_cell:
            on_cell(cell, summary)
    return summaries


def spec_from_grid_preset(data: dict[str, Any]) -> tuple[GridSpec, dict[str, Any]]:
    grid = GridSpec(tuple(data["models"]), tuple(data["attacks"]), tuple(data.get("defenses") or ["none"]),
                    tuple(data.get("tasks") or [None]))
    shared = {k: data[k] for k in ("n", "seed", "eps", "steps", "batch_size") if k in data}
    return grid, shared


def plan_grid(grid: GridSpec | None, preset: str | None, template: CellSpec) -> list[ResolvedCell]:
    """Cells of an ad-hoc grid or a grid preset; preset values fill what the CLI left unset."""
    if preset:
        data = load_grid(preset)
        grid, shared = spec_from_grid_preset(data)
        fill = {k: v for k, v in shared.items() if getattr(template, k) == getattr(CellSpec(model=""), k)}
        if "eps" in fill:
            fill["eps"] = parse_number(fill["eps"], f"grid {preset}: eps")
        template = replace(template, **fill)
    assert grid is not None
    return expand(grid, template)
