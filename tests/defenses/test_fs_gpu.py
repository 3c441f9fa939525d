"""GPU suite for FS / FS-PSM (``pytest -m gpu``; skipped without CUDA): the soundness check of
docs/methods.md on llava-tiny and blip2-tiny (clip-tiny runs it in CI on the CPU), FCSB with PSM above
plain FS at every radius, and the runner end to end on CUDA with bf16 autocast."""

from __future__ import annotations

import os

import pytest
import torch

from robustbench_mm.defenses.fs_psm.defense import FeatureSmoothing, FeatureSmoothingPSM
from robustbench_mm.tasks.bundled import fmnist_eval_arrays, to_model_pixels

pytestmark = pytest.mark.gpu
SIGMA = 0.25
DEVICE = os.environ.get("MMROBUST_TEST_DEVICE", "cuda")  # "cpu" rehearses the suite (see tests/conftest.py)


def _model(name: str):  # type: ignore[no-untyped-def]
    from robustbench_mm.models.zoo import LoadOptions, load_model

    return load_model(name, LoadOptions(device=DEVICE))


def _pixels(n: int, size: int) -> torch.Tensor:
    images, _, _ = fmnist_eval_arrays()
    idx = [(5 + 67 * k) % len(images) for k in range(n)]
    return to_model_pixels(images[idx], size).to(DEVICE)


def _defense(psm: bool, **kw):  # type: ignore[no-untyped-def]
    d = (FeatureSmoothingPSM(sigma=SIGMA, train_if_missing=False, **kw) if psm
         else FeatureSmoothing(sigma=SIGMA, **kw))
    d.name = "fs-psm" if psm else "fs"
    return d


@pytest.mark.parametrize("psm", [False, True], ids=["fs", "fs-psm"])
@pytest.mark.parametrize("name", ["llava-tiny", "blip2-tiny"])
def test_fcsb_sound_against_adaptive_embedding_attack(name: str, psm: bool) -> None:
    from defense_helpers import fcsb_soundness

    model = _model(name)
    d = _defense(psm, n_inf=32, n0=32, n=1000, bound="bernstein")
    checked, violations = fcsb_soundness(model, d, _pixels(16, model.image_size), (0.1, 0.25), steps=50,
                                         restarts=3, eot=4, n_check=4096)
    assert not violations, violations
    assert checked >= 16


@pytest.mark.parametrize("name", ["clip-tiny", "llava-tiny", "blip2-tiny"])
def test_psm_raises_mean_fcsb(name: str) -> None:
    from robustbench_mm.types import Batch

    model = _model(name)
    x = _pixels(16, model.image_size)
    batch = Batch(pixels=x, labels=torch.zeros(16, dtype=torch.long), index=torch.arange(16))
    radii = (0.1, 0.25, 0.5)
    means = {}
    for psm in (False, True):
        d = _defense(psm, n0=32, n=1000, bound="bernstein")
        frame = d.certify(d.apply(model), batch, radii)
        f = frame[frame.quantity == "fcsb"]
        means[psm] = f.assign(value=f["value"].fillna(-1.0)).groupby("radius")["value"].mean()
    for r in radii:
        assert means[True][r] >= means[False][r], (r, means)
    assert (means[True] > means[False]).any(), means


@pytest.mark.parametrize("model", ["clip-tiny", "llava-tiny", "blip2-tiny"])
def test_runner_fs_psm_bf16(model: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from robustbench_mm import api
    from robustbench_mm.runner.resolve import CellSpec

    spec = CellSpec(model=model, attack="pgd", defense="fs-psm", n=16, device=DEVICE, dtype="bf16")
    result = api.run_cell(spec, out=str(tmp_path))
    assert result.status == "ok", result.row
    assert (tmp_path / "samples.parquet").exists() and (tmp_path / "certified.parquet").exists()
    assert result.row["device"].startswith(DEVICE) and result.row["dtype"] == "bf16"
