"""The ``mmrobust`` command line. Thin: parse, build specs, call ``api``; heavy imports stay inside."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Annotated, Any, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Adversarial robustness benchmark for "
                  "multimodal models (CLIP, LLaVA, BLIP-2).")
store_app = typer.Typer(no_args_is_help=True, help="Check or repair a result store.")
app.add_typer(store_app, name="store")

STATE = {"debug": False}
KINDS = ("models", "attacks", "defenses", "tasks")


@app.callback()
def main_options(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    STATE["debug"] = debug


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


Model = Annotated[str, typer.Option("--model", help="Model name, family alias (clip, llava, blip2) or local dir.")]
AttackOpt = Annotated[str, typer.Option("--attack", help="Attack preset name or YAML path; 'none' = clean.")]
DefenseOpt = Annotated[str, typer.Option("--defense", help="Defense preset name or YAML path; 'none'.")]
TaskOpt = Annotated[Optional[str], typer.Option("--task", help="Task preset; default per model family.")]
EpsOpt = Annotated[Optional[str], typer.Option("--eps", help="Budget in [0,1] pixel units, e.g. 4/255.")]
NormOpt = Annotated[Optional[str], typer.Option("--norm", help="linf or l2.")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Attack steps.")]
NOpt = Annotated[Optional[int], typer.Option("--n", help="Number of evaluation samples.")]
SeedOpt = Annotated[int, typer.Option("--seed")]
BatchOpt = Annotated[int, typer.Option("--batch-size")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu or cuda (default: cuda if available).")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="fp32 or bf16 (attack search precision).")]
OutOpt = Annotated[str, typer.Option("--out", help="Result store directory.")]
PickleOpt = Annotated[bool, typer.Option("--allow-pickle", help="Allow pickle checkpoints (.bin/.pt): runs code.")]
RemoteOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow Hugging Face remote code.")]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the vision path and LM for the attack loop.")]


@app.command()
def run(model: Model, attack: AttackOpt = "pgd", defense: DefenseOpt = "none", task: TaskOpt = None,
        eps: EpsOpt = None, norm: NormOpt = None, steps: StepsOpt = None, n: NOpt = 64, seed: SeedOpt = 0,
        batch_size: BatchOpt = 64, device: DeviceOpt = None, dtype: DtypeOpt = "fp32",
        out: OutOpt = "results/runs/default",
        force: Annotated[bool, typer.Option("--force", help="Recompute even if the store has the cell.")] = False,
        certify: Annotated[Optional[bool], typer.Option("--certify/--no-certify")] = None,
        allow_pickle: PickleOpt = False, trust_remote_code: RemoteOpt = False, compile: CompileOpt = False) -> None:
    """Run one cell (model x attack x defense x task) and write its rows to the store."""
    from robustbench_mm import api

    spec = _spec(model, attack, defense, task, eps=eps, norm=norm, steps=steps, n=n, seed=seed,
                 batch_size=batch_size, device=device, dtype=dtype, certify=certify, allow_pickle=allow_pickle,
                 trust_remote_code=trust_remote_code, compile=compile)
    with _progress(1, "cell") as bar:
        job = bar.add_task(f"{model} / {attack} / {defense}", total=n)
        summary = api.run_cell(spec, out=out, force=force, progress=lambda k: bar.advance(job, k))
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
    label = f"{model} | {defense}"
    benchmarking.run(specs, protocol, chosen, out=out, force=force,
                     on_result=lambda r: typer.echo(r.line(label)))


@app.command()
def grid(preset: Annotated[Optional[str], typer.Option("--preset", help="Grid preset in tasks/grids/.")] = None,
         models: Annotated[Optional[str], typer.Option("--models", help="Comma list.")] = None,
         attacks: Annotated[str, typer.Option("--attacks", help="Comma list.")] = "pgd",
         defenses: Annotated[str, typer.Option("--defenses", help="Comma list.")] = "none",
         tasks: Annotated[Optional[str], typer.Option("--tasks", help="Comma list (default per family).")] = None,
         eps: EpsOpt = None, norm: NormOpt = None, steps: StepsOpt = None, n: NOpt = 64, seed: SeedOpt = 0,
         batch_size: BatchOpt = 64, device: DeviceOpt = None, dtype: DtypeOpt = "fp32",
         executor: Annotated[str, typer.Option("--executor", help="local or ray (one Ray task per cell).")] = "local",
         address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster address, e.g. auto.")] = None,
         out: OutOpt = "results/runs/default",
         force: Annotated[bool, typer.Option("--force")] = False,
         allow_pickle: PickleOpt = False, trust_remote_code: RemoteOpt = False, compile: CompileOpt = False) -> None:
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
                 compile=compile)
    adhoc = None if preset else GridSpec(split(models or ""), split(attacks), split(defenses),
                                         split(tasks) if tasks else (None,))
    cells = api.plan_grid(adhoc, preset, spec)
    typer.echo(f"grid: {len(cells)} cells -> {out}", err=True)
    with _progress(len(cells), "cells") as bar:
        job = bar.add_task("cells", total=len(cells))
        summaries = api.run_grid(cells, out=out, force=force, executor=executor, address=address,
                                 on_cell=lambda c, s: (bar.advance(job, 1), _cell_line(c, s)))
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
def list_cmd(kind: Annotated[str, typer.Argument(help="models, attacks, defenses or tasks")],
             as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List registered names."""
    from robustbench_mm import api
    from robustbench_mm.errors import ConfigError

    if kind not in KINDS:
        raise ConfigError(f"list {kind!r}: choose one of {', '.join(KINDS)}")
    rows = api.list_names(kind)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    cols = ["name", "family", "available", "source"] if kind == "models" else ["name", "impl", "description"]
    table = Table(*cols)
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in cols))
    Console().print(table)


@app.command()
def show(out: Annotated[str, typer.Argument(help="Result store directory.")] = "results/runs/default") -> None:
    """Pretty table of a store's asr.parquet."""
    from rich.console import Console
    from rich.table import Table

    from robustbench_mm import api

    df = api.show(out)
    if not df.empty:
        df = df.sort_values(["task", "model", "defense", "attack", "eps"]).reset_index(drop=True)
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
           as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Gradient-masking sanity checks (docs/checks.md); exits 1 if any fails."""
    from robustbench_mm import api

    results = api.sanity(model, defense, n=n or 64, task=task, eps=_eps(eps), steps=steps, seed=seed, device=device)
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
def store_check(out: Annotated[str, typer.Argument()]) -> None:
    """List damaged files in a store; exit 1 if any."""
    from robustbench_mm.runner.store import ResultStore

    problems = ResultStore(out).check()
    for p in problems:
        typer.echo(p)
    typer.echo(f"{len(problems)} problems in {out}")
    if problems:
        raise typer.Exit(1)


@store_app.command("repair")
def store_repair(out: Annotated[str, typer.Argument()]) -> None:
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
def leaderboard(run_dirs: Annotated[list[str], typer.Argument(help="Result stores to merge.")],
                out: Annotated[str, typer.Option("--out", help="Folder for leaderboard files.")] = "results",
                baseline: Annotated[Optional[str], typer.Option(
                    "--baseline", help="Previous leaderboard.parquet: print what changed; exit 1 on a "
                                       "regression beyond its 95% interval.")] = None) -> None:
    """Merge stores into OUT/leaderboard.parquet, leaderboard.md, index.html and plots/."""
    from robustbench_mm import api

    files, comparison = api.leaderboard(list(run_dirs), out=out, baseline=baseline)
    main_files = ", ".join(str(files[k]) for k in ("leaderboard.parquet", "leaderboard.md", "index.html"))
    typer.echo(f"leaderboard: {main_files}"
               f" (+{sum(k.startswith('plots/') for k in files)} plots)")
    if comparison is None:
        if baseline:
            typer.echo(f"no snapshot at {baseline}; nothing to compare")
        return
    typer.echo(f"since the snapshot: {comparison.summary()}")
    for _, c in comparison.changes.iterrows():
        if c["change"] not in ("same",):
            typer.echo(f"  {c['change']:15s} {c['task']}/{c['model']}/{c['defense']}/{c['attack']} "
                       f"eps={c['eps']:.4g}: {c['note']}")
    if comparison.regressions:
        typer.echo(f"error: {len(comparison.regressions)} regression(s) beyond the snapshot's 95% interval: "
                   + "; ".join(comparison.regressions), err=True)
        raise typer.Exit(1)


@app.command()
def reproduce(spec: Annotated[Optional[str], typer.Argument(help="Paper spec (tasks/papers/) or YAML path.")] = None,
              list_specs: Annotated[bool, typer.Option("--list", help="List the paper specs.")] = False,
              zoo: Annotated[bool, typer.Option("--zoo", help="Same protocol on the bundled tiny models.")] = False,
              n: NOpt = None, device: DeviceOpt = None,
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
    debug = "--debug" in sys.argv
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
