"""GPU suite (``pytest -m gpu``; skipped without CUDA, ``MMROBUST_TEST_DEVICE=cpu`` rehearses it):
the precision policy (bf16 search, fp32 verdict) against an all-fp32 run, generative attacks on
CUDA, and a training defense stepping under bf16 autocast."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.gpu
DEVICE = os.environ.get("MMROBUST_TEST_DEVICE", "cuda")


def _cell(tmp: Path, **kw):  # type: ignore[no-untyped-def]
    from robustbench_mm import api
    from robustbench_mm.runner.resolve import CellSpec

    result = api.run_cell(CellSpec(device=DEVICE, **kw), out=str(tmp))
    assert result.status == "ok", result.row
    return result.row


@pytest.mark.parametrize("attack", ["pgd", "apgd-ce"])
def test_bf16_search_within_1pp_of_fp32(attack: str, tmp_path: Path) -> None:
    """Design 'precision policy': robust accuracy with the search under bf16 autocast stays within
    1pp of the all-fp32 run (verdicts are fp32 in both)."""
    rows = {d: _cell(tmp_path / d, model="clip-tiny", attack=attack, n=1000, batch_size=500, dtype=d)
            for d in ("fp32", "bf16")}
    assert rows["bf16"]["precision_policy"] == "search=bf16,verdict=fp32"
    assert rows["fp32"]["precision_policy"] == "search=fp32,verdict=fp32"
    assert abs(rows["bf16"]["robust_accuracy"] - rows["fp32"]["robust_accuracy"]) <= 0.01, rows


@pytest.mark.parametrize("model,task", [("llava-tiny", "fmnist-vqa"), ("blip2-tiny", "fmnist-caption")])
def test_generative_pgd_on_gpu_matches_the_cpu_thresholds(model: str, task: str, tmp_path: Path) -> None:
    row = _cell(tmp_path, model=model, attack="pgd", task=task, n=64, dtype="bf16")
    assert row["asr"] >= 0.5, row  # issue 4: PGD linf 8/255 on an undefended tiny model
    samples = pd.read_parquet(tmp_path / "samples.parquet")
    assert (samples["linf"] <= 8 / 255 + 1e-6).all()


def test_training_defense_steps_under_bf16_autocast(tmp_path: Path) -> None:
    import robustbench_mm.defenses.registry_imports  # noqa: F401
    from robustbench_mm.defenses.base import DEFENSES
    from robustbench_mm.models.zoo import LoadOptions, load_model

    for name in ("clip-tiny", "llava-tiny"):
        model = load_model(name, LoadOptions(device=DEVICE))
        d = DEFENSES.get("topk-rs")(steps=4, batch_size=16, pgd_steps=2, eval_n=16, eval_steps=2)
        d.name = "topk-rs"
        out = d.fit(model, tmp_path / name, stop_after=3)
        assert out["step"] == 3 and all(torch.isfinite(torch.tensor(out["losses"])))


@pytest.mark.parametrize("member", ["fab-t", "square"])
def test_own_late_members_break_the_same_samples_on_the_device_as_on_cpu(member: str) -> None:
    """Our FAB-T and Square are deterministic given the seed (Square draws on CPU): on the device
    they break the samples they break on CPU, up to one borderline sample of 64."""
    import robustbench_mm.attacks.registry_imports  # noqa: F401
    from robustbench_mm.attacks import build
    from robustbench_mm.attacks.objectives import ClassifierObjective
    from robustbench_mm.attacks.torchattacks_bridge import LogitsModule
    from robustbench_mm.models.zoo import LoadOptions, load_model
    from robustbench_mm.tasks.bundled import FMNIST_CLASSES, fmnist_eval_arrays, to_model_pixels

    images, labels, _ = fmnist_eval_arrays()
    broken = {}
    for device in ("cpu", DEVICE):
        model = LogitsModule(load_model("clip-tiny", LoadOptions(device=device, dtype="fp32")),
                             ClassifierObjective([f"a photo of a {c}" for c in FMNIST_CLASSES])).eval()
        x, y = to_model_pixels(images[:64], 32).to(device), torch.as_tensor(labels[:64]).to(device)
        adv = build(member, eps=4 / 255, steps=100 if member == "fab-t" else 500)(model, x, y)
        with torch.no_grad():
            broken[device] = (model(adv).argmax(1) != y).cpu()
    assert int((broken["cpu"] != broken[DEVICE]).sum()) <= 1, broken
