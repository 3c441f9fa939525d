"""Plain-Python entry points the CLI delegates to: run_cell, run_grid, listings, store tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from robustbench_mm.presets import load_grid, preset_names
from robustbench_mm.runner.cell import CellSummary
from robustbench_mm.runner.cell import run_cell as _run_cell
from robustbench_mm.runner.grid import GridSpec, plan_grid, run_grid as _run_grid  # noqa: F401  (plan_grid: part of the API)
from robustbench_mm.runner.resolve import CellSpec, ResolvedCell, resolve
from robustbench_mm.runner.store import ResultStore

DEFAULT_OUT = Path("results/runs/default")


def resolve_cell(spec: CellSpec) -> ResolvedCell:
    """Check every input of a cell (names, budgets, --n, compatibility, weights present) and build
    its attack, defense and task; loads no weights and touches no store."""
    return resolve(spec)


def run_cell(spec: CellSpec | ResolvedCell, *, out: str | Path = DEFAULT_OUT, force: bool = False,
             progress: Callable[[int], None] | None = None) -> CellSummary:
    """Resolve (fail fast on bad input), then run one cell into the store at ``out``."""
    cell = spec if isinstance(spec, ResolvedCell) else resolve(spec)
    with ResultStore(out) as store:
        return _run_cell(cell, store=store, force=force, progress=progress)


def shard_size(cell: ResolvedCell) -> int:
    """Samples the cell evaluates here: ``--n``, or its ``--shard i/k``'s part of them."""
    from robustbench_mm.runner.shards import parse_shard, shard_size as size

    return size(int(cell.spec.n or 0), cell.spec.batch_size, parse_shard(cell.spec.shard))


def merge_shards(stores: Sequence[str | Path], out: str | Path, *, force: bool = False) -> list[str]:
    """``mmrobust merge``: the shard stores of one run -> one store equal to the run without
    ``--shard`` (same per-sample rows, certificates and aggregates); returns the merged cell ids."""
    from robustbench_mm.runner.merge import merge_shard_stores

    return merge_shard_stores(stores, out, force=force)


def run_grid(cells: list[ResolvedCell], *, out: str | Path = DEFAULT_OUT, force: bool = False,
             on_cell: Callable[..., None] | None = None, progress: Callable[[int], None] | None = None,
             executor: str = "local", address: str | None = None, shards: int = 1) -> list[CellSummary]:
    """Run cells through the ``local`` or ``ray`` executor; only this process writes the store.
    ``shards`` > 1 (Ray only) splits every cell into that many shard tasks, merged on commit."""
    if executor == "local" and address is None and shards == 1:
        with ResultStore(out) as store:
            return _run_grid(cells, store, force=force, on_cell=on_cell, progress=progress)
    from robustbench_mm.runner.executors import make_executor

    runner = make_executor(executor, address, shards)
    with ResultStore(out) as store:
        return runner.run(cells, store, force=force, on_cell=on_cell, progress=progress)


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
    if kind == "grids":
        return [_grid_summary(n) for n in preset_names("grid")]
    if kind == "encoders":
        return _encoder_rows()
    singular = kind.rstrip("s")
    return [{"name": n, **_preset_summary(singular, n)} for n in preset_names(singular)]


def _encoder_rows() -> list[dict[str, Any]]:
    """``--vision-encoder`` presets: the zoo's CLIP encoders, then the public ones (cached or not)."""
    from robustbench_mm.errors import WeightsError
    from robustbench_mm.models.vision_swap import PUBLIC_ENCODERS
    from robustbench_mm.models.zoo import entry_for
    from robustbench_mm.runner.vision_encoder import zoo_encoders

    rows = [{"name": n, "source": src, "available": True} for n, src in zoo_encoders().items()]
    for name, src in PUBLIC_ENCODERS.items():
        try:
            entry_for(src)
            available = True
        except WeightsError:
            available = False
        rows.append({"name": name, "source": src, "available": available})
    return rows


def _grid_summary(name: str) -> dict[str, Any]:
    data = load_grid(name)
    lists = [data["models"], data["attacks"], data.get("defenses") or ["none"], data.get("tasks") or [None]]
    product = 1
    for values in lists:
        product *= len(values)
    return {"name": name, "description": data.get("description", ""), "models": data["models"],
            "attacks": data["attacks"], "defenses": data.get("defenses") or ["none"],
            "tasks": data.get("tasks") or [], "cells": product}


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
    summary = {"impl": data.get("impl", ""), "description": data.get("description", ""),
               "params": data.get("params") or {}}
    if kind == "task":  # each task's metric and per-family prompt
        from robustbench_mm.tasks.card import task_card

        summary.update(task_card(name))
    return summary


def show(out: str | Path) -> pd.DataFrame:
    """The asr table of a store (validated)."""
    from robustbench_mm.errors import StoreError
    from robustbench_mm.runner.store import MARKER

    store = ResultStore(out)
    if not store.root.is_dir():
        raise StoreError(f"{out} does not exist; run `mmrobust run ... --out {out}` first")
    if not (store.root / MARKER).is_file():
        raise StoreError(f"{out} is not an mmrobust result store (no {MARKER}); give a directory written by "
                         f"`mmrobust run --out DIR` or `mmrobust grid --out DIR`")
    return store.open().read("asr")


def validate() -> list[tuple[str, str, str]]:
    """Build every attack, defense and task preset (no weights); returns (kind, name, status)."""
    from robustbench_mm.attacks.base import ATTACKS
    from robustbench_mm.defenses.base import DEFENSES
    from robustbench_mm.presets import load_preset
    from robustbench_mm.presets import build
    from robustbench_mm.runner.registration import register_all
    from robustbench_mm.tasks.base import TASKS

    register_all()
    results = []
    for kind, reg in (("attack", ATTACKS), ("defense", DEFENSES), ("task", TASKS)):
        for name in preset_names(kind):
            preset = load_preset(kind, name, reg)
            build(reg.get(preset.impl), preset)
            results.append((kind, name, "ok"))
    for name in preset_names("grid"):
        load_grid(name)
        results.append(("grid", name, "ok"))
    return results


def train_defense(defense: str, model: str, *, out: str | Path | None = None, resume: bool = True,
                  force: bool = False, device: str | None = None, eps: float | None = None) -> dict[str, Any]:
    """Train a defense's weights for a model (``mmrobust train``). Dispatches to the defense's own
    ``train(model, out=, resume=, force=)``; defenses without one have nothing to train. ``eps``
    overrides the preset's training budget (the recipe, and so the weights directory, follow it)."""
    from robustbench_mm.defenses.base import DEFENSES
    from robustbench_mm.errors import CapabilityError, ConfigError
    from robustbench_mm.models.zoo import LoadOptions, entry_for, load_model, resolve_model_name
    from robustbench_mm.presets import load_preset
    from robustbench_mm.models.device import pick_device
    from robustbench_mm.presets import build
    from robustbench_mm.runner.registration import register_all

    register_all()
    preset = load_preset("defense", defense, DEFENSES, {"eps": eps} if eps is not None else None)
    obj = build(DEFENSES.get(preset.impl), preset)
    if not callable(getattr(obj, "train", None)):
        raise ConfigError(f"defense {preset.name!r} has no training step (it acts at inference); nothing to train")
    entry = entry_for(resolve_model_name(model))
    if entry.family not in obj.families:
        raise CapabilityError(f"defense {preset.name!r} does not apply to {entry.family} models such as "
                              f"{entry.name!r}; it supports {', '.join(sorted(obj.families))}")
    if callable(getattr(obj, "check_training_data", None)):
        obj.check_training_data()  # missing training data: one line, before any model loads
    loaded = load_model(model, LoadOptions(device=pick_device(device).type, dtype="fp32"))
    return obj.train(loaded, out=Path(out) if out else None, resume=resume, force=force)  # type: ignore[no-any-return]


def leaderboard(run_dirs: list[str | Path], *, out: str | Path = "results/leaderboard/v1",
                baseline: str | Path | None = None, carry: str | Path | None = None) -> tuple[dict[str, Any], Any]:
    """Build the leaderboard release of protocol stores into ``out`` (entries.parquet, schema.json,
    index.html, leaderboard.md, detail pages, cards, plots, gallery).

    With ``baseline`` (a release's ``entries.parquet``, read before anything is overwritten) also
    returns the ``Comparison`` with it; otherwise ``None``. With ``carry`` (an earlier release
    folder) its entries that no store holds are kept, re-ranked. Bad input raises before any write.
    """
    from robustbench_mm.report.compare import compare
    from robustbench_mm.report.release import write_release

    before = pd.read_parquet(baseline) if baseline is not None and Path(baseline).exists() else None
    summary = write_release(run_dirs, out, carry=carry)
    return summary, (compare(before, summary["entries"]) if before is not None else None)


def verify_release(release: str | Path) -> Any:
    """Re-derive every entry of the release at ``release`` from its ``samples/`` rows; returns a
    ``report.verify.Verification`` (``.ok``, ``.entries``, ``.mismatch``: the first difference)."""
    from robustbench_mm.report.verify import verify

    return verify(release)


def show_gallery(out: str | Path, png: str | Path) -> int:
    """Write the stacked gallery grids of a store's cells to ``png``; returns the number of cells shown."""
    from robustbench_mm.report.show import write_gallery

    return write_gallery(out, show(out), png)


def show_curves(out: str | Path, directory: str | Path, cell_ids: Sequence[str] | None = None) -> list[Path]:
    """One certified-curve PNG per certifying cell of a store (sound rows only: certified accuracy
    against the l2 radius, FCSB median / 5% quantile), written to ``directory``; returns the paths.
    ``cell_ids`` limits it to those cells."""
    from robustbench_mm.report import plots
    from robustbench_mm.report.entries import sound_rows

    show(out)  # validates the store
    cert = ResultStore(out).open().read("certified")
    target = Path(directory)
    written = []
    for cell_id, rows in (sound_rows(cert).groupby("cell_id") if not cert.empty else []):
        if cell_ids is not None and cell_id not in cell_ids:
            continue
        png = plots.certified_curves(rows, f"{rows['model'].iloc[0]} / {rows['defense'].iloc[0]} (sound bounds)")
        if png:
            target.mkdir(parents=True, exist_ok=True)  # only when there is a curve to write
            path = target / f"{cell_id}--certified.png"
            path.write_bytes(png)
            written.append(path)
    return written


def reproduce_list() -> list[dict[str, Any]]:
    """Every paper spec in tasks/papers/ with its cells, references and missing weights."""
    from robustbench_mm.report import paper

    return [paper.describe(s) for s in paper.load_all()]


def reproduce(spec: str, *, zoo: bool = False, out: str | Path = "results", n: int | None = None,
              device: str | None = None, progress: Callable[..., None] | None = None) -> Any:
    """Run a paper spec's cells (real models, or the bundled zoo with ``zoo``) and write the
    side-by-side table to ``out``/papers/<spec>.{md,parquet}."""
    from robustbench_mm.report import paper

    return paper.reproduce(paper.load(spec), zoo=zoo, out=Path(out), n=n, device=device, on_cell=progress)


def sanity(model: str, defense: str = "none", *, n: int = 64, task: str | None = None, eps: float | None = None,
           steps: int = 20, seed: int = 0, device: str | None = None, surrogate: str = "none",
           checks: str | None = None) -> list[Any]:
    """Gradient-masking sanity checks of ``model`` under ``defense`` (robustbench_mm.checks.run_sanity);
    ``checks``: comma-separated names (default all); ``surrogate``: the transfer check's source defense."""
    from robustbench_mm.checks import check_names, run_sanity

    return run_sanity(model, defense, n, task=task, eps=eps if eps is not None else 8 / 255, steps=steps, seed=seed,
                      device=device, surrogate=surrogate, checks=check_names(checks))
