"""Commands that train defenses and reproduce paper tables: ``train``, ``reproduce``."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer

from robustbench_mm.cli.options import DefenseOpt, DeviceOpt, Model, parse_eps
from robustbench_mm.cli.output import cell_line


def train(defense: DefenseOpt, model: Model,
          out: Annotated[Optional[str], typer.Option("--out", help="Weights directory (default: the cache, "
                                                     "~/.cache/mmrobust/defenses/<recipe hash>).")] = None,
          resume: Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from a checkpoint.")] = True,
          force: Annotated[bool, typer.Option("--force", help="Retrain even if finished weights exist.")] = False,
          eps: Annotated[Optional[str], typer.Option("--eps", help="Training budget (linf, pixel units, e.g. "
                                                     "4/255) of defenses that take one; default: the preset's.")] = None,
          device: DeviceOpt = None) -> None:
    """Train a defense's weights for a model (mmcoa, tecoa, fare, sim-clip, topk-rs, crmt, ...); seeded and resumable."""
    from robustbench_mm import api

    logging.getLogger("robustbench_mm").setLevel(logging.INFO)
    record = api.train_defense(defense, model, out=out, resume=resume, force=force, device=device,
                               eps=parse_eps(eps))
    verb = "reused" if record.get("reused") else "trained"
    metrics = record.get("metrics", {})
    shown = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float) and k.endswith("accuracy"))
    typer.echo(f"{defense} on {model}: {verb} -> {record.get('path', '')}")
    if shown:
        typer.echo(shown)


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
                           progress=lambda c, s: cell_line(c, s))
    typer.echo(result.markdown)
    typer.echo(f"-> {result.md_path}, {result.parquet_path}")
