"""Commands that run cells: ``run`` (one cell) and ``grid`` (a product of cells)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from robustbench_mm.cli.options import (
    AttackOpt, BatchOpt, CompileOpt, DefenseOpt, DeviceMapOpt, DeviceOpt, DtypeOpt, EpsOpt, LoadDtypeOpt, Model,
    NOpt, NormOpt, OutOpt, PickleOpt, RemoteOpt, RevisionOpt, SeedOpt, ShardOpt, StepsOpt, TaskOpt, VisionEncoderOpt,
    cell_spec,
)
from robustbench_mm.cli.output import cell_line, print_summary, progress_reporter


def run(model: Model, attack: AttackOpt = "pgd", defense: DefenseOpt = "none", task: TaskOpt = None,
        eps: EpsOpt = None, norm: NormOpt = None, steps: StepsOpt = None, n: NOpt = 64, seed: SeedOpt = 0,
        batch_size: BatchOpt = 64, device: DeviceOpt = None, dtype: DtypeOpt = "fp32",
        out: OutOpt = "results/runs/default",
        force: Annotated[bool, typer.Option("--force", help="Recompute even if the store has the cell.")] = False,
        certify: Annotated[Optional[bool], typer.Option("--certify/--no-certify", help="Compute the defense's "
                                                        "certified bounds; default: on for defenses that certify "
                                                        "(fs, fs-psm).")] = None,
        allow_pickle: PickleOpt = False, trust_remote_code: RemoteOpt = False, compile: CompileOpt = False,
        load_dtype: LoadDtypeOpt = "fp32", revision: RevisionOpt = None, device_map: DeviceMapOpt = None,
        shard: ShardOpt = None, vision_encoder: VisionEncoderOpt = None) -> None:
    """Run one cell (model x attack x defense x task) and write its rows to the store."""
    from robustbench_mm import api

    spec = cell_spec(model, attack, defense, task, eps=eps, norm=norm, steps=steps, n=n, seed=seed,
                 batch_size=batch_size, device=device, dtype=dtype, certify=certify, allow_pickle=allow_pickle,
                 trust_remote_code=trust_remote_code, compile=compile, load_dtype=load_dtype, revision=revision,
                 device_map=device_map, shard=shard, vision_encoder=vision_encoder)
    cell = api.resolve_cell(spec)  # every check before any weights load or the store is touched
    total = api.shard_size(cell)
    with progress_reporter(f"{cell.entry.name} / {cell.attack.name} / {cell.defense.name}", total) as reporter:
        summary = api.run_cell(cell, out=out, force=force, progress=reporter.advance)
    print_summary(summary, out)
    if summary.status == "ok" and (Path(out) / "certified.parquet").is_file():
        for path in api.show_curves(out, Path(out) / "curves", cell_ids=[summary.cell_id]):
            typer.echo(f"-> {path} (certified-accuracy curve)")


def grid(preset: Annotated[Optional[str], typer.Option("--preset", help="Grid preset (`mmrobust list grids`); its "
                                                     "n/seed/eps/steps apply where the command line sets none.")] = None,
         models: Annotated[Optional[str], typer.Option("--models", help="Comma list of models (instead of --preset).")
                           ] = None,
         attacks: Annotated[str, typer.Option("--attacks", help="Comma list of attack presets.")] = "pgd",
         defenses: Annotated[str, typer.Option("--defenses", help="Comma list of defense presets.")] = "none",
         tasks: Annotated[Optional[str], typer.Option("--tasks", help="Comma list of tasks; default: each model "
                                                      "family's default task.")] = None,
         eps: EpsOpt = None, norm: NormOpt = None, steps: StepsOpt = None, n: NOpt = 64, seed: SeedOpt = 0,
         batch_size: BatchOpt = 64, device: DeviceOpt = None, dtype: DtypeOpt = "fp32",
         executor: Annotated[str, typer.Option("--executor", help="local or ray (one Ray task per cell).")] = "local",
         address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster address, e.g. auto.")] = None,
         shards: Annotated[int, typer.Option("--shards", help="With --executor ray: split every cell into this "
                                             "many shard tasks, merged when all are back (same numbers).")] = 1,
         out: OutOpt = "results/runs/default",
         force: Annotated[bool, typer.Option("--force", help="Recompute cells the store already has.")] = False,
         allow_pickle: PickleOpt = False, trust_remote_code: RemoteOpt = False, compile: CompileOpt = False,
         load_dtype: LoadDtypeOpt = "fp32", revision: RevisionOpt = None, device_map: DeviceMapOpt = None,
         shard: ShardOpt = None) -> None:
    """Run the product of models x attacks x defenses x tasks (or a grid preset); resumable."""
    from robustbench_mm import api
    from robustbench_mm.errors import ConfigError
    from robustbench_mm.runner.grid import GridSpec

    if executor not in ("local", "ray"):
        raise ConfigError(f"--executor {executor!r}: choose local or ray")
    if address and executor != "ray":
        raise ConfigError("--address only applies to --executor ray")
    if not preset and not models:
        raise ConfigError("grid needs --preset NAME or --models a,b (see `mmrobust grid --help`)")
    split = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())  # noqa: E731
    spec = cell_spec("", "pgd", "none", None, eps=eps, norm=norm, steps=steps, n=n, seed=seed, batch_size=batch_size,
                 device=device, dtype=dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                 compile=compile, load_dtype=load_dtype, revision=revision, device_map=device_map, shard=shard)
    adhoc = None if preset else GridSpec(split(models or ""), split(attacks), split(defenses),
                                         split(tasks) if tasks else (None,))
    cells = api.plan_grid(adhoc, preset, spec)  # every cell checked before the first runs
    typer.echo(f"grid: {len(cells)} cells -> {out}", err=True)
    total = sum(api.shard_size(c) for c in cells)
    with progress_reporter(f"grid ({len(cells)} cells)", total) as reporter:
        summaries = api.run_grid(cells, out=out, force=force, executor=executor, address=address, shards=shards,
                                 on_cell=lambda c, s: cell_line(c, s), progress=reporter.advance)
    failed = sum(s.status == "failed" for s in summaries)
    typer.echo(f"done: {len(summaries) - failed} ok/skipped, {failed} failed; store {out}")


def merge(stores: Annotated[list[str], typer.Argument(help="Shard stores (`--shard i/k --out DIR`), all k of them.")],
          out: Annotated[str, typer.Option("--out", help="Store to write the merged cells into (created if new).")],
          force: Annotated[bool, typer.Option("--force", help="Replace cells the --out store already has.")] = False
          ) -> None:
    """Combine the shard stores of one run into one store, equal to the run without --shard."""
    from robustbench_mm import api

    merged = api.merge_shards(stores, out, force=force)
    typer.echo(f"merged {len(merged)} cell(s) from {len(stores)} shard store(s) -> {out}")
