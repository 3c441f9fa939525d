"""Provenance recorded with every row: versions, git commit, device, time."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import torch


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    out = {}
    for pkg in ("mmrobust", "torch", "transformers", "open_clip_torch", "torchattacks", "datasets"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def versions_json() -> str:
    return json.dumps(versions(), sort_keys=True)


@lru_cache(maxsize=1)
def git_commit() -> str:
    """``<sha>`` or ``<sha>-dirty`` of the repo holding the package; ``unknown`` outside git."""
    repo = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_bench_json(out_dir: str | Path, name: str, device: str, doc: dict[str, object]) -> Path:
    """Write a benchmark script's result ``doc`` to ``OUT/<name>-<date>-<device>.json`` (the
    committed results/bench layout) and say where; returns the path."""
    path = Path(out_dir) / f"{name}-{dt.date.today().isoformat()}-{device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    print(f"wrote {path}")
    return path
