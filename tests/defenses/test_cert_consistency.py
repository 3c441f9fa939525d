"""Per-sample consistency of certificates with the attacks, through the runner and the store: every
certifying defense runs under its adaptive attack (the runner adds EOT for the randomized FS) at an
l2 radius where that attack breaks some samples, and

* no sample is both certified (``samples.certified``, sound prediction certificates only; for CRMT's
  estimate the per-sample ``certified_bound`` = 1) and broken by the final verdict;
* no attacked sample's feature cosine is below its FCSB at the attack's radius;
* every ``certified.parquet`` bound carries the defense's ``bound_kind`` (``s_hat``, a point estimate,
  is an ``estimate``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from robustbench_mm import api
from robustbench_mm.runner.resolve import CellSpec
from robustbench_mm.runner.store import ResultStore

# FS-PSM: 0.25 is where the cheap preset's FCSB still exists and the EOT attack breaks some samples.
# Plain fs shares fs-psm's certificate code; at 0.25 its attack broke none of these 16 samples
# (measured), which would make its case vacuous, so it is covered through fs-psm.
CASES = [
    ("fs-psm", "fmnist-zeroshot", 0.25, "sound"),
    ("crmt", "fmnist-multimodal", 0.5, "estimate"),  # measured: 1 of 32 broken, 6 with r(x) > 0.5
]


def _run(tmp_path: Path, defense: str, task: str, eps: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    out = tmp_path / defense
    spec = CellSpec(model="clip-tiny", attack="pgd-l2", defense=defense if defense == "crmt" else f"{defense}-quick",
                    task=task, eps=eps, steps=10, n=32 if defense == "crmt" else 16, seed=0, device="cpu")
    summary = api.run_cell(spec, out=out)
    assert summary.status == "ok", summary.row.get("error")
    with ResultStore(out) as store:
        return store.read("samples"), store.read("certified")


@pytest.mark.slow
@pytest.mark.parametrize("defense,task,eps,kind", CASES, ids=[c[0] for c in CASES])
def test_no_sample_certified_and_broken_and_no_cosine_below_its_bound(tmp_path: Path, defense: str, task: str,
                                                                      eps: float, kind: str) -> None:
    samples, certified = _run(tmp_path, defense, task, eps)
    # a point estimate and the per-sample RS labels (prediction, abstention): never bounds
    point = certified["quantity"].isin(["s_hat", "rs_prediction", "rs_abstain"])
    assert (certified.loc[point, "bound_kind"] == "estimate").all()
    assert (certified.loc[~point, "bound_kind"] == kind).all(), certified[["quantity", "bound_kind"]].drop_duplicates()
    broken = samples["success"].astype(bool)
    assert broken.any(), "the attack breaks nothing at this radius: the check would be vacuous"
    # sound prediction certificates: never broken
    assert "certified" in samples
    assert not (samples["certified"].astype(bool) & broken).any(), samples[samples["certified"] & broken]
    attacked = samples[samples["clean_correct"].astype(bool)]
    bound = attacked["certified_bound"].astype(float)
    if defense == "crmt":  # the estimate is checked too (certified_bound = 1: r(x) > eps), never called certified
        assert not samples["certified"].any()
        est = attacked[bound == 1.0]
        assert len(est) > 0, "CRMT certifies nothing at this radius: the check would be vacuous"
        assert not est["success"].astype(bool).any(), est
    else:  # FCSB: the smoothed attacked cosine stays above the bound (MC slack of the n_inf-draw estimate)
        has = attacked[bound.notna()]
        assert len(has) >= len(attacked) // 2, "FCSB abstains at the attack's radius for most samples"
        low = has[has["feature_cosine"] < has["certified_bound"] - 0.02]
        assert low.empty, low[["index", "feature_cosine", "certified_bound"]]
