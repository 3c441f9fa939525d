"""Commands that inspect rather than evaluate: ``list``, ``validate``, ``sanity``, ``store check|repair``."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from robustbench_mm.cli.options import DefenseOpt, DeviceOpt, EpsOpt, JsonOpt, Model, NOpt, SeedOpt, TaskOpt, parse_eps

KINDS = ("models", "attacks", "defenses", "tasks", "grids", "encoders")


def list_cmd(kind: Annotated[str, typer.Argument(help="models, attacks, defenses, tasks, grids or "
                                                          "encoders (--vision-encoder presets)")],
             as_json: JsonOpt = False) -> None:
    """List registered names."""
    from robustbench_mm.errors import ConfigError

    if kind not in KINDS:
        raise ConfigError(f"list {kind!r}: choose one of {', '.join(KINDS)}")
    from robustbench_mm import api
    rows = api.list_names(kind)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    cols = {"models": ["name", "family", "available", "source"], "grids": ["name", "cells", "description"],
            "encoders": ["name", "available", "source"]}.get(
        kind, ["name", "impl", "description"])
    table = Table(*cols)
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in cols))
    Console().print(table)


def validate() -> None:
    """Build every preset (attacks, defenses, tasks, grids); exits 2 on the first invalid one."""
    from robustbench_mm import api

    results = api.validate()
    typer.echo(f"{len(results)} presets valid")


def sanity(model: Model, defense: DefenseOpt = "none", task: TaskOpt = None, n: NOpt = 64, eps: EpsOpt = None,
           steps: Annotated[int, typer.Option("--steps", help="APGD steps of the base attack.")] = 20,
           seed: SeedOpt = 0, device: DeviceOpt = None,
           checks: Annotated[Optional[str], typer.Option(
               "--checks", help="Comma-separated subset, e.g. transfer,more-steps (default: all).")] = None,
           surrogate: Annotated[str, typer.Option(
               "--surrogate", help="Defense preset whose model the transfer check attacks (default: none, "
                                   "the undefended model).")] = "none",
           as_json: JsonOpt = False) -> None:
    """Gradient-masking sanity checks (docs/checks.md); exits 1 if any fails."""
    from robustbench_mm import api

    results = api.sanity(model, defense, n=n or 64, task=task, eps=parse_eps(eps), steps=steps, seed=seed, device=device,
                         surrogate=surrogate, checks=checks)
    if as_json:
        typer.echo(json.dumps([r.as_dict() for r in results], indent=2, default=str))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("check", "result", "value", "expected", "detail", title=f"sanity: {model} / {defense}")
        for r in results:
            table.add_row(r.name, "pass" if r.passed else "FAIL", f"{r.value:.3f}", r.expected, r.detail or r.doc)
        Console(width=160).print(table)
    if not all(r.passed for r in results):
        raise typer.Exit(1)


def store_check(out: Annotated[str, typer.Argument(help="Result store directory.")]) -> None:
    """List damaged files in a store; exit 1 if any."""
    from robustbench_mm.runner.store import ResultStore

    problems = ResultStore(out).check()
    for p in problems:
        typer.echo(p)
    typer.echo(f"{len(problems)} problems in {out}")
    if problems:
        raise typer.Exit(1)


def store_repair(out: Annotated[str, typer.Argument(help="Result store directory.")]) -> None:
    """Quarantine damaged cells, keep every valid row, rebuild the merged tables."""
    from robustbench_mm.runner.store import ResultStore

    store = ResultStore(out)
    store.lock()
    try:
        moved = store.repair()
    finally:
        store.unlock()
    typer.echo(f"repaired {out}: quarantined {len(moved)} cells {moved}")
