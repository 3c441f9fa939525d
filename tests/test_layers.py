"""The package's layers contract (pyproject.toml, import-linter): it holds today, it covers every
top-level part, it fails on an upward import, and the README's picture of it cannot drift."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "robustbench_mm"
MAX_LINES = 400


def _readme_layers():  # scripts/ is not a package: load the generator by path
    spec = importlib.util.spec_from_file_location("readme_layers", ROOT / "scripts" / "readme_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with ``root``'s pyproject.toml, analysing ``root``'s copy of the package."""
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def _top_level_parts() -> set[str]:
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    return modules | packages


def test_contracts_hold() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_layers_cover_every_top_level_part() -> None:
    listed = {part for layer in _readme_layers().layers() for part in layer}
    assert listed == _top_level_parts(), "add the new part to [tool.importlinter] layers in pyproject.toml"


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """The deliberate mistake the contract exists for: the runner reaching up into the report."""
    shutil.copytree(PACKAGE, tmp_path / "robustbench_mm", ignore=shutil.ignore_patterns("__pycache__", "zoo",
                                                                                         "weights", "data"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    store = tmp_path / "robustbench_mm" / "runner" / "store.py"
    store.write_text(store.read_text() + "\nfrom robustbench_mm.report import entries  # noqa: E402,F401\n")
    result = _lint(tmp_path)
    assert result.returncode == 1, result.stdout[-2000:]
    assert "robustbench_mm.runner.store -> robustbench_mm.report.entries" in result.stdout


def test_a_cycle_inside_a_package_breaks_the_contract(tmp_path: Path) -> None:
    shutil.copytree(PACKAGE, tmp_path / "robustbench_mm", ignore=shutil.ignore_patterns("__pycache__", "zoo",
                                                                                         "weights", "data"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    protocol = tmp_path / "robustbench_mm" / "runner" / "protocol.py"
    protocol.write_text(protocol.read_text() + "\nfrom robustbench_mm.runner import resolve  # noqa: E402,F401\n")
    result = _lint(tmp_path)
    assert result.returncode == 1
    assert "No cycles are allowed in robustbench_mm.runner" in result.stdout


def test_readme_shows_the_contract() -> None:
    block = _readme_layers().readme_block()
    assert block is not None, "README.md lost its layers markers"
    assert block == _readme_layers().render(), "run: python scripts/readme_layers.py --write"


def test_no_file_over_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split by responsibility: {long}"
