"""The ``mmrobust`` command line. Thin: parse, build specs, call ``api``; heavy imports stay inside."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Annotated, Any, Optional

import typer

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Adversarial robustness benchmark for "
                  "multimodal models (CLIP, LLaVA, BLIP-2).", context_settings=HELP_OPTIONS)
store_app = typer.Typer(no_args_is_help=True, help="Check or repair a result store.", context_settings=HELP_OPTIONS)
app.add_typer(store_app, name="store")

STATE = {"debug": False}
KINDS = ("models", "attacks", "defenses", "tasks", "grids")


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        try:
            version = metadata.version("mmrobust")
        except metadata.PackageNotFoundError:
            version = "unknown (not installed)"
        typer.echo(f"mmrobust {version}")
        raise typer.Exit(0)


@app.callback()
def main_options(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors (also accepted "
                                                     "after the subcommand).")] = False,
                 version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                       help="Print the installed version and exit.")] = False) -> None:
    STATE["debug"] = debug or STATE["debug"]


def _eps(raw: Optional[str]) -> Optional[float]:
    if raw is None:
        return None
    from robustbench_mm.presets import parse_number

    return parse_number(raw, "--eps")


def _spec(model: str, attack: str, defense: str, task: Optional[str], **kw: Any) -> Any:
    from robustbench_mm.runner.resolve import CellSpec

    kw["eps"] = _eps(kw.get("eps"))
    return CellSpec(model=model, attack=attack, defense=defense, task=task, **kw)


def _progress(total: int, label: str) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   transient=True, disable=not sys.stderr.isatty())
    return bar


def _reporter(label: str, total: int) -> Any:
    """Samples progress with the running attack member and an ETA: a bar on a terminal, a line on
    stderr every few seconds otherwise (batch jobs)."""
    from robustbench_mm.cli_progress import make_reporter

    return make_reporter(label, total)


Model = Annotated[str, typer.Option("--model", help="Registered name (`mmrobust list models`), family alias (clip, "
                                    "llava, blip2: the real model if cached, else the bundled tiny one), a local "
                                    "directory or a Hugging Face id owner/name (hf-hub:owner/name for open_clip).")]
AttackOpt = Annotated[str, typer.Option("--attack", help="Attack preset name (`mmrobust list attacks`) or YAML path; "
                                        "'none' = clean accuracy only.")]
DefenseOpt = Annotated[str, typer.Option("--defense", help="Defense preset name (`mmrobust list defenses`) or YAML "
                                         "path; 'none' = undefended.")]
TaskOpt = Annotated[Optional[str], typer.Option("--task", help="Task preset (`mmrobust list tasks`); default: "
                                                "fmnist-zeroshot for CLIP, fmnist-vqa for LLaVA/BLIP-2.")]
EpsOpt = Annotated[Optional[str], typer.Option("--eps", help="Budget in [0,1] pixel units, e.g. 4/255; default: the "
                                               "attack preset's (pgd: 8/255).")]
NormOpt = Annotated[Optional[str], typer.Option("--norm", help="linf or l2; default: the attack preset's (pgd: linf).")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Attack iterations; default: the attack preset's "
                                                 "(pgd: 10).")]
NOpt = Annotated[Optional[int], typer.Option("--n", help="Number of evaluation samples, drawn with --seed from the "
                                             "task's split.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the sample choice and the attack's randomness.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Samples attacked together (does not change results; "
                                       "halved automatically on out-of-memory).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda or cuda:N; default: cuda if available, "
                                                  "else cpu.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Attack search precision, fp32 or bf16; verdicts are always "
                                       "fp32 (see --load-dtype for the weights).")]
LoadDtypeOpt = Annotated[str, typer.Option("--load-dtype", help="Precision the weights load in: fp32, fp16 or bf16 "
                                           "(recorded with the cell; not fp32 changes the cell id).")]
RevisionOpt = Annotated[Optional[str], typer.Option("--revision", help="Hub branch, tag or commit of a Hugging Face "
                                                    "id; default: main as cached (the resolved commit is recorded).")]
DeviceMapOpt = Annotated[Optional[str], typer.Option("--device-map", help="'auto': let accelerate spread a large "
                                                     "model (7B+) over the GPUs and CPU; default: whole model on "
                                                     "--device.")]
OutOpt = Annotated[str, typer.Option("--out", help="Result store directory (created if new).")]
PickleOpt = Annotated[bool, typer.Option("--allow-pickle", help="Allow pickle checkpoints (.bin/.pt): runs code.")]
RemoteOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow Hugging Face remote code.")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the vision path and LM for the attack loop.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON instead of a table.")]


@app.command()
def run(model: Model, attack: AttackOpt = "pgd", defense: DefenseOpt = "none", task: TaskOpt = None,
        eps: EpsOpt = None, norm: NormOpt = None, steps: StepsOpt = None, n: NOpt = 64, seed: SeedOpt = 0,
        batch_size: BatchOpt = 64, device: DeviceOpt = None, dtype: DtypeOpt = "fp32",
        out: OutOpt = "results/runs/default",
        force: Annotated[bool, typer.Option("--force", help="Recompute even if the store has the cell.")] = False,
        certify: Annotated[Optional[bool], typer.Option("--certify/--no-certify", help="Compute the defense's "
                                                        "certified bounds; default: on for defenses that certify "
                                                        "(fs, fs-psm).")] = None,
        allow_pickle: PickleOpt = False, trust_remote_code: RemoteOpt = False, compile: CompileOpt = False,
        load_dtype: LoadDtypeOpt = "fp32", revision: RevisionOpt = None, device_map: DeviceMapOpt = None) -> None:
    """Run one cell (model x attack x defense x task) and write its rows to the store."""
    from robustbench_mm import api

    spec = _spec(model, attack, defense, task, eps=eps, norm=norm, steps=steps, n=n, seed=seed,
                 batch_size=batch_size, device=device, dtype=dtype, certify=certify, allow_pickle=allow_pickle,
                 trust_remote_code=trust_remote_code, compile=compile, load_dtype=load_dtype, revision=revision,
                 device_map=device_map)
    cell = api.resolve_cell(spec)  # every check before any weights load or the store is touched
    total = cell.spec.n or 0
    with _reporter(f"{cell.entry.name} / {cell.attack.name} / {cell.defense.name}", total) as reporter:
        summary = api.run_cell(cell, out=out, force=force, progress=reporter.advance)
    _print_summary(summary, out)


@app.command()
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
        allow_pickle: PickleOpt = False, trust_remote_code: RemoteOpt = False) -> None:
    """Robust accuracy under the standard, versioned protocol: one cell and one line per threat model."""
    from robustbench_mm import benchmarking

    protocol, chosen, specs = benchmarking.plan(
        model, defense=defense, task=task, norm=norm, eps=_eps(eps), version=version, n=n, seed=seed,
        batch_size=batch_size, device=device, dtype=dtype, verdict_draws=verdict_draws,
        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    picked = f"version {chosen}" + (" (auto)" if version == "auto" else "")
    typer.echo(f"benchmark: protocol {protocol.id}, {picked}, {len(specs)} threat model(s) -> {out}", err=True)
    from robustbench_mm import api

    ran = api.resolve_cell(specs[0]).entry.name  # the model actually run (an alias may fall back to the zoo)
    label = f"{ran} | {defense}"
    with _reporter(f"{ran} / {protocol.id} / {defense}", n * len(specs)) as reporter:
        benchmarking.run(specs, protocol, chosen, out=out, force=force, progress=reporter.advance,
                         on_result=lambda r: typer.echo(r.line(label)))


@app.command()
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
         out: OutOpt = "results/runs/default",
         force: Annotated[bool, typer.Option("--force", help="Recompute cells the store already has.")] = False,
         allow_pickle: PickleOpt = False, trust_remote_code: RemoteOpt = False, compile: CompileOpt = False,
         load_dtype: LoadDtypeOpt = "fp32", revision: RevisionOpt = None, device_map: DeviceMapOpt = None) -> None:
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
    spec = _spec("", "pgd", "none", None, eps=eps, norm=norm, steps=steps, n=n, seed=seed, batch_size=batch_size,
                 device=device, dtype=dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                 compile=compile, load_dtype=load_dtype, revision=revision, device_map=device_map)
    adhoc = None if preset else GridSpec(split(models or ""), split(attacks), split(defenses),
                                         split(tasks) if tasks else (None,))
    cells = api.plan_grid(adhoc, preset, spec)  # every cell checked before the first runs
    typer.echo(f"grid: {len(cells)} cells -> {out}", err=True)
    total = sum(int(c.spec.n or 0) for c in cells)
    with _reporter(f"grid ({len(cells)} cells)", total) as reporter:
        summaries = api.run_grid(cells, out=out, force=force, executor=executor, address=address,
                                 on_cell=lambda c, s: _cell_line(c, s), progress=reporter.advance)
    failed = sum(s.status == "failed" for s in summaries)
    typer.echo(f"done: {len(summaries) - failed} ok/skipped, {failed} failed; store {out}")


def _cell_line(cell: Any, summary: Any) -> None:
    r = summary.row
    verb = "skipped (already in store)" if summary.status == "skipped" else summary.status
    typer.echo(f"{cell.entry.name:14s} {cell.attack.name:10s} {cell.defense.name:8s} {cell.task.name:16s} "
               f"{verb}: clean {r.get('clean_accuracy', float('nan')):.3f} "
               f"robust {r.get('robust_accuracy', float('nan')):.3f} asr {r.get('asr', float('nan')):.3f}")


def _print_summary(summary: Any, out: str) -> None:
    r = summary.row
    if summary.status == "skipped":
        typer.echo(f"cell {summary.cell_id} already in {out}; skipped (use --force to recompute)")
    elif summary.status == "failed":
        typer.echo(f"cell {summary.cell_id} FAILED: {r['error']}")
        raise typer.Exit(1)
    typer.echo(f"{r['model']} | {r['attack']} ({r['norm']} eps={r['eps']:.4f} steps={r['steps']}) | "
               f"{r['defense']} | {r['task']} | n={r['n']}")
    typer.echo(f"clean {r['clean_accuracy']:.3f}  robust {r['robust_accuracy']:.3f}  "
               f"ASR {r['asr']:.3f} [{r['asr_low']:.3f}, {r['asr_high']:.3f}]  "
               f"max_linf {r['max_linf']:.4f}  {r['samples_per_s']:.1f} samples/s")
    typer.echo(f"-> {out}/asr.parquet, {out}/samples.parquet (cell {summary.cell_id})")


@app.command("list")
def list_cmd(kind: Annotated[str, typer.Argument(help="models, attacks, defenses, tasks or grids")],
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

    cols = {"models": ["name", "family", "available", "source"], "grids": ["name", "cells", "description"]}.get(
        kind, ["name", "impl", "description"])
    table = Table(*cols)
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in cols))
    Console().print(table)


@app.command()
def show(out: Annotated[str, typer.Argument(help="Result store directory.")] = "results/runs/default",
         as_json: Annotated[bool, typer.Option("--json", help="Cells as a JSON array (eps as 8/255).")] = False,
         as_csv: Annotated[bool, typer.Option("--csv", help="Cells as CSV (eps as 8/255).")] = False,
         gallery: Annotated[Optional[str], typer.Option("--gallery", help="Write the cells' gallery grids "
                                                        "(clean | adversarial | perturbation) to OUT.png.")] = None
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
    df = showmod.cells(api.show(out))
    if as_json:
        typer.echo(showmod.to_json(df))
        return
    if as_csv:
        typer.echo(showmod.to_csv(df), nl=False)
        return
    if gallery:
        return
    from rich.console import Console
    from rich.table import Table

    cols = ["model", "attack", "defense", "task", "norm", "eps", "n", "clean_accuracy", "robust_accuracy", "asr",
            "status"]
    table = Table(*cols, title=f"{out}: {len(df)} cells")
    for _, r in df.iterrows():
        table.add_row(*(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols))
    Console(width=160).print(table)


@app.command()
def train(defense: DefenseOpt, model: Model,
          out: Annotated[Optional[str], typer.Option("--out", help="Weights directory (default: the cache, "
                                                     "~/.cache/mmrobust/defenses/<recipe hash>).")] = None,
          resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from a checkpoint.")] = True,
          force: Annotated[bool, typer.Option("--force", help="Retrain even if finished weights exist.")] = False,
          device: DeviceOpt = None) -> None:
    """Train a defense's weights for a model (mmcoa, tecoa, topk-rs, crmt, ...); seeded and resumable."""
    from robustbench_mm import api

    logging.getLogger("robustbench_mm").setLevel(logging.INFO)
    record = api.train_defense(defense, model, out=out, resume=resume, force=force, device=device)
    verb = "reused" if record.get("reused") else "trained"
    metrics = record.get("metrics", {})
    shown = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float) and k.endswith("accuracy"))
    typer.echo(f"{defense} on {model}: {verb} -> {record.get('path', '')}")
    if shown:
        typer.echo(shown)


@app.command()
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

    results = api.sanity(model, defense, n=n or 64, task=task, eps=_eps(eps), steps=steps, seed=seed, device=device,
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


@app.command()
def validate() -> None:
    """Build every preset (attacks, defenses, tasks, grids); exits 2 on the first invalid one."""
    from robustbench_mm import api

    results = api.validate()
    typer.echo(f"{len(results)} presets valid")


@store_app.command("check")
def store_check(out: Annotated[str, typer.Argument(help="Result store directory.")]) -> None:
    """List damaged files in a store; exit 1 if any."""
    from robustbench_mm.runner.store import ResultStore

    problems = ResultStore(out).check()
    for p in problems:
        typer.echo(p)
    typer.echo(f"{len(problems)} problems in {out}")
    if problems:
        raise typer.Exit(1)


@store_app.command("repair")
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


@app.command()
def leaderboard(run_dirs: Annotated[Optional[list[str]], typer.Argument(
                    help="Protocol stores (mmrobust benchmark --out).")] = None,
                out: Annotated[str, typer.Option("--out", help="Release folder.")] = "results/leaderboard/v1",
                carry: Annotated[Optional[str], typer.Option(
                    "--carry", help="An earlier release folder: keep its entries that no store holds (their "
                                    "rows, pages and images as they were; ranks recomputed).")] = None,
                baseline: Annotated[Optional[str], typer.Option(
                    "--baseline", help="A release's entries.parquet: print what changed; exit 1 on a "
                                       "robust accuracy outside its 95% interval.")] = None) -> None:
    """Build the ranked leaderboard release (entries.parquet, index.html, detail pages) from protocol stores."""
    from robustbench_mm import api

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


@app.command()
def reproduce(spec: Annotated[Optional[str], typer.Argument(help="Paper spec (tasks/papers/) or YAML path.")] = None,
              list_specs: Annotated[bool, typer.Option("--list", help="List the paper specs.")] = False,
              zoo: Annotated[bool, typer.Option("--zoo", help="Same protocol on the bundled tiny models.")] = False,
              n: Annotated[Optional[int], typer.Option("--n", help="Samples per cell; default: the spec's.")] = None,
              device: DeviceOpt = None,
              out: Annotated[str, typer.Option("--out", help="Results folder (writes papers/<spec>.md).")] = "results"
              ) -> None:
    """Reproduce a paper table: run its cells and print ours vs the published values."""
    from robustbench_mm import api
    from robustbench_mm.errors import ConfigError

    if list_specs or not spec:
        if spec:
            raise ConfigError("give either --list or SPEC, not both")
        for d in api.reproduce_list():
            missing = f"; weights missing: {', '.join(d['missing_weights'])}" if d["missing_weights"] else ""
            typer.echo(f"{d['name']:22s} {d['defense']:10s} {d['cells']:2d} cells, {d['references']:2d} references "
                       f"({d['tags']}) - {d['title']}{missing}")
        return
    result = api.reproduce(spec, zoo=zoo, out=out, n=n, device=device,
                           progress=lambda c, s: _cell_line(c, s))
    typer.echo(result.markdown)
    typer.echo(f"-> {result.md_path}, {result.parquet_path}")


def _click_classes() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(exit, abort, usage-error) exception classes of typer's click (vendored or not)."""
    exits: list[type] = [typer.Exit]
    aborts: list[type] = [typer.Abort]
    usage: list[type] = []
    try:
        from typer._click import exceptions as vendored  # typer >= 0.20 vendors click

        usage.append(vendored.UsageError)
    except ImportError:
        pass
    try:
        import click

        exits.append(click.exceptions.Exit)
        aborts.append(click.exceptions.Abort)
        usage.append(click.UsageError)
    except ImportError:
        pass
    return tuple(exits), tuple(aborts), tuple(usage)


def main() -> None:
    """Console entry point: user mistakes print one line and exit 2; ``--debug`` shows tracebacks."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    debug = "--debug" in sys.argv[1:]
    if debug:  # accepted anywhere on the line, also after the subcommand
        STATE["debug"] = True
        sys.argv = [sys.argv[0]] + [a for a in sys.argv[1:] if a != "--debug"]
    exits, aborts, usage = _click_classes()
    try:
        # without standalone mode click *returns* the code of a ``typer.Exit(n)`` instead of raising
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except exits as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except aborts:
        sys.exit(130)
    except usage as exc:
        ctx = getattr(exc, "ctx", None)
        where = f"mmrobust {ctx.command.name} --help" if ctx is not None and ctx.command else "mmrobust --help"
        typer.echo(f"error: {exc.format_message()} (see `{where}`)", err=True)
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001
        from robustbench_mm.errors import MMRobustError

        if isinstance(exc, MMRobustError) and not debug:
            typer.echo(f"error: {exc}", err=True)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
