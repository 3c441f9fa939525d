"""Write a leaderboard release folder (``results/leaderboard/v1/``) from protocol stores.

Everything is rendered into a temporary folder beside ``out`` and swapped in at the end, so bad
input or a crash leaves the previous release untouched. Every entry built from a store gets its
per-sample rows in ``samples/<slug>.parquet`` (``report/samples.py``), so its numbers can be
re-derived (``report/verify.py``). A ``manifest.yaml`` already in ``out``
(the commands that made the stores) is carried over. With ``carry``, the entries of an earlier
release that no store holds are kept (``report/carry.py``).
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from robustbench_mm.errors import StoreError
from robustbench_mm.report import cards, carry as carry_mod, plots, samples as samples_mod
from robustbench_mm.report.budget import fmt_eps, slug
from robustbench_mm.report.entries import GROUP, Board, build, columns, rank, sanity_checks, sound_rows
from robustbench_mm.report.gallery import cell_gallery

TEMPLATES = Path(__file__).parent / "templates"
RELEASE = "v1"
KEEP = ("manifest.yaml",)  # files of an earlier release that the build does not make


def _pct(x: Any) -> str:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(f) else f"{100 * f:.1f}%"


def _num(x: Any) -> str:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x or "")
    return "" if math.isnan(f) else f"{f:.4g}"


def _sortval(x: Any) -> str:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    return "" if math.isnan(f) else repr(f)


def _short(text: Any, width: int = 28) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= width else s[: width - 1] + "…"


def _md(text: Any) -> str:
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
            .replace("[", "\\[").replace("]", "\\]").replace("\n", " "))


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined,
                      autoescape=lambda name: bool(name) and name.endswith(".html.j2"),
                      keep_trailing_newline=True)
    env.filters.update(pct=_pct, num=_num, sortval=_sortval, short=_short, md=_md, version=_version)
    return env


def _version(protocol: str) -> str:
    """``mm-aa/rand/v1`` -> ``rand``: the protocol version an entry ran (a short table label)."""
    parts = str(protocol).split("/")
    return parts[-2] if len(parts) >= 3 else str(protocol)


def page_globals() -> dict[str, Any]:
    """What every page of a release (and ``mmrobust compare --out``) shares: CSP, sort script."""
    js = (TEMPLATES / "sort.js").read_text()
    digest = base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()
    csp = (f"default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
           f"script-src 'sha256-{digest}'")
    return {"csp": csp, "sort_js": Markup(js), "release": RELEASE}


def groups(entries: pd.DataFrame) -> list[dict[str, Any]]:
    """One ranked table per task x threat model, in a stable order."""
    out = []
    for (task, norm, eps), g in entries.groupby(GROUP, sort=True):
        rows = g.sort_values("rank").to_dict("records")
        out.append({"task": task, "norm": norm, "eps": eps, "eps_text": fmt_eps(eps),
                    "anchor": slug(task, norm, fmt_eps(eps)), "rows": rows,
                    "certified": bool(g["certified_accuracy"].notna().any()),
                    # retrieval: clean/robust are image->text R@1; text->image gets its own columns
                    "retrieval": bool(g["ir_r1_clean"].notna().any())})
    return out


def write_release(stores: Sequence[str | Path], out: str | Path, carry: str | Path | None = None) -> dict[str, Any]:
    """Build the release of ``stores`` into ``out``; returns a summary (entries, groups, files,
    carried: how many entries came from the release ``carry`` rather than from a store)."""
    carry = Path(carry) if carry is not None else None
    # bad input raises here, before anything is written
    board = build(stores) if stores or carry is None else Board(pd.DataFrame(columns=columns()), {})
    carried = pd.DataFrame(columns=columns())
    if carry is not None:
        carried = carry_mod.read_release(carry, (carry_mod.entry_key(r) for _, r in board.entries.iterrows()))
        parts = [df for df in (board.entries, carried) if not df.empty]
        if not parts:
            raise StoreError(f"nothing to build: --carry {carry} has no entries and no store was given")
        board = Board(rank(pd.concat(parts, ignore_index=True)), board.cells)
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise StoreError(f"cannot write --out {out} ({exc.strerror}); choose a writable folder") from None
    try:
        # files the build does not make: from ``out``, else from the carried release
        sources = ([carry] if carry is not None else []) + [out]
        kept = {name: src / name for src in sources for name in KEEP if (src / name).is_file()}
        files = _render(board, tmp, has_manifest="manifest.yaml" in kept, carry=carry)
        for name, src in kept.items():
            shutil.copy2(src, tmp / name)
        _swap(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"entries": board.entries, "groups": len(groups(board.entries)), "files": files, "out": out,
            "carried": len(carried)}


def _swap(tmp: Path, out: Path) -> None:
    os.chmod(tmp, 0o755)
    if out.exists():
        old = out.with_name(f".{out.name}.old.{os.getpid()}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def _render(board: Board, root: Path, *, has_manifest: bool, carry: Path | None = None) -> int:
    env, base = environment(), page_globals()
    entries = board.entries
    for sub in ("entries", "cards", "plots", "gallery", samples_mod.FOLDER):
        (root / sub).mkdir()
    entries.to_parquet(root / "entries.parquet", index=False)
    (root / "schema.json").write_text((Path(__file__).parent / "schema.json").read_text())
    gs = groups(entries)
    protocols = sorted(set(entries["protocol"]))
    ns = sorted(set(entries["n"]))
    n_text = str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    commits = sorted({str(c)[:12] for c in entries["git_commit"] if c})
    common = {**base, "groups": gs, "protocols": protocols, "n_text": n_text, "commits": commits,
              "has_manifest": has_manifest}
    (root / "index.html").write_text(env.get_template("index.html.j2").render(**common))
    (root / "leaderboard.md").write_text(env.get_template("leaderboard.md.j2").render(**common))
    robust_plots = _robust_plots(entries, root)
    sizes = entries.groupby(GROUP)["rank"].size()
    for e in entries.to_dict("records"):
        group_size = int(sizes[tuple(e[k] for k in GROUP)])  # "rank r of k" on the entry's page
        if Path(e["detail"]).stem in board.cells:
            _detail(env, base, board, e, group_size, robust_plots, root)
            samples_mod.write(board.cells[Path(e["detail"]).stem], e, root)
        else:  # an entry of the --carry release: its page and images as they were, with its new rank
            assert carry is not None
            carry_mod.copy_entry(carry, root, e, group_size)
    cards.write_cards(env, base, entries, board, root)
    return sum(1 for p in root.rglob("*") if p.is_file())


def _robust_plots(entries: pd.DataFrame, root: Path) -> dict[tuple[str, str, str], str]:
    """One robust-vs-eps figure per task x model x defense, shared by its entries' pages."""
    out = {}
    for (task, model, defense), g in entries.groupby(["task", "model", "defense"], sort=True):
        png = plots.robust_vs_eps(g, f"{model} / {defense} / {task}")
        if png:
            name = f"plots/{slug(task, model, defense)}--robust-vs-eps.png"
            (root / name).write_bytes(png)
            out[(task, model, defense)] = name
    return out


def members(samples: pd.DataFrame) -> list[dict[str, Any]] | None:
    """Samples broken per protocol member (``broken_by``), among the clean-correct ones; ``None``
    when the store did not record ``broken_by``."""
    if samples.empty or "broken_by" not in samples:
        return None
    clean = int(samples["clean_correct"].astype(bool).sum())
    by = samples["broken_by"].fillna("").astype(str)
    counts = by[by != ""].value_counts()
    return [{"member": m, "count": int(c), "share": c / clean if clean else math.nan} for m, c in counts.items()]


def _detail(env: Environment, base: dict[str, Any], board: Board, e: dict[str, Any], group_size: int,
            robust_plots: dict[tuple[str, str, str], str], root: Path) -> None:
    name = Path(e["detail"]).stem
    cell = board.cells[name]
    cert_plot = ""
    sound = sound_rows(cell.certified)
    png = plots.certified_curves(sound, f"{e['model']} / {e['defense']} (sound bounds)")
    if png:
        cert_plot = f"plots/{name}--certified.png"
        (root / cert_plot).write_bytes(png)
    gallery, captions = "", []
    found = cell_gallery(cell.cell_dir)
    if found:
        gallery = f"gallery/{name}.png"
        shutil.copyfile(found[0], root / gallery)
        captions = found[1].get("samples", []) if isinstance(found[1], dict) else []
    r = cell.row
    provenance = [(k, str(r.get(k, ""))) for k in ("cell_id", "protocol", "verdict_draws", "git_commit", "created_at",
                                                   "model_revision", "device", "dtype", "precision_policy", "wall_s",
                                                   "versions") if k in r.index]
    provenance.append(("store", cell.cell_dir.parent.parent.name))
    html = env.get_template("entry.html.j2").render(
        **base, e=e, eps_text=fmt_eps(e["eps"]), anchor=slug(e["task"], e["norm"], fmt_eps(e["eps"])),
        group_size=group_size, cert_shown=not math.isnan(e["certified_accuracy"]), members=members(cell.samples),
        robust_plot=robust_plots.get((e["task"], e["model"], e["defense"]), ""), cert_plot=cert_plot,
        sanity=sorted(sanity_checks(r).items()), gallery=gallery, captions=captions, provenance=provenance)
    (root / e["detail"]).write_text(html)
