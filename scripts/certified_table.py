"""Certified accuracy of every certifying zoo cell, and the sigma grid behind the default budgets.

    OMP_NUM_THREADS=1 python scripts/certified_table.py --n 64                 # committed CPU run
    python scripts/certified_table.py --cells clip-tiny:rs:fmnist-zeroshot --sigmas '' --n 8   # smoke

Each ``model:defense:task`` cell runs ``mmrobust run --attack none`` (certificates only, the same
code path as any cell; the attacked side is what ``mmrobust run --attack apgd-ce --norm l2`` adds) and
reads its ``certified.parquet``: randomized-smoothing certified accuracy (sound, clean-correct samples
only, abstentions counted as not certified) at the l2 radii ``--radii`` and along the 0..4 sigma
curve, the abstain rate, the smoothed clean accuracy (PREDICT), and for ``fs``/``fs-psm`` the FCSB
median at the same radii. ``--sigmas`` re-runs ``rs`` on clip-tiny / fmnist-zeroshot at each sigma
(with the preset's draws) to show the trade-off the default sigma is chosen from.

Writes ``results/bench/certified-<date>-<device>.json`` (command, commit, one row per run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from robustbench_mm.runner import provenance

CELLS = ",".join(f"{m}:{d}:{t}" for m in ("clip-tiny", "openclip-tiny") for t in ("fmnist-zeroshot", "fmnist-multimodal")
                 for d in ("rs", "fs", "fs-psm"))
MMROBUST = str(Path(sys.executable).with_name("mmrobust"))


def _at(rows: pd.DataFrame, quantity: str, radius: float, column: str = "mean") -> float | None:
    hit = rows[(rows.quantity == quantity) & ((rows.radius - radius).abs() < 1e-9)]
    return None if hit.empty else round(float(hit[column].iloc[0]), 4)


def run_cell(model: str, defense: str, task: str, n: int, radii: list[float], device: str, workdir: Path,
             label: str = "") -> dict[str, Any]:
    out = workdir / f"{model}-{Path(defense).stem}-{task}"
    cmd = [MMROBUST, "run", "--model", model, "--defense", defense, "--task", task, "--attack", "none",
           "--n", str(n), "--seed", "0", "--device", device, "--out", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    cert = pd.read_parquet(out / "certified.parquet")
    summary = pd.read_parquet(out / "asr.parquet").iloc[0]
    sigma = float(cert["sigma"].iloc[0]) if "sigma" in cert else None
    curve = cert[cert.quantity == "certified_accuracy"].sort_values("radius")
    return {
        "model": model, "defense": label or defense, "task": task, "n": n, "sigma": sigma,
        "clean_accuracy_smoothed": round(float(summary["clean_accuracy"]), 4),
        "certified_accuracy": {str(r): _at(cert, "certified_accuracy", r) for r in radii},
        "abstain_rate": _at(cert, "rs_abstain", 0.0),
        "median_rs_radius": _at(cert, "rs_radius", 0.0, "median"),
        "fcsb_median": {str(r): _at(cert, "fcsb", r, "median") for r in radii} if (cert.quantity == "fcsb").any() else None,
        "curve": [[round(float(r), 4), round(float(v), 4)] for r, v in zip(curve["radius"], curve["mean"])],
        "wall_s": round(wall, 1), "cell_git_commit": str(summary["git_commit"]),
    }


def sigma_preset(sigma: float, workdir: Path) -> Path:
    path = workdir / f"rs-sigma-{sigma:g}.yaml"
    path.write_text(f"name: rs-sigma-{sigma:g}\nbase: rs\nversion: 1\nparams:\n  sigma: {sigma}\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default=CELLS, help="model:defense:task, comma-separated")
    ap.add_argument("--sigmas", default="0.12,0.25,0.5", help="rs sigma grid on clip-tiny / fmnist-zeroshot ('' = none)")
    ap.add_argument("--radii", default="0.25,0.5,1.0")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()
    radii = [float(r) for r in args.radii.split(",")]
    commit, started = provenance.git_commit(), provenance.now()
    rows, grid = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for cell in filter(None, args.cells.split(",")):
            rows.append(run_cell(*cell.split(":"), args.n, radii, args.device, work))
            print(json.dumps({k: rows[-1][k] for k in ("model", "defense", "task", "certified_accuracy", "wall_s")}))
        for s in filter(None, args.sigmas.split(",")):
            grid.append(run_cell("clip-tiny", str(sigma_preset(float(s), work)), "fmnist-zeroshot", args.n, radii,
                                 args.device, work, label=f"rs sigma={s}"))
            print(json.dumps({k: grid[-1][k] for k in ("defense", "certified_accuracy", "abstain_rate", "wall_s")}))
    doc = {"device": args.device, "created_at": started, "git_commit": commit, "versions": provenance.versions(),
           "threads": os.environ.get("OMP_NUM_THREADS", ""),
           "command": "python scripts/certified_table.py " + " ".join(f"--{k} '{v}'" for k, v in vars(args).items()
                                                                   if k != "out"),
           "rows": rows, "sigma_grid": grid}
    provenance.write_bench_json(args.out, "certified", args.device, doc)


if __name__ == "__main__":
    main()
