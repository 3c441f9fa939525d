"""The standard protocol's verdicts do not depend on how a cell is batched (v3: every member draws
per sample), so survivors may be pooled into any batch size. v2's torchattacks Square shares one
window per query across its batch, which is why v2 does not have this property."""

from __future__ import annotations

import pytest
import torch

from robustbench_mm.benchmarking import benchmark_module

EPS = 8 / 255  # leaves a mix: APGD breaks most, a handful reach the late members


@pytest.mark.slow
def test_standard_protocol_gives_the_same_rows_in_any_batch_size(fmnist_model, eval_set) -> None:
    model, _ = fmnist_model
    x, y = eval_set.x[:24], eval_set.y[:24]
    runs = [benchmark_module(model, x, y, eps=EPS, version="standard", batch_size=b, return_adversarial=True)
            for b in (24, 10)]
    a, b = runs
    assert a.protocol == "mm-aa/standard/v4"
    cols = ["index", "adv_correct", "broken_by", "final_adv_correct"]
    assert a.samples[cols].equals(b.samples[cols])
    assert torch.equal(a.adversarial, b.adversarial)
    # survivors ran through every member, Square's 5,000 queries included
    assert 0 < int(a.samples["adv_correct"].sum()) < int(a.samples["clean_correct"].sum())
