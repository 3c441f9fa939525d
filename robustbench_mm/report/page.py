"""Leaderboard files: ``leaderboard.md`` and a static, offline ``index.html``.

The page is one file: tables sortable by clicking a header (a small inline script), plots
embedded as base64 PNG, no network access (a Content-Security-Policy allows only data: images
and the one inline script, by hash). Every string that comes from a config, a model name or an
error is HTML-escaped; the CSP is a second fence should one ever slip through.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from robustbench_mm.report import plots
from robustbench_mm.report.bound_kind import label as bound_label
from robustbench_mm.report.leaderboard import Leaderboard

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute('data-sort'), y = b.cells[col].getAttribute('data-sort');
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; } th[aria-sort=descending]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.failed { color: #b00; } code { font-size: 11px; } img.plot { margin: .5em 1em .5em 0; border: 1px solid #ddd; }
"""

Column = tuple[str, str, Callable[[pd.Series], Any]]  # header, column, display function


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt(x: Any, digits: int = 3) -> str:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return "" if x is None else str(x)
    return "" if math.isnan(f) else f"{f:.{digits}f}"


def fmt_eps(eps: Any, norm: Any) -> str:
    """``8/255`` for l_inf budgets on the 1/255 grid, a decimal otherwise."""
    try:
        e = float(eps)
    except (TypeError, ValueError):
        return ""
    if math.isnan(e):
        return ""
    k = e * 255
    if norm == "linf" and e > 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{e:.4g}"


def _short_config(cfg: Any) -> str:
    try:
        d = json.loads(cfg)
    except (TypeError, ValueError):
        return str(cfg or "")
    params = ", ".join(f"{k}={v}" for k, v in sorted((d.get("params") or {}).items()))
    return f"{d.get('name', '')} v{d.get('version', '')} ({params})" if d else ""


CELL_COLS: list[Column] = [
    ("model", "model", lambda r: r["model"]),
    ("weights (revision)", "model_revision", lambda r: str(r["model_revision"] or "")[:16]),
    ("defense", "defense", lambda r: r["defense"]),
    ("defense config", "defense_config", lambda r: _short_config(r["defense_config"])),
    ("attack", "attack", lambda r: r["attack"]),
    ("norm", "norm", lambda r: r["norm"]),
    ("eps", "eps", lambda r: fmt_eps(r["eps"], r["norm"])),
    ("steps", "steps", lambda r: r["steps"]),
    ("n", "n", lambda r: r["n"]),
    ("seed", "seed", lambda r: r["seed"]),
    ("clean acc", "clean_accuracy", lambda r: fmt(r["clean_accuracy"])),
    ("robust acc", "robust_accuracy", lambda r: fmt(r["robust_accuracy"])),
    ("ASR", "asr", lambda r: fmt(r["asr"])),
    ("ASR 95% CI", "asr_low", lambda r: f"[{fmt(r['asr_low'])}, {fmt(r['asr_high'])}]"),
    ("commit", "git_commit", lambda r: str(r["git_commit"] or "")[:12]),
    ("status", "status", lambda r: r["status"] if r["status"] == "ok" else f"{r['status']}: {r['error']}"),
]
WORST_COLS: list[Column] = [
    ("model", "model", lambda r: r["model"]), ("defense", "defense", lambda r: r["defense"]),
    ("norm", "norm", lambda r: r["norm"]), ("eps", "eps", lambda r: fmt_eps(r["eps"], r["norm"])),
    ("n", "n", lambda r: r["n"]), ("seed", "seed", lambda r: r["seed"]),
    ("attacks", "attacks", lambda r: r["attacks"]),
    ("clean acc", "clean_accuracy", lambda r: fmt(r["clean_accuracy"])),
    ("worst robust acc", "worst_robust_accuracy", lambda r: fmt(r["worst_robust_accuracy"])),
    ("worst ASR", "worst_asr", lambda r: fmt(r["worst_asr"])),
    ("95% CI", "worst_asr_low", lambda r: f"[{fmt(r['worst_asr_low'])}, {fmt(r['worst_asr_high'])}]"),
]
CERT_COLS: list[Column] = [
    ("model", "model", lambda r: r["model"]), ("defense", "defense", lambda r: r["defense"]),
    ("defense config", "defense_config", lambda r: _short_config(r["defense_config"])),
    ("quantity", "quantity", lambda r: bound_label(r["quantity"], r.get("bound_kind", "estimate"))),
    ("bound", "bound_kind", lambda r: r.get("bound_kind", "estimate")),
    ("l2 radius", "radius", lambda r: fmt(r["radius"], 4)),
    ("mean", "mean", lambda r: fmt(r["mean"])), ("q05", "q05", lambda r: fmt(r["q05"])),
    ("median", "median", lambda r: fmt(r["median"])), ("abstain", "abstain_rate", lambda r: fmt(r["abstain_rate"])),
    ("n", "n", lambda r: r["n"]), ("MC samples", "mc_samples", lambda r: r["mc_samples"]),
    ("alpha", "alpha", lambda r: r["alpha"]), ("commit", "git_commit", lambda r: str(r["git_commit"] or "")[:12]),
]


def _sort_key(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "" if isinstance(value, float) and math.isnan(value) else repr(float(value))
    return str(value if value is not None else "")


def html_table(df: pd.DataFrame, cols: Sequence[Column], table_id: str) -> str:
    head = "".join(f"<th scope=\"col\">{esc(h)}</th>" for h, _, _ in cols)
    body = []
    for _, r in df.iterrows():
        tds = []
        for _, col, show in cols:
            raw = r.get(col)
            cls = "num" if isinstance(raw, (int, float)) and not isinstance(raw, bool) else ""
            if col == "status" and raw != "ok":
                cls = "failed"
            title = f' title="{esc(raw)}"' if col in ("defense_config", "model_revision", "git_commit") else ""
            tds.append(f'<td class="{cls}" data-sort="{esc(_sort_key(raw))}"{title}>{esc(show(r))}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<table class="sortable" id="{esc(table_id)}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    return f'<img class="plot" alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def render_html(lb: Leaderboard, figures: dict[str, bytes]) -> str:
    """The whole page as a string; ``figures`` maps plot file names to PNG bytes."""
    parts = []
    for i, task in enumerate(lb.tasks()):
        cells = lb.cells[lb.cells["task"] == task]
        worst = lb.worst[lb.worst["task"] == task]
        cert = lb.certified[lb.certified["task"] == task]
        parts.append(f"<section><h2>{esc(task)}</h2>")
        parts.append("<h3>Cells: clean, robust accuracy and ASR per attack</h3>")
        parts.append(html_table(cells, CELL_COLS, f"cells-{i}"))
        if not worst.empty:
            parts.append("<h3>Worst case over attacks (per sample) per model and defense</h3>")
            parts.append(html_table(worst, WORST_COLS, f"worst-{i}"))
        for j, (title, rows) in enumerate(_cert_parts(cert)):
            parts.append(f"<h3>{esc(title)}</h3>")
            parts.append(html_table(rows, CERT_COLS, f"certified-{i}-{j}"))
        imgs = "".join(_img(png, name) for name, png in figures.items() if name.startswith(_slug(task) + "--"))
        if imgs:
            parts.append(f"<h3>Plots</h3><div>{imgs}</div>")
        parts.append("</section>")
    script_hash = base64.b64encode(hashlib.sha256(SORT_JS.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    commits = sorted({str(c)[:12] for c in lb.cells["git_commit"] if c})
    latest = max((str(c) for c in lb.cells["created_at"] if c), default="")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">'
            f"<title>mmrobust leaderboard</title><style>{CSS}</style></head><body>"
            f"<h1>mmrobust leaderboard</h1>"
            f"<p>{len(lb.cells)} cells from {esc(', '.join(lb.sources))}; commits {esc(', '.join(commits))}; "
            f"latest cell {esc(latest)}. Click a column header to sort. ASR: among clean-correct samples, the "
            f"share the attack breaks; intervals are 95% Wilson. Worst case counts a sample robust only if it "
            f"survives every attack at that budget.</p>"
            f"{''.join(parts)}<script>{SORT_JS}</script></body></html>\n")


def _md_cell(value: Any) -> str:
    return html.escape(str(value), quote=False).replace("|", "\\|").replace("\n", " ")


def md_table(df: pd.DataFrame, cols: Sequence[Column]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_md_cell(show(r)) for _, _, show in cols) + " |")
    return "\n".join(lines)


def _cert_parts(cert: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Sound rows under "Certified", estimates under their own heading (never called certified)."""
    if cert.empty:
        return []
    kind = cert["bound_kind"] if "bound_kind" in cert else pd.Series("estimate", index=cert.index)
    parts = [("Certified bounds per radius (sound: hold with probability >= 1 - alpha)", cert[kind == "sound"]),
             ("Estimated bounds per radius (not certified: rest on an estimated constant or a point estimate)",
              cert[kind != "sound"])]
    return [(t, rows) for t, rows in parts if not rows.empty]


def render_markdown(lb: Leaderboard, figure_files: Sequence[str]) -> str:
    out = ["# mmrobust leaderboard", "",
           f"{len(lb.cells)} cells from {', '.join(lb.sources)}. Generated by `mmrobust leaderboard`; do not edit.",
           ""]
    for task in lb.tasks():
        out += [f"## {_md_cell(task)}", "", "### Cells", "", md_table(lb.cells[lb.cells["task"] == task], CELL_COLS),
                ""]
        worst = lb.worst[lb.worst["task"] == task]
        if not worst.empty:
            out += ["### Worst case over attacks", "", md_table(worst, WORST_COLS), ""]
        cert = lb.certified[lb.certified["task"] == task]
        for title, rows in _cert_parts(cert):
            out += [f"### {title}", "", md_table(rows, CERT_COLS), ""]
        out += [f"![{_md_cell(f)}](plots/{f})" for f in figure_files if f.startswith(_slug(task) + "--")] + [""]
    return "\n".join(out)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(text))


def make_figures(lb: Leaderboard) -> dict[str, bytes]:
    """``{file name: png}``: ASR vs eps per task, certified quantity vs radius per task."""
    figs: dict[str, bytes] = {}
    for task in lb.tasks():
        png = plots.asr_vs_eps(lb.cells, lb.worst, task)
        if png:
            figs[f"{_slug(task)}--asr-vs-eps.png"] = png
        cert = lb.certified[lb.certified["task"] == task]
        kinds = cert["bound_kind"] if "bound_kind" in cert else pd.Series("estimate", index=cert.index)
        for quantity, kind in sorted(set(zip(cert["quantity"], kinds))):
            png = plots.certified_vs_radius(lb.certified, task, quantity, kind)
            if png:
                suffix = "" if kind == "sound" else "-estimate"
                figs[f"{_slug(task)}--{_slug(quantity)}{suffix}-vs-radius.png"] = png
    return figs


def write(lb: Leaderboard, out: str | Path) -> dict[str, Path]:
    """Write parquet tables, markdown, the page and plot PNGs under ``out`` (atomic per file)."""
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    figures = make_figures(lb)
    files: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        target = out / name
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        files[name] = target

    for name, df in (("leaderboard.parquet", lb.cells), ("leaderboard_worst.parquet", lb.worst),
                     ("leaderboard_certified.parquet", lb.certified)):
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        put(name, buf.getvalue())
    for name, png in figures.items():
        put(f"plots/{name}", png)
    put("leaderboard.md", render_markdown(lb, list(figures)).encode())
    put("index.html", render_html(lb, figures).encode())
    return files
