"""Grids: the product of named lists, run cell by cell through an executor; resumable."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

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
    """All cells of the grid, resolved up front so bad input fails before anything runs.

    A task a model family cannot do is skipped in a grid (the product is over names), but an
    explicit single-task grid where no model fits is an error, raised by ``resolve``.
    """
    from robustbench_mm.errors import CapabilityError

    cells, errors = [], []
    for model, attack, defense, task in itertools.product(grid.models, grid.attacks, grid.defenses, grid.tasks):
        spec = replace(template, model=model, attack=attack, defense=defense, task=task)
        try:
            cells.append(resolve(spec))
        except CapabilityError as exc:
            errors.append(exc)
    if not cells and errors:
        raise errors[0]
    for exc in errors:
        log.warning("skipped incompatible cell: %s", exc)
    seen: set[str] = set()
    unique = [c for c in cells if not (c.cell_id in seen or seen.add(c.cell_id))]  # type: ignore[func-returns-value]
    return unique


def run_grid(cells: list[ResolvedCell], store: ResultStore, *, force: bool = False,
             on_cell: Callable[[ResolvedCell, CellSummary], None] | None = None,
             progress: Callable[[int], None] | None = None) -> list[CellSummary]:
    """Run cells in order in this process; the store skips finished ones."""
    summaries = []
    for cell in cells:
        summary = run_cell(cell, store=store, force=force, progress=progress)
        summaries.append(summary)
        if on_cell:
            on_cell(cell, summary)
    return summaries


def spec_from_grid_preset(data: dict[str, Any]) -> tuple[GridSpec, dict[str, Any]]:
    grid = GridSpec(tuple(data["models"]), tuple(data["attacks"]), tuple(data.get("defenses") or ["none"]),
                    tuple(data.get("tasks") or [None]))
    shared = {k: data[k] for k in ("n", "seed", "eps", "steps", "batch_size") if k in data}
    return grid, shared
