"""How a ``ReleaseComparison`` is shown: a plain-text table (stdout), JSON rows (``--json``) and a
static page ``compare.html`` + ``compare.md`` (``--out DIR``) in the release pages' styling
(``release.environment`` filters, ``base.html.j2``, the same sortable tables and CSP)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from robustbench_mm.errors import StoreError
from robustbench_mm.report.release import page_globals, environment
from robustbench_mm.report.release_compare import EntryChange, ReleaseComparison

COLUMNS = ("change", "entry", "robust before [95%]", "robust after [95%]", "delta", "rank", "protocol")


def percent(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * float(x):.1f}%"


def robust_text(values: dict[str, Any] | None) -> str:
    """``84.0% [78.3–88.4]``; ``–`` for a side where the entry is absent."""
    if values is None:
        return "–"
    low, high = percent(values["robust_low"]).rstrip("%"), percent(values["robust_high"]).rstrip("%")
    return f"{percent(values['robust_accuracy'])} [{low}–{high}]"


def rank_text(c: EntryChange) -> str:
    """``3 -> 1 (+2)``: places moved up in brackets (0: unchanged)."""
    before = str(int(c.before["rank"])) if c.before is not None else "–"
    after = str(int(c.after["rank"])) if c.after is not None else "–"
    moved = f" ({c.rank_change:+d})" if c.rank_change else (" (0)" if c.rank_change == 0 else "")
    return f"{before} -> {after}{moved}"


def protocol_text(c: EntryChange) -> str:
    ids = [str(v["protocol"]) for v in (c.before, c.after) if v is not None]
    return ids[0] if len(set(ids)) == 1 else " -> ".join(ids)


def delta_text(c: EntryChange) -> str:
    return "" if c.delta is None or math.isnan(c.delta) else f"{100 * c.delta:+.1f} pp"


def cells(c: EntryChange) -> tuple[str, ...]:
    return (c.change, c.label, robust_text(c.before), robust_text(c.after), delta_text(c), rank_text(c),
            protocol_text(c))


def text(result: ReleaseComparison) -> str:
    """The table, then one block per entry whose protocol changed and a line per unexplained move."""
    rows = [COLUMNS] + [cells(c) for c in result.changes]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [f"compare {result.release_a} -> {result.release_b}: {result.summary()}"]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    moved = [c for c in result.changes if c.explanation]
    if moved:
        lines += ["", "protocol changes (what moved these entries):"]
        for c in moved:
            lines.append(f"  {c.label}: {protocol_text(c)} ({c.change})")
            lines += [f"    {step}" for step in c.explanation]
    unexplained = result.of("unexplained")
    if unexplained:
        lines += ["", "unexplained (outside the old 95% interval, same protocol: code, weights or data changed):"]
        for c in unexplained:
            assert c.after is not None  # an unexplained entry is in both releases
            lines.append(f"  {c.label}: {robust_text(c.before)} -> {percent(c.after['robust_accuracy'])} "
                         f"under {protocol_text(c)}")
    return "\n".join(lines)


def to_json(result: ReleaseComparison) -> str:
    return json.dumps([c.row() for c in result.changes], indent=2)


def write_page(result: ReleaseComparison, out: str | Path) -> list[Path]:
    """``out/compare.html`` and ``out/compare.md``; returns their paths."""
    root = Path(out)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot write --out {root} ({exc.strerror}); choose a writable folder") from None
    env = environment()
    rows = [{"c": c, "cells": dict(zip(COLUMNS, cells(c))), "delta": c.delta} for c in result.changes]
    context = {**page_globals(), "result": result, "rows": rows, "summary": result.summary(),
               "explained": [c for c in result.changes if c.explanation], "unexplained": result.of("unexplained")}
    paths = [root / "compare.html", root / "compare.md"]
    for path in paths:
        path.write_text(env.get_template(f"{path.name}.j2").render(**context))
    return paths
