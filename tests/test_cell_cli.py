"""End-to-end cells through the API and the CLI on a random-init CLIP saved to disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from robustbench_mm import api
from robustbench_mm.runner.resolve import CellSpec

ASR_COLUMNS = ["cell_id", "model", "attack", "defense", "task", "norm", "eps", "steps", "seed", "n",
               "clean_accuracy", "robust_accuracy", "asr", "asr_low", "asr_high", "max_linf", "max_l2", "wall_s",
               "samples_per_s", "device", "dtype", "precision_policy", "status", "error", "unreliable", "sanity",
               "created_at", "git_commit", "versions", "model_revision", "schema_version"]
SAMPLE_COLUMNS = ["cell_id", "index", "label", "clean_pred", "adv_pred", "clean_correct", "success", "linf", "l2",
                  "feature_cosine", "certified_bound"]


def _spec(model: Path, task: Path, **kw: object) -> CellSpec:
    return CellSpec(model=str(model), attack="pgd", task=str(task), n=12, batch_size=5, device="cpu",
                    **kw)  # type: ignore[arg-type]


def test_cell_writes_tables_and_resumes(random_clip_dir: Path, shapes_task: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    first = api.run_cell(_spec(random_clip_dir, shapes_task, steps=3), out=out)
    assert first.status == "ok"
    asr = pd.read_parquet(out / "asr.parquet")
    samples = pd.read_parquet(out / "samples.parquet")
    assert set(ASR_COLUMNS) <= set(asr.columns) and set(SAMPLE_COLUMNS) <= set(samples.columns)
    assert len(samples) == 12 and samples["index"].is_unique
    row = asr.iloc[0]
    assert row["max_linf"] <= 8 / 255 + 1e-6 and row["n"] == 12
    assert row["asr_low"] <= row["asr"] <= row["asr_high"] or row["clean_accuracy"] == 0
    # robust accuracy can never exceed clean accuracy: only clean-correct samples can stay correct
    assert row["robust_accuracy"] <= row["clean_accuracy"] + 1e-9
    again = api.run_cell(_spec(random_clip_dir, shapes_task, steps=3), out=out)
    assert again.status == "skipped"
    forced = api.run_cell(_spec(random_clip_dir, shapes_task, steps=3), out=out, force=True)
    assert forced.status == "ok"
    other = api.run_cell(_spec(random_clip_dir, shapes_task, steps=2), out=out)  # a different cell
    assert other.cell_id != first.cell_id
    asr = pd.read_parquet(out / "asr.parquet")
    assert sorted(asr["cell_id"]) == sorted([first.cell_id, other.cell_id])
    assert len(pd.read_parquet(out / "samples.parquet")) == 24


def test_sample_choice_independent_of_batch_size(random_clip_dir: Path, shapes_task: Path, tmp_path: Path) -> None:
    a = api.run_cell(CellSpec(model=str(random_clip_dir), attack="none", task=str(shapes_task), n=10, batch_size=3,
                              device="cpu"), out=tmp_path / "a")
    b = api.run_cell(CellSpec(model=str(random_clip_dir), attack="none", task=str(shapes_task), n=10, batch_size=10,
                              device="cpu"), out=tmp_path / "b")
    sa = pd.read_parquet(tmp_path / "a" / "samples.parquet")
    sb = pd.read_parquet(tmp_path / "b" / "samples.parquet")
    assert a.cell_id == b.cell_id  # batch size is not part of the cell
    assert list(sa["index"]) == list(sb["index"]) and list(sa["clean_pred"]) == list(sb["clean_pred"])
    assert a.row["asr"] == 0 or pd.isna(a.row["asr"])


@pytest.mark.slow
def test_compile_matches_eager(random_clip_dir: Path, shapes_task: Path, tmp_path: Path) -> None:
    """``--compile`` is an execution option: same cell, same samples, numbers equal up to float
    reordering (one borderline sample of 12 may flip), and the row says it was compiled."""
    eager = api.run_cell(_spec(random_clip_dir, shapes_task, steps=3), out=tmp_path / "e")
    compiled = api.run_cell(_spec(random_clip_dir, shapes_task, steps=3, compile=True), out=tmp_path / "c")
    assert compiled.status == "ok" and compiled.cell_id == eager.cell_id
    assert compiled.row["precision_policy"] == "search=fp32,verdict=fp32,compiled"
    se = pd.read_parquet(tmp_path / "e" / "samples.parquet")
    sc = pd.read_parquet(tmp_path / "c" / "samples.parquet")
    assert list(se["clean_pred"]) == list(sc["clean_pred"])
    assert (se["adv_pred"] == sc["adv_pred"]).sum() >= len(se) - 1
    assert (sc["linf"] <= 8 / 255 + 1e-6).all()


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "mmrobust"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_cli_run_show_and_skip(random_clip_dir: Path, shapes_task: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["run", "--model", str(random_clip_dir), "--task", str(shapes_task), "--attack", "pgd", "--eps", "4/255",
            "--steps", "2", "--n", "6", "--device", "cpu", "--out", str(out)]
    r1 = _cli(*args)
    assert r1.returncode == 0, r1.stderr
    assert "clean" in r1.stdout and (out / "asr.parquet").exists()
    r2 = _cli(*args)
    assert r2.returncode == 0 and "skipped" in r2.stdout
    shown = _cli("show", str(out))
    assert shown.returncode == 0 and "shapes-zeroshot" in shown.stdout
    asr = pd.read_parquet(out / "asr.parquet")
    assert len(asr) == 1 and asr["eps"].iloc[0] == pytest.approx(4 / 255)


@pytest.mark.parametrize("args,needle", [
    (["run", "--model", "clip-tinyy"], "Did you mean: clip-tiny"),
    (["run", "--model", "clip-tiny", "--attack", "pgdd"], "Did you mean: pgd"),
    (["run", "--model", "clip-tiny", "--defense", "nonee"], "Did you mean: none"),
    (["run", "--model", "clip-tiny", "--task", "fmnist-zeroshott"], "Did you mean: fmnist-zeroshot"),
    (["run", "--model", "clip-tiny", "--eps", "0"], "eps"),
    (["run", "--model", "clip-tiny", "--eps", "-4/255"], "eps"),
    (["run", "--model", "clip-tiny", "--eps", "2"], "eps"),
    (["run", "--model", "clip-tiny", "--eps", "abc"], "eps"),
    (["run", "--model", "clip-tiny", "--steps", "0"], "steps"),
    (["run", "--model", "clip-tiny", "--norm", "l1"], "norm"),
    (["run", "--model", "clip-tiny", "--dtype", "fp8"], "dtype"),
    (["run", "--model", "clip-tiny", "--batch-size", "0"], "batch-size"),
    (["run", "--model", "clip-tiny", "--n", "999999"], "--n"),
    (["run", "--model", "clip-tiny", "--attack", "/nonexistent/x.yaml"], "does not exist"),
    (["run", "--model", "clip-tiny", "--certify"], "certif"),
    (["run", "--model", "clip-tiny", "--device", "tpu"], "device"),
    (["run", "--model", "clip-tiny", "--device", "cuda"], "cuda"),
    (["list", "widgets"], "models"),
    (["run", "--model", "clip-tiny", "--task", "fmnist-vqa"], "fmnist-zeroshot"),
    (["run", "--model", "clip-tiny", "--task", "fmnist-caption"], "fmnist-zeroshot"),
    (["grid"], "--preset"),
    (["grid", "--preset", "smok"], "Did you mean: smoke"),
    (["run"], "--model"),
    (["run", "--model", "clip-tiny", "--bogus"], "bogus"),
])
def test_cli_bad_input_one_line_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    import torch

    if "--device" in args and args[args.index("--device") + 1] == "cuda" and torch.cuda.is_available():
        pytest.skip("cuda is available here")
    r = _cli(*args, "--out", str(tmp_path / "o")) if args[0] == "run" and "--bogus" not in args and len(args) > 1 \
        else _cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert needle.lower() in lines[0].lower() and "Traceback" not in r.stderr


def test_bad_input_leaves_store_untouched(random_clip_dir: Path, shapes_task: Path, tmp_path: Path) -> None:
    out = tmp_path / "keep"
    api.run_cell(CellSpec(model=str(random_clip_dir), attack="none", task=str(shapes_task), n=4, device="cpu"),
                 out=out)
    before = {p: p.read_bytes() for p in out.rglob("*.parquet")}
    r = _cli("run", "--model", str(random_clip_dir), "--task", str(shapes_task), "--eps", "0", "--out", str(out))
    assert r.returncode == 2
    assert {p: p.read_bytes() for p in out.rglob("*.parquet")} == before


def test_foreign_out_dir_refused(tmp_path: Path, random_clip_dir: Path, shapes_task: Path) -> None:
    out = tmp_path / "foreign"
    out.mkdir()
    pd.DataFrame({"a": [1]}).to_parquet(out / "asr.parquet")
    r = _cli("run", "--model", str(random_clip_dir), "--task", str(shapes_task), "--attack", "none", "--n", "2",
             "--out", str(out))
    assert r.returncode == 2 and "not an mmrobust store" in r.stderr
    assert list(pd.read_parquet(out / "asr.parquet").columns) == ["a"]


def test_list_json_models() -> None:
    import json

    r = _cli("list", "models", "--json")
    assert r.returncode == 0
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["clip-tiny"]["bundled"] and rows["clip-tiny"]["family"] == "clip"
    assert rows["llava-1.5-7b"]["source"] == "llava-hf/llava-1.5-7b-hf"
    assert {"name", "family", "source", "bundled", "available"} <= set(rows["blip2-opt-2.7b"])
