"""Leaderboard plots as PNG bytes (matplotlib, Agg backend; no display, no fonts fetched).

PNG metadata carries no timestamp or version, so the same tables give byte-identical files
and a committed release only changes when numbers do.
"""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from robustbench_mm.report.budget import fmt_eps


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
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)
    return buf.getvalue()


def robust_vs_eps(entries: pd.DataFrame, title: str) -> bytes | None:
    """Robust accuracy with its 95% interval against eps, one axis per norm (budgets of different
    norms are not comparable, so they never share an axis). ``entries``: one model x defense."""
    if entries.empty:
        return None
    norms = sorted(set(entries["norm"]))
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(norms), figsize=(3.4 * len(norms), 2.8), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        g = entries[entries["norm"] == norm].sort_values("eps")
        err = [g["robust_accuracy"] - g["robust_low"], g["robust_high"] - g["robust_accuracy"]]
        ax.errorbar(g["eps"], g["robust_accuracy"], yerr=err, marker="o", capsize=3)
        ax.set_xticks(list(g["eps"]), [fmt_eps(e) for e in g["eps"]])
        ax.set_xlabel(f"{norm} eps")
        ax.set_ylabel("robust accuracy (95% CI)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    fig.suptitle(_label(title), fontsize=9)
    return _png(fig)


def certified_curves(sound: pd.DataFrame, title: str) -> bytes | None:
    """Sound certified quantities against the l2 radius, one axis per quantity: the mean over samples
    (for ``certified_accuracy`` the certified-accuracy curve) and, for cosine bounds such as FCSB, the
    median and 5% quantile as the FS paper reports them. Quantities given at one radius are skipped."""
    if sound.empty:
        return None
    radii = sound.groupby(sound["quantity"].astype(str))["radius"].nunique()
    quantities = sorted(q for q, k in radii.items() if k > 1)
    if not quantities:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(quantities), figsize=(3.4 * len(quantities), 2.8), squeeze=False)
    for ax, q in zip(axes[0], quantities):
        g = sound[sound["quantity"].astype(str) == q].sort_values("radius")
        ax.plot(g["radius"], g["mean"], marker="o", label="mean")
        if q.startswith("fcsb") and {"median", "q05"} <= set(g.columns):
            ax.plot(g["radius"], g["median"], ls="--", label="median")
            ax.plot(g["radius"], g["q05"], ls=":", label="5% quantile")
            ax.legend(fontsize=6)
        ax.set_xlabel("l2 radius")
        ax.set_ylabel(_label(q))
        ax.grid(alpha=0.3)
    fig.suptitle(_label(title), fontsize=9)
    return _png(fig)
