"""What the commands print: progress while cells run, one line per grid cell, a cell's summary."""

from __future__ import annotations

from typing import Any

import typer

from robustbench_mm.cli.progress import make_reporter


def progress_reporter(label: str, total: int) -> Any:
    """Samples progress with the running attack member and an ETA: a bar on a terminal, a line on
    stderr every few seconds otherwise (batch jobs)."""
    return make_reporter(label, total)


def cell_line(cell: Any, summary: Any) -> None:
    r = summary.row
    verb = "skipped (already in store)" if summary.status == "skipped" else summary.status
    typer.echo(f"{cell.entry.name:14s} {cell.attack.name:10s} {cell.defense.name:8s} {cell.task.name:16s} "
               f"{verb}: clean {r.get('clean_accuracy', float('nan')):.3f} "
               f"robust {r.get('robust_accuracy', float('nan')):.3f} asr {r.get('asr', float('nan')):.3f}")


def print_summary(summary: Any, out: str) -> None:
    r = summary.row
    if summary.status == "skipped":
        typer.echo(f"cell {summary.cell_id} already in {out}; skipped (use --force to recompute)")
    elif summary.status == "failed":
        typer.echo(f"cell {summary.cell_id} FAILED: {r['error']}")
        raise typer.Exit(1)
    model = f"{r['model']} (vision encoder {r['vision_encoder']})" if r.get("vision_encoder") else r["model"]
    typer.echo(f"{model} | {r['attack']} ({r['norm']} eps={r['eps']:.4f} steps={r['steps']}) | "
               f"{r['defense']} | {r['task']} | n={r['n']}")
    typer.echo(f"clean {r['clean_accuracy']:.3f}  robust {r['robust_accuracy']:.3f}  "
               f"ASR {r['asr']:.3f} [{r['asr_low']:.3f}, {r['asr_high']:.3f}]  "
               f"max_linf {r['max_linf']:.4f}  {r['samples_per_s']:.1f} samples/s")
    if "tr_r1_clean" in r:  # retrieval: Recall@K both ways (TR = image->text, IR = text->image)
        for d, name in (("tr", "image->text"), ("ir", "text->image")):
            clean = " ".join(f"R@{k} {r[f'{d}_r{k}_clean']:.3f}" for k in (1, 5, 10))
            adv = " ".join(f"R@{k} {r[f'{d}_r{k}_adv']:.3f}" for k in (1, 5, 10))
            typer.echo(f"{name}: clean {clean} | robust {adv} | R@1 ASR {r[f'{d}_asr']:.3f}")
    cert = r.get("certified_accuracy", float("nan"))
    if cert == cert:  # not NaN: a sound class certificate at the threat model's l2 radius
        typer.echo(f"certified {cert:.3f} at l2 {r['eps']:.4f} (sound; clean-correct samples only)")
    typer.echo(f"-> {out}/asr.parquet, {out}/samples.parquet (cell {summary.cell_id})")
