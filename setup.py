"""Build hook: the YAML presets (top-level attacks/, defenses/, tasks/) ship inside the package.

The top-level folders stay the one source of truth. A regular build (``pip install .``, a wheel,
an sdist built into a wheel) copies them into ``robustbench_mm/_presets/`` of the build; an
editable install skips the copy and ``robustbench_mm.presets.presets_root`` reads the checkout.
Everything else is configured in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PRESET_DIRS = ("attacks", "defenses", "tasks")


class BuildPyWithPresets(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        root = Path(__file__).resolve().parent
        target = Path(self.build_lib) / "robustbench_mm" / "_presets"
        for name in PRESET_DIRS:
            if not (root / name).is_dir():
                raise FileNotFoundError(f"preset folder {root / name} missing from the source tree")
            shutil.rmtree(target / name, ignore_errors=True)
            shutil.copytree(root / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithPresets})
