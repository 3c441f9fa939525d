"""Benchmark manifests: the exact ``mmrobust benchmark`` commands behind a leaderboard release.

A manifest (``results/leaderboard/v1/manifest.yaml``) lists one command per entry; ``run`` executes
them in order (each store is resumable, so finished cells are skipped and a long build can span
several sessions) and ``stores`` names the stores ``mmrobust leaderboard`` reads. A grid preset
(``tasks/grids/nightly.yaml``) expands to the same kind of commands for the nightly run.

    python -m robustbench_mm.report.manifest run results/leaderboard/v1/manifest.yaml
    python -m robustbench_mm.report.manifest run MANIFEST --jobs 2 --cost results/bench/leaderboard-cost-<date>-cpu.json
    python -m robustbench_mm.report.manifest stores results/leaderboard/v1/manifest.yaml
    python -m robustbench_mm.report.manifest grid nightly --stores DIR     # print the commands
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from robustbench_mm.errors import ConfigError
from robustbench_mm.report.manifest_runner import option, run_all, write_cost

log = logging.getLogger(__name__)
L2_EPS = 0.5  # docs/leaderboard.md: the standard protocol's l2 budget, a radius of every certificate grid


def load(path: str | Path) -> list[list[str]]:
    """The manifest's commands as argv lists (``ConfigError`` for anything but benchmark commands)."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: cannot read the manifest ({exc})") from None
    commands = (data or {}).get("commands") if isinstance(data, dict) else None
    if not isinstance(commands, list) or not commands:
        raise ConfigError(f"{p}: needs a non-empty list `commands:` of `mmrobust benchmark ...` lines")
    out = []
    for i, line in enumerate(commands):
        argv = shlex.split(str(line))
        if argv[:2] != ["mmrobust", "benchmark"] or "--out" not in argv or "--model" not in argv:
            raise ConfigError(f"{p}: commands[{i}] must be `mmrobust benchmark --model M ... --out STORE`, "
                              f"got {line!r}")
        out.append(argv)
    return out


def stores(commands: list[list[str]]) -> list[str]:
    """The distinct ``--out`` stores, in manifest order."""
    return list(dict.fromkeys(option(c, "--out") for c in commands))


def run(commands: list[list[str]], mmrobust: str = "mmrobust", dry_run: bool = False, *, jobs: int = 1,
        cost: str | None = None, manifest: str = "") -> int:
    """Run every command (finished cells are skipped by the store; different stores side by side on
    ``jobs`` workers); with ``cost``, write the measured wall time per entry and in total there.
    Returns how many failed."""
    import time

    t0 = time.perf_counter()
    records = run_all(commands, mmrobust, jobs=jobs, dry_run=dry_run)
    if cost and not dry_run:
        print(f"cost: {write_cost(cost, manifest, records, jobs, time.perf_counter() - t0)}", file=sys.stderr)
    return sum(1 for r in records if r["rc"] != 0)


def from_grid(preset: str, store: str, device: str | None = None) -> list[list[str]]:
    """Benchmark commands for a grid preset's compatible model x defense x task triples: linf at the
    grid's eps (8/255 if unset), plus l2 ``L2_EPS`` for randomized (smoothing) defenses."""
    from robustbench_mm.runner.grid import plan_grid
    from robustbench_mm.presets import load_grid
    from robustbench_mm.runner.resolve import CellSpec

    data = load_grid(preset)
    n, eps = str(data.get("n", 200)), str(data.get("eps", "8/255"))
    cells = plan_grid(None, preset, CellSpec(model="", attack="none"))
    triples: dict[tuple[str, str, str], Any] = {}
    for c in cells:
        triples.setdefault((c.spec.model, c.defense.name, c.task.name), c.defense)
    extra = ["--device", device] if device else []
    out = []
    for (model, defense, task), d in triples.items():
        threats = [("linf", eps)] + ([("l2", str(L2_EPS))] if getattr(d, "randomized", False) else [])
        for norm, e in threats:
            out.append(["mmrobust", "benchmark", "--model", model, "--defense", defense, "--task", task,
                        "--norm", norm, "--eps", e, "--n", n, *extra, "--out", store])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m robustbench_mm.report.manifest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "stores", "print"):
        s = sub.add_parser(name)
        s.add_argument("manifest")
        s.add_argument("--dry-run", action="store_true")
        s.add_argument("--existing", action="store_true",
                       help="stores: only those already on disk (a partial build, with leaderboard --carry)")
        s.add_argument("--jobs", type=int, default=1, help="run: local workers (entries of one store run in turn)")
        s.add_argument("--cost", help="run: write the measured wall time per entry and in total to this JSON file")
    g = sub.add_parser("grid")
    g.add_argument("preset")
    g.add_argument("--stores", required=True)
    g.add_argument("--device")
    g.add_argument("--run", action="store_true", help="run the commands instead of printing them")
    args = ap.parse_args(argv)
    mmrobust = os.environ.get("MMROBUST", "mmrobust")
    try:
        if args.cmd == "grid":
            commands = from_grid(args.preset, args.stores, args.device)
            if args.run:
                return 1 if run(commands, mmrobust) else 0
        else:
            commands = load(args.manifest)
        if args.cmd == "run":
            return 1 if run(commands, mmrobust, args.dry_run, jobs=args.jobs, cost=args.cost,
                            manifest=args.manifest) else 0
        lines = stores(commands) if args.cmd == "stores" else [shlex.join(c) for c in commands]
        if args.cmd == "stores" and args.existing:
            lines = [s for s in lines if Path(s).is_dir()]
        print("\n".join(lines))
        return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
