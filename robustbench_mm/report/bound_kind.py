"""Which certificate rows may be called certified: ``bound_kind`` (``sound`` | ``estimate``).

A ``sound`` row holds exactly or with probability ``>= 1 - alpha`` (FS Monte Carlo bounds); an
``estimate`` rests on an estimated constant (CRMT's Lipschitz estimate) or is a point estimate
(``s_hat``). Tables, plots and the leaderboard call only sound rows certified. Stores written before
the column existed get a label here from what produced them.
"""

from __future__ import annotations

import pandas as pd

SOUND, ESTIMATE = "sound", "estimate"
# quantities that FS computes from the lower confidence bound S_lo (sound); s_hat is a point estimate
_FS_SOUND = frozenset({"fcsb", "fcsb_tight", "s_lo", "certified_accuracy"})


def infer(defense: str, quantity: str) -> str:
    """Label of a row from a store without ``bound_kind``: FS bounds are sound, anything else is not."""
    return SOUND if str(defense).startswith("fs") and quantity in _FS_SOUND else ESTIMATE


def with_bound_kind(cert: pd.DataFrame) -> pd.DataFrame:
    """``cert`` with a filled ``bound_kind`` column (kept where present, inferred where missing)."""
    if cert.empty:
        return cert.assign(bound_kind=pd.Series(dtype=str))
    inferred = [infer(d, q) for d, q in zip(cert["defense"], cert["quantity"])]
    if "bound_kind" not in cert:
        return cert.assign(bound_kind=inferred)
    kind = cert["bound_kind"].where(cert["bound_kind"].isin([SOUND, ESTIMATE]), pd.Series(inferred, index=cert.index))
    return cert.assign(bound_kind=kind)


def label(quantity: str, kind: str) -> str:
    """How a quantity is named to a reader: estimates never read as certified."""
    return str(quantity) if kind == SOUND else f"{quantity} (estimate, not certified)"
