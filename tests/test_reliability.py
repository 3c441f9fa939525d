"""Injected faults: out-of-memory, NaN, SIGKILL mid-grid, concurrent writers, pickle checkpoints."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from robustbench_mm import api
from robustbench_mm.runner import batch_eval as cell_mod
from robustbench_mm.runner.resolve import CellSpec

VOLATILE = ["wall_s", "samples_per_s", "created_at"]


def _spec(model: Path, task: Path, **kw: Any) -> CellSpec:
    base = dict(model=str(model), attack="pgd", task=str(task), n=8, batch_size=8, device="cpu", steps=3)
    base.update(kw)
    return CellSpec(**base)  # type: ignore[arg-type]


@pytest.fixture
def hook() -> Any:
    yield lambda fn: setattr(cell_mod, "BEFORE_ATTACK_HOOK", fn)
    cell_mod.BEFORE_ATTACK_HOOK = None


def test_oom_halves_batch_with_identical_results(random_clip_dir: Path, shapes_task: Path, tmp_path: Path,
                                                 hook: Any) -> None:
    ref = api.run_cell(_spec(random_clip_dir, shapes_task), out=tmp_path / "ref")
    seen: list[int] = []

    def oom_above_two(model: Any, batch: Any) -> None:
        seen.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("injected: CUDA out of memory")

    hook(oom_above_two)
    got = api.run_cell(_spec(random_clip_dir, shapes_task), out=tmp_path / "oom")
    assert got.status == "ok" and max(seen) > 2 and seen[-1] <= 2
    a = pd.read_parquet(tmp_path / "ref" / "samples.parquet").sort_values("index").reset_index(drop=True)
    b = pd.read_parquet(tmp_path / "oom" / "samples.parquet").sort_values("index").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_oom_at_batch_one_fails_cell_and_grid_continues(random_clip_dir: Path, shapes_task: Path, tmp_path: Path,
                                                        hook: Any) -> None:
    from robustbench_mm.runner.grid import GridSpec

    def always_oom(model: Any, batch: Any) -> None:
        raise torch.OutOfMemoryError("injected: CUDA out of memory")

    hook(always_oom)
    cells = api.plan_grid(GridSpec([str(random_clip_dir)], ["pgd", "pgd-l2"], ["none"], [str(shapes_task)]), None,
                          _spec(random_clip_dir, shapes_task))
    summaries = api.run_grid(cells, out=tmp_path / "g")
    assert [s.status for s in summaries] == ["failed", "failed"]  # the second cell ran after the first failed
    asr = pd.read_parquet(tmp_path / "g" / "asr.parquet")
    assert len(asr) == 2 and (asr["status"] == "failed").all()
    assert asr["error"].str.contains("OutOfMemoryError").all()
    assert asr["robust_accuracy"].isna().all() and asr["asr"].isna().all()
    cell_mod.BEFORE_ATTACK_HOOK = None
    again = api.run_grid(cells, out=tmp_path / "g")  # failed cells are retried on the next run
    assert [s.status for s in again] == ["ok", "ok"]
    assert len(pd.read_parquet(tmp_path / "g" / "asr.parquet")) == 2


def test_nan_loss_recorded_as_failed(random_clip_dir: Path, shapes_task: Path, tmp_path: Path, hook: Any) -> None:
    hook(lambda model, batch: setattr(model, "logit_scale_value", float("nan")))
    got = api.run_cell(_spec(random_clip_dir, shapes_task, n=12), out=tmp_path / "nan")
    row = pd.read_parquet(tmp_path / "nan" / "asr.parquet").iloc[0]
    if got.status == "ok":  # only possible if no sample was clean-correct, so nothing was attacked
        assert row["clean_accuracy"] == 0
    else:
        assert row["status"] == "failed" and ("NaN" in row["error"] or "nan" in row["error"])
        assert pd.isna(row["robust_accuracy"]) and pd.isna(row["asr"])


def _grid_cmd(model: Path, task: Path, out: Path) -> list[str]:
    exe = str(Path(sys.executable).parent / "mmrobust")
    return [exe, "grid", "--models", str(model), "--attacks", "none,pgd,pgd-l2,pgd-100", "--tasks", str(task),
            "--n", "6", "--steps", "2", "--batch-size", "3", "--device", "cpu", "--out", str(out)]


def _rows(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    asr = pd.read_parquet(out / "asr.parquet").drop(columns=VOLATILE).sort_values("cell_id").reset_index(drop=True)
    samples = pd.read_parquet(out / "samples.parquet").sort_values(["cell_id", "index"]).reset_index(drop=True)
    return asr, samples


@pytest.mark.slow
def test_sigkill_mid_grid_then_resume_loses_nothing(random_clip_dir: Path, shapes_task: Path, tmp_path: Path) -> None:
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_grid_cmd(random_clip_dir, shapes_task, ref_out), check=True, capture_output=True, timeout=600)
    start = time.monotonic()  # a second, warm run times the grid: kill times scale with it, so kills land
    subprocess.run(_grid_cmd(random_clip_dir, shapes_task, tmp_path / "warm"), check=True, capture_output=True,
                   timeout=600)
    full = time.monotonic() - start
    rng = random.Random(0)
    kills = 0
    for _ in range(12):
        proc = subprocess.Popen(_grid_cmd(random_clip_dir, shapes_task, out), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0.35, 0.8) * full)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0
        break
    else:
        subprocess.run(_grid_cmd(random_clip_dir, shapes_task, out), check=True, capture_output=True, timeout=600)
    assert kills >= 1, "the grid finished before any kill; the test proved nothing"
    ref_asr, ref_samples = _rows(ref_out)
    asr, samples = _rows(out)
    assert asr["cell_id"].is_unique and len(asr) == len(ref_asr) == 4
    assert not samples.duplicated(["cell_id", "index"]).any()
    cols = [c for c in ref_asr.columns if c not in ("git_commit", "device")]
    pd.testing.assert_frame_equal(asr[cols], ref_asr[cols])
    pd.testing.assert_frame_equal(samples, ref_samples)


def test_two_grids_on_one_store(random_clip_dir: Path, shapes_task: Path, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    first = subprocess.Popen(_grid_cmd(random_clip_dir, shapes_task, out), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / ".lock").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    second = subprocess.run(_grid_cmd(random_clip_dir, shapes_task, out), capture_output=True, text=True, timeout=600)
    first.communicate(timeout=600)
    assert first.returncode == 0
    if second.returncode == 2:
        assert "in use by pid" in second.stderr
    else:  # the first had already finished: the second then skips every cell
        assert second.returncode == 0
    asr, samples = _rows(out)
    assert asr["cell_id"].is_unique and len(asr) == 4 and not samples.duplicated(["cell_id", "index"]).any()


def test_pickle_checkpoint_needs_opt_in(random_clip_dir: Path, tmp_path: Path) -> None:
    import shutil

    from transformers import CLIPModel

    from robustbench_mm.errors import WeightsError
    from robustbench_mm.models.zoo import LoadOptions, load_model

    pkl = tmp_path / "pickled"
    shutil.copytree(random_clip_dir, pkl)
    (pkl / "model.safetensors").unlink()
    model = CLIPModel.from_pretrained(random_clip_dir)
    torch.save(model.state_dict(), pkl / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="--allow-pickle"):
        load_model(str(pkl))
    loaded = load_model(str(pkl), LoadOptions(allow_pickle=True))
    x = torch.rand(2, 3, 32, 32)
    ref = load_model(str(random_clip_dir))
    assert torch.allclose(loaded.encode_image(x), ref.encode_image(x), atol=1e-5)


def test_masked_gradients_flag_the_cell_unreliable(random_clip_dir: Path, shapes_task: Path, tmp_path: Path,
                                                    hook: Any) -> None:
    """A model whose input gradient is zero (quantised input) must not yield a trusted robustness number."""
    import json

    def quantise_inputs(model: Any, batch: Any) -> None:
        if not hasattr(model, "_orig_classify"):
            model._orig_classify = model.classify
            model.classify = lambda p, prompts: model._orig_classify((p * 4).round() / 4, prompts)

    hook(quantise_inputs)
    api.run_cell(_spec(random_clip_dir, shapes_task, n=12), out=tmp_path / "masked")
    row = pd.read_parquet(tmp_path / "masked" / "asr.parquet").iloc[0]
    checks = json.loads(row["sanity"])
    assert checks["zero_gradient"].startswith("fail") and bool(row["unreliable"])
    cell_mod.BEFORE_ATTACK_HOOK = None
    api.run_cell(_spec(random_clip_dir, shapes_task, n=12), out=tmp_path / "honest")
    row = pd.read_parquet(tmp_path / "honest" / "asr.parquet").iloc[0]
    assert json.loads(row["sanity"]) == {"validity_guard": "pass", "zero_gradient": "pass"}
    assert not bool(row["unreliable"])


def test_remote_code_refusal_names_the_flag() -> None:
    from robustbench_mm.errors import WeightsError
    from robustbench_mm.models.llava import hf_from_pretrained
    from robustbench_mm.models.zoo import LoadOptions

    class NeedsRemoteCode:
        @staticmethod
        def from_pretrained(*args: Any, **kwargs: Any) -> Any:
            assert "trust_remote_code" not in kwargs  # never forwarded unless the user opted in
            raise ValueError("The repository contains custom code; set trust_remote_code=True to run it.")

    with pytest.raises(WeightsError, match="--trust-remote-code"):
        hf_from_pretrained(NeedsRemoteCode, "org/custom", LoadOptions(), {"trust_remote_code": False})
