"""Render the package's layers (the import-linter contract in pyproject.toml) for the README.

    python scripts/readme_layers.py           # print the block
    python scripts/readme_layers.py --write   # replace the block between the README's markers

Each line is one layer, top first, with the first line of each part's docstring; parts on one line
(``a | b``) are siblings that must not import each other. tests/test_layers.py fails when the
README's block differs from this output, so the picture cannot drift from the contract.
"""

from __future__ import annotations

import argparse
import ast
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- layers:begin (scripts/readme_layers.py) -->", "<!-- layers:end -->"


def layers(pyproject: Path = ROOT / "pyproject.toml") -> list[list[str]]:
    """The layers contract's layers, top first, each a list of sibling parts."""
    config = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["type"] == "layers")
    return [[p.strip() for p in layer.split("|")] for layer in contract["layers"]]


def summary(part: str, package: Path = ROOT / "robustbench_mm") -> str:
    """First line of the part's docstring (its ``__init__.py`` for a folder)."""
    path = package / part / "__init__.py" if (package / part).is_dir() else package / f"{part}.py"
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc.strip().splitlines()[0].rstrip(".") if doc.strip() else ""


def render() -> str:
    lines = ["    robustbench_mm, top layer first (a layer imports only the layers below it):"]
    for k, layer in enumerate(layers(), 1):
        for j, part in enumerate(layer):
            name = part + ("/" if (ROOT / "robustbench_mm" / part).is_dir() else ".py")
            lead = f"{k:2d}  " if j == 0 else "  | "
            lines.append(f"    {lead}{name:16s}{summary(part)}")
    return "\n".join(lines)


def readme_block(readme: Path = ROOT / "README.md") -> str | None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def write(readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n\n{render()}\n\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="update README.md in place")
    args = ap.parse_args(argv)
    if args.write:
        write()
    else:
        print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
