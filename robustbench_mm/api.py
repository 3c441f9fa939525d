"""Plain-Python entry points the CLI delegates to: run_cell, run_grid, listings, store tools."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from robustbench_mm.presets import load_grid, preset_names
from robustbench_mm.runner.cell import CellSummary
from robustbench_mm.runner.cell import run_cell as _run_cell
from robustbench_mm.runner.grid import GridSpec, expand, run_grid as _run_grid, spec_from_grid_preset
from robustbench_mm.runner.resolve import CellSpec, ResolvedCell, resolve
from robustbench_mm.runner.store import ResultStore

DEFAULT_OUT = Path("results/runs/default")


def run_cell(spec: CellSpec, *, out: str | Path = DEFAULT_OUT, force: bool = False,
             progress: Callable[[int], None] | None = None) -> CellSummary:
    """Resolve (fail fast on bad input), then run one cell into the store at ``out``."""
    cell = resolve(spec)
    with ResultStore(out) as store:
        return _run_cell(cell, store=store, force=force, progress=progress)


def plan_grid(grid: GridSpec | None, preset: str | None, template: CellSpec) -> list[ResolvedCell]:
    """Cells of an ad-hoc grid or a grid preset; preset values fill what the CLI left unset."""
    if preset:
        data = load_grid(preset)
        grid, shared = spec_from_grid_preset(data)
        fill = {k: v for k, v in shared.items() if getattr(template, k) == getattr(CellSpec(model=""), k)}
        if "eps" in fill:
            from robustbench_mm.presets import parse_number

            fill["eps"] = parse_number(fill["eps"], f"grid {preset}: eps")
        template = replace(template, **fill)
    assert grid is not None
    return expand(grid, template)


def run_grid(cells: list[ResolvedCell], *, out: str | Path = DEFAULT_OUT, force: bool = False,
             on_cell: Callable[..., None] | None = None, progress: Callable[[int], None] | None = None
             ) -> list[CellSummary]:
    with ResultStore(out) as store:
        return _run_grid(cells, store, force=force, on_cell=on_cell, progress=progress)


def list_names(kind: str) -> list[dict[str, Any]]:
    """Registered names of a kind; models carry family, source, bundled, available, params."""
    if kind == "models":
        from robustbench_mm.models.zoo import ALIASES, MODELS

        rows = []
        for name in MODELS.names():
            e = MODELS.get(name)
            rows.append({"name": name, "family": e.family, "source": e.resolved_source(), "bundled": e.bundled,
                         "available": e.available(), "params": e.params or _bundled_params(e)})
        for alias, (real, tiny) in ALIASES.items():
            rows.append({"name": alias, "family": MODELS.get(real).family, "source": f"alias: {real} or {tiny}",
                         "bundled": False, "available": True, "params": 0})
        return rows
    singular = kind.rstrip("s")
    return [{"name": n, **_preset_summary(singular, n)} for n in preset_names(singular)]


def _bundled_params(entry: Any) -> int:
    if not entry.bundled or not entry.available():
        return 0
    from safetensors import safe_open

    total = 0
    for f in Path(entry.resolved_source()).glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            for key in fh.keys():
                total += _prod(fh.get_slice(key).get_shape())
    return total


def _prod(shape: list[int]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _preset_summary(kind: str, name: str) -> dict[str, Any]:
    from robustbench_mm.presets import load_raw

    _, data = load_raw(kind, name)
    return {"impl": data.get("impl", ""), "description": data.get("description", ""),
            "params": data.get("params") or {}}


def show(out: str | Path) -> pd.DataFrame:
    """The asr table of a store (validated)."""
    store = ResultStore(out)
    if not store.root.is_dir():
        from robustbench_mm.errors import StoreError

        raise StoreError(f"{out} does not exist; run `mmrobust run ... --out {out}` first")
    return store.open().read("asr")


def validate() -> list[tuple[str, str, str]]:
    """Build every attack, defense and task preset (no weights); returns (kind, name, status)."""
    from robustbench_mm.attacks.base import ATTACKS
    from robustbench_mm.defenses.base import DEFENSES
    from robustbench_mm.presets import load_preset
    from robustbench_mm.runner.resolve import _build, _register_all
    from robustbench_mm.tasks.base import TASKS

    _register_all()
    results = []
    for kind, reg in (("attack", ATTACKS), ("defense", DEFENSES), ("task", TASKS)):
        for name in preset_names(kind):
            preset = load_preset(kind, name, reg)
            _build(reg.get(preset.impl), preset)
            results.append((kind, name, "ok"))
    for name in preset_names("grid"):
        load_grid(name)
        results.append(("grid", name, "ok"))
    return results
