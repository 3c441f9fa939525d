"""Run a manifest's commands on local workers and record what each entry cost.

Entries that write the same store run one after the other (a store has one writer at a time);
different stores run side by side on ``jobs`` workers, each with ``cores // jobs`` torch threads (so
two workers on two cores do not oversubscribe them). With ``cost`` the wall time of every entry and
of the whole build is written as JSON beside the command that ran it, so the cost of a release is a
measured file, not a guess.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from robustbench_mm.errors import ConfigError


def option(argv: Sequence[str], name: str) -> str:
    """The value after ``name`` in a manifest command (``load`` checks every command has ``--out``)."""
    return argv[list(argv).index(name) + 1]


def by_store(commands: list[list[str]]) -> list[list[int]]:
    """Command positions grouped by their ``--out`` store, groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for k, argv in enumerate(commands):
        groups.setdefault(option(argv, "--out"), []).append(k)
    return list(groups.values())


def run_all(commands: list[list[str]], mmrobust: str = "mmrobust", *, jobs: int = 1,
            dry_run: bool = False) -> list[dict[str, Any]]:
    """Run every command; one record per command, in manifest order: ``command``, ``wall_s``, ``rc``."""
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs} must be a positive integer")
    records: list[dict[str, Any]] = [{} for _ in commands]
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:  # each worker's torch threads share the cores
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    say = threading.Lock()

    def one(k: int) -> None:
        argv = [mmrobust, *commands[k][1:]]
        with say:
            print(f"[{k + 1}/{len(commands)}] {shlex.join(argv)}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        rc = 0 if dry_run else subprocess.call(argv, env=env)
        wall = time.perf_counter() - t0
        records[k] = {"command": shlex.join(["mmrobust", *commands[k][1:]]), "wall_s": round(wall, 1), "rc": rc}
        if rc != 0:
            with say:
                print(f"[{k + 1}/{len(commands)}] exit {rc}; continuing", file=sys.stderr, flush=True)

    def group(ks: list[int]) -> None:
        for k in ks:
            one(k)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(group, by_store(commands)))
    return records


def write_cost(path: str | Path, manifest: str, records: list[dict[str, Any]], jobs: int, wall_s: float) -> Path:
    """The cost file: provenance, per-entry wall seconds and exit codes, and the build's total wall."""
    import json

    import torch

    from robustbench_mm.runner import provenance

    doc = {"manifest": manifest, "created_at": provenance.now(), "git_commit": provenance.git_commit(),
           "versions": provenance.versions(), "device": provenance.device_name(torch.device("cpu")),
           "cores": os.cpu_count(), "jobs": jobs,
           "command": f"python -m robustbench_mm.report.manifest run {manifest} --jobs {jobs} --cost {path}",
           "total_wall_s": round(wall_s, 1), "entries_wall_s": round(sum(r["wall_s"] for r in records), 1),
           "failed": sum(1 for r in records if r["rc"] != 0), "entries": records}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return out
