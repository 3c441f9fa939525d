"""Leaderboard plots as PNG bytes (matplotlib, Agg backend; no display, no fonts fetched).

PNG metadata carries no timestamp or version, so the same tables give byte-identical files
and a committed snapshot only changes when numbers do.
"""

from __future__ import annotations

import io
from typing import Any

import pandas as pd


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _label(*parts: Any) -> str:
    # '$' would switch matplotlib to mathtext and can raise on names from configs
    return " / ".join(str(p) for p in parts).replace("$", r"\$")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def asr_vs_eps(cells: pd.DataFrame, worst: pd.DataFrame, task: str) -> bytes | None:
    """Worst-case ASR (with its 95% interval) against eps, one line per (model, defense) and norm.

    Uses the per-sample worst case over attacks at each budget; falls back to per-cell ASR for
    budgets without samples. ``None`` when the task has no attacked cells.
    """
    w = worst[worst["task"] == task]
    if w.empty:
        c = cells[(cells["task"] == task) & (cells["status"] == "ok") & (cells["attack"] != "none")]
        if c.empty:
            return None
        w = c.rename(columns={"asr": "worst_asr", "asr_low": "worst_asr_low", "asr_high": "worst_asr_high"})
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (model, defense, norm), g in w.groupby(["model", "defense", "norm"], sort=True):
        g = g.groupby("eps", as_index=False)[["worst_asr", "worst_asr_low", "worst_asr_high"]].max()
        g = g.sort_values("eps")
        err = [g["worst_asr"] - g["worst_asr_low"], g["worst_asr_high"] - g["worst_asr"]]
        ax.errorbar(g["eps"] * 255, g["worst_asr"], yerr=err, marker="o", capsize=3,
                    label=_label(model, defense, norm))
    ax.set_xlabel("eps (x 1/255, pixel scale)")
    ax.set_ylabel("ASR (worst case over attacks)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(_label(task), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def certified_vs_radius(certified: pd.DataFrame, task: str, quantity: str, kind: str = "sound") -> bytes | None:
    """Mean certified quantity (solid) and its 5% quantile (dashed) against the l2 radius, for the
    rows of one ``bound_kind``; an ``estimate`` plot says so on its axis and title."""
    kinds = certified["bound_kind"] if "bound_kind" in certified else pd.Series("estimate", index=certified.index)
    c = certified[(certified["task"] == task) & (certified["quantity"] == quantity) & (kinds == kind)]
    if c.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (model, defense), g in c.groupby(["model", "defense"], sort=True):
        g = g.groupby("radius", as_index=False)[["mean", "q05"]].mean().sort_values("radius")
        line = ax.plot(g["radius"], g["mean"], marker="o", label=_label(model, defense))[0]
        ax.plot(g["radius"], g["q05"], linestyle="--", color=line.get_color(), alpha=0.7)
    ax.set_xlabel("l2 radius (pixel scale)")
    name = quantity if kind == "sound" else f"{quantity} (estimate, not certified)"
    ax.set_ylabel(_label(name) + " (mean; dashed: 5% quantile)")
    ax.set_title(_label(task, name), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)
