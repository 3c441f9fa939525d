"""Paper-table reproduction: run a spec's cells and put ours next to the published values.

A spec (``tasks/papers/<name>.yaml``, docs/methods.md) names the paper, its protocol, the
cells that measure it and the reference values with their provenance tags. Real models run when
their weights are on disk; otherwise the run stops with one line naming the missing weights,
and ``--zoo`` runs the same protocol on the bundled models of the same family (tasks mapped by
the spec's ``zoo.tasks``), labelled ``zoo`` everywhere, so numbers are never passed off as the
paper's setting. Pass/fail is given only for references tagged PAPER or CODE and only on real
models; other tags (2ND, DERIVED, BENCH, UNKNOWN) get "no verdict".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from robustbench_mm.errors import ConfigError, MMRobustError, WeightsError

VERDICT_TAGS = ("PAPER", "CODE")
TAGS = ("PAPER", "CODE", "2ND", "DERIVED", "BENCH", "UNKNOWN")
PERCENT_METRICS = ("clean_accuracy", "robust_accuracy", "asr")
TOP_KEYS = {"name", "title", "defense", "source", "table", "protocol", "model", "train", "eval", "defaults", "cells",
            "references", "checks", "zoo", "tolerance_points", "tolerance", "notes"}
CELL_KEYS = {"id", "model", "attack", "defense", "task", "eps", "steps", "norm", "n", "seed", "certify", "note",
             "vision_encoder"}
SCORE_METRICS = ("clean_score", "adv_score")  # the task's metric; x100 as papers print CIDEr and VQA accuracy
OPS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}


@dataclass(frozen=True)
class PaperSpec:
    name: str
    path: Path
    data: dict[str, Any]

    @property
    def cells(self) -> list[dict[str, Any]]:
        defaults = self.data.get("defaults") or {}
        return [{**defaults, **c} for c in self.data.get("cells") or []]

    @property
    def references(self) -> list[dict[str, Any]]:
        return list(self.data.get("references") or [])

    @property
    def checks(self) -> list[dict[str, Any]]:
        return list(self.data.get("checks") or [])


@dataclass
class Reproduction:
    spec: str
    zoo: bool
    table: pd.DataFrame
    markdown: str
    md_path: Path
    parquet_path: Path
    summaries: list[Any] = field(default_factory=list)


def papers_dir() -> Path:
    from robustbench_mm.presets import presets_root

    return presets_root() / "tasks" / "papers"


def load_all() -> list[PaperSpec]:
    return [load(p.stem) for p in sorted(papers_dir().glob("*.yaml"))]


def load(ref: str) -> PaperSpec:
    """A spec by name (``tasks/papers/<name>.yaml``) or by path; validated (one clear line)."""
    from robustbench_mm.presets import _read_yaml

    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        path = Path(ref)
        if not path.is_file():
            raise ConfigError(f"paper spec file {ref!r} does not exist")
    else:
        path = papers_dir() / f"{ref}.yaml"
        if not path.is_file():
            import difflib

            names = sorted(p.stem for p in papers_dir().glob("*.yaml"))
            close = difflib.get_close_matches(ref, names, n=3)
            hint = f"Did you mean: {', '.join(close)}? " if close else ""
            raise ConfigError(f"Unknown paper spec {ref!r}. {hint}Available: {', '.join(names)} "
                              f"(`mmrobust reproduce --list`)")
    data = _read_yaml(path)
    _validate(path, data)
    return PaperSpec(str(data["name"]), path, data)


def _validate(path: Path, data: dict[str, Any]) -> None:
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key {sorted(unknown)[0]!r}; allowed: {', '.join(sorted(TOP_KEYS))}")
    for key in ("name", "defense", "cells"):
        if key not in data:
            raise ConfigError(f"{path}: missing key {key!r}")
    ids = []
    for i, c in enumerate(data["cells"]):
        if not isinstance(c, dict) or not {"id", "model"} <= set(c):
            raise ConfigError(f"{path}: cells[{i}] needs at least id and model")
        bad = set(c) - CELL_KEYS
        if bad:
            raise ConfigError(f"{path}: cells[{i}] unknown key {sorted(bad)[0]!r}; "
                              f"allowed: {', '.join(sorted(CELL_KEYS))}")
        ids.append(c["id"])
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: cell ids must be unique")
    for i, r in enumerate(data.get("references") or []):
        if r.get("tag") not in TAGS:
            raise ConfigError(f"{path}: references[{i}].tag={r.get('tag')!r}; use one of {', '.join(TAGS)}")
        if r.get("cell") is not None and r["cell"] not in ids:
            raise ConfigError(f"{path}: references[{i}].cell={r['cell']!r} is not a cell id ({', '.join(ids)})")
        if not isinstance(r.get("value"), (int, float)) or "metric" not in r:
            raise ConfigError(f"{path}: references[{i}] needs a numeric value and a metric")
    for i, c in enumerate(data.get("checks") or []):
        if c.get("op") not in OPS or c.get("left") not in ids or c.get("right") not in ids or c.get("tag") not in TAGS:
            raise ConfigError(f"{path}: checks[{i}] needs left/right cell ids, op one of {' '.join(OPS)}, a metric "
                              f"and a tag")


def describe(spec: PaperSpec) -> dict[str, Any]:
    tags = sorted({r["tag"] for r in spec.references} | {c["tag"] for c in spec.checks})
    return {"name": spec.name, "defense": spec.data["defense"], "title": spec.data.get("title", ""),
            "cells": len(spec.cells), "references": len(spec.references) + len(spec.checks),
            "tags": ",".join(tags) or "none", "missing_weights": missing_weights(spec)}


def missing_weights(spec: PaperSpec) -> list[str]:
    """Real models of the spec whose weights are not on this machine (name and source)."""
    from robustbench_mm.models.zoo import MODELS

    from robustbench_mm.models.vision_swap import PUBLIC_ENCODERS
    from robustbench_mm.models.zoo import entry_for

    out = []
    for model in sorted({c["model"] for c in spec.cells}):
        if model in MODELS and not MODELS.get(model).available():
            out.append(f"{model} ({MODELS.get(model).source})")
    for enc in sorted({c["vision_encoder"] for c in spec.cells if c.get("vision_encoder") in PUBLIC_ENCODERS}):
        try:
            entry_for(PUBLIC_ENCODERS[enc])
        except WeightsError:
            out.append(f"{enc} ({PUBLIC_ENCODERS[enc]})")
    return out


def zoo_model(model: str) -> str:
    """The bundled model of the same family as a real one (clip-vit-b-32 -> clip-tiny)."""
    from robustbench_mm.models.zoo import ALIASES, MODELS

    if model in ALIASES:
        return ALIASES[model][1]
    if model in MODELS and not MODELS.get(model).bundled:
        return ALIASES[MODELS.get(model).family][1]
    return model


def plan(spec: PaperSpec, *, zoo: bool, n: int | None, device: str | None) -> list[tuple[dict[str, Any], Any]]:
    """(spec cell, resolved cell) pairs; any cell that cannot be resolved stops the run with one line."""
    from robustbench_mm.presets import parse_number
    from robustbench_mm.runner.resolve import CellSpec, resolve

    zoo_cfg = spec.data.get("zoo") or {}
    task_map = zoo_cfg.get("tasks") or {}
    encoder_map = zoo_cfg.get("encoders") or {}
    out = []
    for c in spec.cells:
        model, task, encoder = c["model"], c.get("task"), c.get("vision_encoder")
        cell_n = c.get("n", 64)
        if zoo:
            model, task, cell_n = zoo_model(model), task_map.get(task, task), zoo_cfg.get("n", cell_n)
            encoder = encoder_map.get(encoder, encoder)
        where = f"{spec.name} cell {c['id']!r}"
        cs = CellSpec(model=model, attack=c.get("attack", "pgd"), defense=c.get("defense", "none"), task=task,
                      seed=int(c.get("seed", 0)), n=int(n or cell_n), device=device,
                      eps=parse_number(c["eps"], f"{where}: eps") if "eps" in c else None,
                      steps=c.get("steps"), norm=c.get("norm"), certify=c.get("certify"), vision_encoder=encoder)
        try:
            out.append((c, resolve(cs)))
        except MMRobustError as exc:
            raise type(exc)(f"reproduce {spec.name}{' --zoo' if zoo else ''}: cell {c['id']!r} cannot be resolved: "
                            f"{exc}") from None
    return out


def reproduce(spec: PaperSpec, *, zoo: bool, out: Path, n: int | None = None, device: str | None = None,
              on_cell: Callable[[Any, Any], None] | None = None) -> Reproduction:
    """Run the cells into ``out/runs/papers/<spec>[-zoo]`` and write ``out/papers/<spec>[-zoo].{md,parquet}``."""
    from robustbench_mm.runner.grid import run_grid
    from robustbench_mm.runner.store import ResultStore

    if not zoo:
        missing = missing_weights(spec)
        if missing:
            raise WeightsError(f"reproduce {spec.name}: weights not found locally for {', '.join(missing)}; "
                               f"download them (HF cache) or run `mmrobust reproduce {spec.name} --zoo` for the same "
                               f"protocol on the bundled models")
    pairs = plan(spec, zoo=zoo, n=n, device=device)
    label = f"{spec.name}-zoo" if zoo else spec.name
    with ResultStore(out / "runs" / "papers" / label) as store:
        summaries = run_grid([cell for _, cell in pairs], store, on_cell=on_cell)
        samples = store.read("samples")
        certified = store.read("certified")
    measured = {c["id"]: _measures(s.row, samples, certified, cell.cell_id)
                for (c, cell), s in zip(pairs, summaries)}
    table = compare(spec, pairs, measured, zoo)
    md = render(spec, table, zoo) + cells_table(pairs, measured)
    (out / "papers").mkdir(parents=True, exist_ok=True)
    md_path, pq_path = out / "papers" / f"{label}.md", out / "papers" / f"{label}.parquet"
    md_path.write_text(md)
    table.to_parquet(pq_path, index=False)
    return Reproduction(spec.name, zoo, table, md, md_path, pq_path, summaries)


def _measures(row: dict[str, Any], samples: pd.DataFrame, certified: pd.DataFrame, cell_id: str) -> dict[str, Any]:
    m = {k: row.get(k) for k in (*PERCENT_METRICS, *SCORE_METRICS, "status", "error", "model", "attack", "defense",
                                 "task", "eps", "norm", "n", "model_revision", "git_commit", "cell_id",
                                 "vision_encoder")}
    s = samples[samples["cell_id"] == cell_id] if not samples.empty else samples
    # averaged over the attacked (clean-correct) samples only: the others were never perturbed
    attacked = s[s["clean_correct"].astype(bool)] if not s.empty else s
    m["feature_cosine_attacked"] = float(attacked["feature_cosine"].mean()) if not attacked.empty else math.nan
    if not certified.empty:
        from robustbench_mm.report.bound_kind import SOUND, with_bound_kind

        for _, r in with_bound_kind(certified[certified["cell_id"] == cell_id]).iterrows():
            suffix = "" if r["bound_kind"] == SOUND else "_estimate"  # only sound rows read as certified
            m[f"{r['quantity']}{suffix}@{r['radius']:g}"] = float(r["mean"])
    return m


def _value(measured: dict[str, Any], metric: str) -> float:
    """Ours on the reference's scale: accuracies/ASR in percent, everything else as stored."""
    v = measured.get(metric)
    if v is None or measured.get("status") != "ok":
        return math.nan
    return float(v) * 100 if metric in PERCENT_METRICS + SCORE_METRICS else float(v)


def compare(spec: PaperSpec, pairs: list[tuple[dict[str, Any], Any]], measured: dict[str, dict[str, Any]],
            zoo: bool) -> pd.DataFrame:
    """One row per reference value and per qualitative check."""
    tol_default = float(spec.data.get("tolerance_points", 2.0))
    cells = {c["id"]: cell for c, cell in pairs}
    rows = []
    for ref in spec.references:
        cid, metric = ref.get("cell"), ref["metric"]
        ours = _value(measured[cid], metric) if cid in measured else math.nan
        raw_default = tol_default if metric in PERCENT_METRICS else spec.data.get("tolerance", 0.05)
        tol = float(ref.get("tolerance", raw_default))
        delta = ours - float(ref["value"])
        within = bool(abs(delta) <= tol) if not math.isnan(ours) else False
        rows.append({"kind": "value", "table": ref.get("table", spec.data.get("table", "")), "cell": cid or "",
                     "metric": metric, "paper": float(ref["value"]), "ours": ours, "delta": delta, "tolerance": tol,
                     "within_tolerance": within, "tag": ref["tag"],
                     "verdict": _verdict(ref["tag"], zoo, within, math.isnan(ours), cid is None),
                     "note": ref.get("note", ""), **_provenance(cells.get(cid), measured.get(cid or ""), zoo)})
    for chk in spec.checks:
        a, b = _value(measured[chk["left"]], chk["metric"]), _value(measured[chk["right"]], chk["metric"])
        holds = bool(OPS[chk["op"]](a, b)) if not (math.isnan(a) or math.isnan(b)) else False
        rows.append({"kind": "check", "table": chk.get("claim", ""),
                     "cell": f"{chk['left']} {chk['op']} {chk['right']}",
                     "metric": chk["metric"], "paper": math.nan, "ours": a - b, "delta": math.nan,
                     "tolerance": math.nan, "within_tolerance": holds, "tag": chk["tag"],
                     "verdict": _verdict(chk["tag"], zoo, holds, math.isnan(a) or math.isnan(b), False),
                     "note": f"{chk['left']}={_f(a)}, {chk['right']}={_f(b)}",
                     **_provenance(cells.get(chk["left"]), measured.get(chk["left"]), zoo)})
    return pd.DataFrame(rows)


def _verdict(tag: str, zoo: bool, ok: bool, missing: bool, unmeasured: bool) -> str:
    if unmeasured:
        return "not measured (no cell for this setting)"
    if missing:
        return "not measured (cell failed)"
    if tag not in VERDICT_TAGS:
        return f"no verdict ({tag})"
    if zoo:
        return "no verdict (zoo: bundled models, not the paper's setting)"
    return "pass" if ok else "fail"


def _provenance(cell: Any, m: dict[str, Any] | None, zoo: bool) -> dict[str, Any]:
    m = m or {}
    model = m.get("model", cell.entry.name if cell else "")
    if m.get("vision_encoder"):  # the VLM row names its tower
        model = f"{model} + {m['vision_encoder']}"
    return {"setting": "zoo" if zoo else "real", "model": model,
            "attack": m.get("attack", ""), "defense": m.get("defense", ""), "task": m.get("task", ""),
            "eps": m.get("eps", math.nan), "n": m.get("n", 0), "model_revision": m.get("model_revision", ""),
            "git_commit": m.get("git_commit", ""), "cell_id": m.get("cell_id", "")}


def _f(x: float) -> str:
    return "—" if math.isnan(x) else f"{x:.4g}"


def render(spec: PaperSpec, table: pd.DataFrame, zoo: bool) -> str:
    src = spec.data.get("source") or {}
    head = [f"# {spec.name}{' (zoo)' if zoo else ''}: {spec.data.get('title', '')}", "",
            f"Defense `{spec.data['defense']}`; source: {', '.join(f'{k} {v}' for k, v in src.items())}.",
            "Generated by `mmrobust reproduce" + f" {spec.name}{' --zoo' if zoo else ''}`; do not edit.", ""]
    if zoo:
        head += ["**Zoo run**: the paper's protocol on the bundled tiny models (same family, bundled tasks). "
                 "Numbers are not comparable with the paper's; no pass/fail is given.", ""]
    head += ["Tags: PAPER = stated in the paper, CODE = official code; only these get pass/fail. 2ND = secondary "
             "summary, DERIVED/BENCH/UNKNOWN = ours (docs/methods.md).", ""]
    lines = ["| table | cell | model | metric | paper | tag | ours | delta | tolerance | within | verdict | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in (
            r["table"], r["cell"], r["model"], r["metric"], _f(r["paper"]), f"[{r['tag']}]", _f(r["ours"]),
            _f(r["delta"]), _f(r["tolerance"]), "yes" if r["within_tolerance"] else "no", r["verdict"],
            r["note"])) + " |")
    return "\n".join(head + lines) + "\n"


def cells_table(pairs: list[tuple[dict[str, Any], Any]], measured: dict[str, dict[str, Any]]) -> str:
    """Every cell the run measured, with or without a published value (the table's full shape)."""
    lines = ["", "## Every cell", "", "| cell | model | task | attack | eps | clean score | attacked score | n |",
             "|---|---|---|---|---|---|---|---|"]
    for c, cell in pairs:
        m = measured.get(c["id"], {})
        model = f"{cell.entry.name} + {cell.spec.vision_encoder}" if cell.spec.vision_encoder else cell.entry.name
        eps = m.get("eps")
        lines.append(f"| {c['id']} | {model} | {cell.task.name} | {cell.attack.name} | "
                     f"{'—' if eps is None else f'{float(eps) * 255:.3g}/255'} | {_f(_value(m, 'clean_score'))} | "
                     f"{_f(_value(m, 'adv_score'))} | {m.get('n', 0)} |")
    return "\n".join(lines) + "\n"


def with_cells(spec: PaperSpec, cells: list[dict[str, Any]]) -> PaperSpec:
    """A copy of the spec with other cells (tests)."""
    return replace(spec, data={**spec.data, "cells": cells})
