"""A cell's ``asr.parquet`` row (design 'Tables'), the sanity checks it stores as data, and the
metadata committed beside it."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import torch

from robustbench_mm.runner import provenance
from robustbench_mm.runner.certified import certified_at
from robustbench_mm.runner.resolve import ResolvedCell, spec_dict
from robustbench_mm.runner.scores import score_summary
from robustbench_mm.runner.stats import wilson_interval
from robustbench_mm.runner.store import SCHEMA_VERSION
from robustbench_mm.tasks.retrieval import is_retrieval, retrieval_summary


def cell_sanity(cell: ResolvedCell, samples: pd.DataFrame, ok: bool) -> dict[str, Any]:
    """Checks every cell runs, stored as data (design 'Trust'); a failed check sets ``unreliable``.

    validity_guard: every adversarial batch was inside the threat model (else the cell failed).
    zero_gradient: no attacked example had a zero or non-finite input gradient.
    eot_for_randomized: a randomized defense was attacked with EOT.
    """
    checks: dict[str, str] = {"validity_guard": "pass" if ok else "not run"}
    if ok and cell.attack.norm is not None and "grad_norm" in samples and len(samples):
        g = samples["grad_norm"].dropna()
        blind = int(((g == 0) | ~g.apply(lambda v: v == v and abs(v) != float("inf"))).sum())
        checks["zero_gradient"] = "pass" if blind == 0 else f"fail ({blind} of {len(g)} examples)"
    if cell.defense.randomized and cell.attack.norm is not None:
        checks["eot_for_randomized"] = "pass" if getattr(cell.attack, "uses_eot", False) or \
            getattr(cell.attack, "eot", 1) > 1 else "fail"
    unreliable = any(v.startswith("fail") for v in checks.values())
    return {"unreliable": unreliable, "sanity": json.dumps(checks, sort_keys=True)}


def summary_row(cell: ResolvedCell, model: Any, device: torch.device, tables: dict[str, Any], status: str,
                error: str, wall: float) -> dict[str, Any]:
    """The ``asr.parquet`` row: design 'Tables' columns, numbers as numbers."""
    samples = tables["samples"]
    n = len(samples)
    clean_ok = int(samples["clean_correct"].sum()) if n else 0
    succ = int(samples["success"].sum()) if n else 0
    lo, hi = wilson_interval(succ, clean_ok)
    threat = cell.attack.describe()
    ok = status == "ok"
    nan = float("nan")
    return {
        "cell_id": cell.cell_id, "model": cell.entry.name, "attack": cell.attack.name, "defense": cell.defense.name,
        "task": cell.task.name, "norm": threat["norm"], "eps": threat["eps"], "steps": threat["steps"],
        "seed": cell.spec.seed, "n": n if ok else (cell.spec.n or 0),
        "clean_accuracy": clean_ok / n if n else nan,
        "robust_accuracy": float(samples["adv_correct"].mean()) if n else nan,
        "asr": succ / clean_ok if clean_ok else nan, "asr_low": lo if ok else nan, "asr_high": hi if ok else nan,
        "max_linf": float(samples["linf"].max()) if n else nan, "max_l2": float(samples["l2"].max()) if n else nan,
        "queries": int(getattr(cell.attack, "steps", 0) or 0) * int(getattr(cell.attack, "restarts", 1) or 1),
        "wall_s": wall, "samples_per_s": n / wall if wall > 0 else nan,
        "device": provenance.device_name(device), "dtype": cell.spec.dtype,
        "precision_policy": f"search={getattr(cell.attack, 'search_dtype', 'fp32')},verdict=fp32"
                            + (",compiled" if cell.spec.compile else ""),
        "status": status, "error": error, **cell_sanity(cell, samples, ok),
        "created_at": provenance.now(), "git_commit": provenance.git_commit(),
        "versions": provenance.versions_json(), "model_revision": getattr(model, "revision", ""),
        "schema_version": SCHEMA_VERSION, "batch_size": cell.spec.batch_size,
        **score_summary(cell.task, cell.entry.family, samples),
        "load_dtype": cell.spec.load_dtype, "device_map": cell.spec.device_map or "",
        "feature_cosine_attacked": attacked_feature_cosine(samples),
        "protocol": getattr(cell, "protocol", ""), "verdict_draws": int(getattr(cell, "verdict_draws", 1)),
        "verdict_rule": str(getattr(cell, "verdict_rule", "")),
        "certified_accuracy": certified_at(tables.get("certified"), threat["norm"], threat["eps"] or 0.0),
        **({"shard": cell.spec.shard} if cell.spec.shard else {}),  # a slice, until `mmrobust merge`
        **retrieval_columns(cell, samples),
        "vision_encoder": cell.spec.vision_encoder or "",
    }


def retrieval_columns(cell: ResolvedCell, samples: pd.DataFrame) -> dict[str, Any]:
    """Recall@1/5/10 both ways, clean and adversarial, and the text->image R@1 ASR with its interval
    (retrieval tasks; ``clean_accuracy``/``asr`` above are the image->text R@1 and its ASR)."""
    if not is_retrieval(cell.task):
        return {}
    out: dict[str, Any] = {"word_budget": int(getattr(cell.attack, "word_budget", 0) or 0),
                           **retrieval_summary(samples)}
    if "ir_asr_n" in out:
        out["ir_asr_low"], out["ir_asr_high"] = wilson_interval(int(out.pop("ir_asr_successes")),
                                                                int(out.pop("ir_asr_n")))
    return out


def attacked_feature_cosine(samples: pd.DataFrame) -> float:
    """Mean clean-vs-adversarial feature cosine over the attacked samples only (the clean-correct
    ones; the others are never perturbed and would add cosines of 1)."""
    if samples.empty or "feature_cosine" not in samples or "clean_correct" not in samples:
        return float("nan")
    v = samples.loc[samples["clean_correct"].astype(bool), "feature_cosine"].astype(float)
    return float(v.mean()) if len(v) else float("nan")


def empty_tables() -> dict[str, Any]:
    return {"samples": pd.DataFrame(columns=["cell_id", "clean_correct", "adv_correct", "success", "linf", "l2"]),
            "certified": pd.DataFrame()}


def cell_meta(cell: ResolvedCell, row: dict[str, Any]) -> dict[str, Any]:
    return {"cell_id": cell.cell_id, "config": cell.config(), "spec": spec_dict(cell.spec),
            "overrides": dict(cell.attack_preset.overrides), "git_commit": row["git_commit"],
            "versions": provenance.versions(), "device": row["device"], "created_at": row["created_at"],
            "wall_s": row["wall_s"], "status": row["status"]}
