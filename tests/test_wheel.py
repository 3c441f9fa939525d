"""The package installs: a wheel built from the checkout carries the presets, and the installed
package lists and runs cells from a directory outside the checkout (no repository files around)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _source_copy(dest: Path) -> Path:
    """The files a fresh clone has (tracked + new, not ignored), so local build outputs cannot leak in."""
    git = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, text=True)
    if git.returncode != 0:  # not a git checkout (an unpacked sdist): everything but build outputs
        skip = shutil.ignore_patterns(".venv", ".git", "build", "dist", "results", "*.egg-info", "__pycache__", "_presets")
        shutil.copytree(ROOT, dest, ignore=skip)
        return dest
    listed = git.stdout.splitlines()
    for rel in listed:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    src = _source_copy(tmp_path / "src")
    dist = tmp_path / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(dist)], check=True,
                   cwd=tmp_path, timeout=300)
    wheel = next(dist.glob("mmrobust-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in ("attacks/pgd.yaml", "defenses/fs-psm.yaml", "tasks/fmnist-zeroshot.yaml", "tasks/grids/smoke.yaml"):
        assert f"robustbench_mm/_presets/{preset}" in names
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "2"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "robustbench_mm.cli", *args], capture_output=True, text=True,
                              cwd=away, env=env, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import robustbench_mm.presets as p; print(p.__file__); "
                            "print(p.presets_root())"], capture_output=True, text=True, cwd=away, env=env)
    module, root = where.stdout.split()
    assert module.startswith(str(site)) and root == str(site / "robustbench_mm" / "_presets")
    listed = cli("list", "attacks", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"pgd"' in listed.stdout and '"aa-white"' in listed.stdout
    ran = cli("run", "--model", "clip-tiny", "--n", "2", "--steps", "1", "--device", "cpu", "--out", "store")
    assert ran.returncode == 0, ran.stderr
    row = pd.read_parquet(away / "store" / "asr.parquet").iloc[0]
    assert row["model"] == "clip-tiny" and row["n"] == 2 and row["status"] == "ok"
    assert sorted(p.name for p in away.iterdir()) == ["store"]


def test_editable_checkout_reads_the_top_level_presets() -> None:
    from robustbench_mm.presets import presets_root

    # one source of truth: only builds get a copy (setup.py); a stale copy in the checkout would shadow edits
    assert not (ROOT / "robustbench_mm" / "_presets").exists()
    assert presets_root() == ROOT
