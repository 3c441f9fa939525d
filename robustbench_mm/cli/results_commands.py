"""Commands over the standard protocol and its results: ``benchmark``, ``leaderboard``, ``compare``, ``show``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from robustbench_mm.cli.options import (
    BatchOpt, DefenseOpt, DeviceOpt, DtypeOpt, Model, OutOpt, PickleOpt, RemoteOpt, SeedOpt, ShardOpt, TaskOpt,
    VisionEncoderOpt,
    parse_eps,
)
from robustbench_mm.cli.output import progress_reporter


def benchmark(
        model: Model, defense: DefenseOpt = "none", task: TaskOpt = None,
        norm: Annotated[Optional[str], typer.Option("--norm", help="linf or l2 (default: every standard threat model "
                                                    "of the task, from tasks/protocols/<version>-v1.yaml).")] = None,
        eps: Annotated[Optional[str], typer.Option("--eps", help="Budget in [0,1] pixel units, e.g. 8/255 (default: "
                                                   "the protocol's standard budget for --norm).")] = None,
        n: Annotated[int, typer.Option("--n", help="Number of evaluation samples (default 64, as mmrobust run).")] = 64,
        version: Annotated[str, typer.Option("--version", help="auto, standard or rand (default auto: rand when the "
                                             "defense is randomized, else standard).")] = "auto",
        seed: SeedOpt = 0, batch_size: BatchOpt = 64, device: DeviceOpt = None, dtype: DtypeOpt = "fp32",
        verdict_draws: Annotated[Optional[int], typer.Option("--verdict-draws", help="Fresh draws per verdict for "
                                 "randomized defenses, >= 8 (default: the protocol's, 16).")] = None,
        out: OutOpt = "results/runs/default",
        force: Annotated[bool, typer.Option("--force", help="Recompute cells already in the store.")] = False,
        allow_pickle: PickleOpt = False, trust_remote_code: RemoteOpt = False, shard: ShardOpt = None,
        vision_encoder: VisionEncoderOpt = None) -> None:
    """Robust accuracy under the standard, versioned protocol: one cell and one line per threat model."""
    from robustbench_mm import benchmarking

    protocol, chosen, specs = benchmarking.plan(
        model, defense=defense, task=task, norm=norm, eps=parse_eps(eps), version=version, n=n, seed=seed,
        batch_size=batch_size, device=device, dtype=dtype, verdict_draws=verdict_draws,
        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, shard=shard, vision_encoder=vision_encoder)
    picked = f"version {chosen}" + (" (auto)" if version == "auto" else "")
    typer.echo(f"benchmark: protocol {protocol.id}, {picked}, {len(specs)} threat model(s) -> {out}", err=True)
    from robustbench_mm import api

    ran = api.resolve_cell(specs[0]).entry.name  # the model actually run (an alias may fall back to the zoo)
    ran = f"{ran} + {vision_encoder}" if vision_encoder else ran
    label = f"{ran} | {defense}"
    total = sum(api.shard_size(api.resolve_cell(s)) for s in specs)
    with progress_reporter(f"{ran} / {protocol.id} / {defense}", total) as reporter:
        benchmarking.run(specs, protocol, chosen, out=out, force=force, progress=reporter.advance,
                         on_result=lambda r: typer.echo(r.line(label)))


def leaderboard(run_dirs: Annotated[Optional[list[str]], typer.Argument(
                    help="Protocol stores (mmrobust benchmark --out).")] = None,
                out: Annotated[str, typer.Option("--out", help="Release folder.")] = "results/leaderboard/v1",
                carry: Annotated[Optional[str], typer.Option(
                    "--carry", help="An earlier release folder: keep its entries that no store holds (their "
                                    "rows, pages and images as they were; ranks recomputed).")] = None,
                baseline: Annotated[Optional[str], typer.Option(
                    "--baseline", help="A release's entries.parquet: print what changed; exit 1 on a "
                                       "robust accuracy outside its 95% interval.")] = None,
                verify: Annotated[Optional[str], typer.Option(
                    "--verify", help="A release folder: re-derive every entry from its samples/ rows and "
                                     "build nothing; exit 1 on the first difference.")] = None) -> None:
    """Build the ranked leaderboard release (entries.parquet, index.html, detail pages) from protocol stores."""
    from robustbench_mm import api

    if verify is not None:
        _verify(verify, bool(run_dirs or carry or baseline))
        return

    summary, comparison = api.leaderboard(list(run_dirs or []), out=out, baseline=baseline, carry=carry)
    kept = f" ({summary['carried']} carried from {carry})" if carry else ""
    typer.echo(f"leaderboard: {len(summary['entries'])} entries{kept} in {summary['groups']} tables, "
               f"{summary['files']} files -> {out}")
    if comparison is None:
        if baseline:
            typer.echo(f"no release at {baseline}; nothing to compare")
        return
    typer.echo(f"since the release: {comparison.summary()}")
    for _, c in comparison.changes.iterrows():
        if c["change"] != "same":
            typer.echo(f"  {c['change']:15s} {c['task']}/{c['model']}/{c['defense']} {c['norm']} "
                       f"eps={c['eps']:.4g}: {c['note']}")
    if comparison.regressions:
        typer.echo(f"error: {len(comparison.regressions)} regression(s) beyond the release's 95% interval: "
                   + "; ".join(comparison.regressions), err=True)
        raise typer.Exit(1)


def compare(release_a: Annotated[str, typer.Argument(help="The earlier release folder, e.g. results/leaderboard/v1.")],
            release_b: Annotated[str, typer.Argument(help="The later release folder, e.g. results/leaderboard/v2.")],
            out: Annotated[Optional[str], typer.Option(
                "--out", help="Also write PAGE_DIR/compare.html and compare.md.")] = None,
            as_json: Annotated[bool, typer.Option("--json", help="Rows as a JSON array instead of the table.")] = False,
            ) -> None:
    """What changed between two leaderboard releases: robust accuracy, rank and the protocol change behind a move."""
    from robustbench_mm.report import release_compare_view as view
    from robustbench_mm.report.release_compare import compare_releases

    result = compare_releases(release_a, release_b)
    typer.echo(view.to_json(result) if as_json else view.text(result))
    if out is not None:
        paths = view.write_page(result, out)
        typer.echo(f"comparison page -> {', '.join(str(p) for p in paths)}", err=True)


def _verify(release: str, other_args: bool) -> None:
    from robustbench_mm import api
    from robustbench_mm.errors import ConfigError

    if other_args:
        raise ConfigError("--verify checks a release and builds nothing; give it without stores, --carry or "
                          "--baseline")
    result = api.verify_release(release)
    if not result.ok:
        typer.echo(f"error: {release} does not verify: {result.mismatch.line()}", err=True)
        raise typer.Exit(1)
    typer.echo(f"verified {result.entries} entries of {release} from their samples")


def show(out: Annotated[str, typer.Argument(help="Result store directory.")] = "results/runs/default",
         as_json: Annotated[bool, typer.Option("--json", help="Cells as a JSON array (eps as 8/255).")] = False,
         as_csv: Annotated[bool, typer.Option("--csv", help="Cells as CSV (eps as 8/255).")] = False,
         gallery: Annotated[Optional[str], typer.Option("--gallery", help="Write the cells' gallery grids "
                                                        "(clean | adversarial | perturbation) to OUT.png.")] = None,
         curves: Annotated[Optional[str], typer.Option("--curves", help="Write a certified-accuracy curve PNG per "
                                                       "certifying cell into this directory.")] = None,
         ) -> None:
    """Cells of a store: a table, --json/--csv for machines, --gallery OUT.png for the adversarial examples."""
    from robustbench_mm import api
    from robustbench_mm.errors import ConfigError
    from robustbench_mm.report import show as showmod

    if as_json and as_csv:
        raise ConfigError("give one of --json and --csv")
    if gallery:
        k = api.show_gallery(out, gallery)
        typer.echo(f"gallery of {k} cells -> {gallery}", err=as_json or as_csv)
    if curves:
        paths = api.show_curves(out, curves)
        typer.echo(f"certified curves of {len(paths)} cells -> {curves}", err=as_json or as_csv)
    df = showmod.cells(api.show(out))
    if as_json:
        typer.echo(showmod.to_json(df))
        return
    if as_csv:
        typer.echo(showmod.to_csv(df), nl=False)
        return
    if gallery or curves:
        return
    from rich.console import Console
    from rich.table import Table

    cols = ["model", "attack", "defense", "task", "norm", "eps", "n", "clean_accuracy", "robust_accuracy", "asr",
            "status"]
    if "certified_accuracy" in df and df["certified_accuracy"].notna().any():
        cols.insert(-1, "certified_accuracy")
    table = Table(*cols, title=f"{out}: {len(df)} cells")
    for _, r in df.iterrows():
        table.add_row(*(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    Console(width=160).print(table)
