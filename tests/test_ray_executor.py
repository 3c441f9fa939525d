"""Ray executor on a local 2-CPU Ray: same rows as the local executor; a dying worker is retried."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from robustbench_mm import api
from robustbench_mm.runner.executors import CRASH_ENV
from robustbench_mm.runner.grid import GridSpec
from robustbench_mm.runner.resolve import CellSpec

ray = pytest.importorskip("ray")

# differ between two runs of the same cell by construction
VOLATILE = ["wall_s", "samples_per_s", "created_at"]


@pytest.fixture(scope="module")
def local_ray():  # type: ignore[no-untyped-def]
    # the env var reaches every worker; it kills the first attempt of every cell
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {CRASH_ENV: "*", "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def _rows(out: Path) -> pd.DataFrame:
    df = pd.read_parquet(out / "asr.parquet").drop(columns=VOLATILE)
    return df.sort_values("cell_id").reset_index(drop=True)


@pytest.mark.slow
def test_ray_grid_equals_local_and_retries_dead_workers(local_ray, random_clip_dir: Path, shapes_task: Path,
                                                        tmp_path: Path) -> None:
    template = CellSpec(model="", n=8, batch_size=8, device="cpu", steps=2)
    grid = GridSpec((str(random_clip_dir),), ("none", "pgd"), ("none",), (str(shapes_task),))
    cells = api.plan_grid(grid, None, template)
    assert len(cells) == 2

    local = api.run_grid(cells, out=tmp_path / "local")
    remote = api.run_grid(cells, out=tmp_path / "ray", executor="ray")
    assert [s.status for s in local] == [s.status for s in remote] == ["ok", "ok"]

    a, b = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6)
    sa = pd.read_parquet(tmp_path / "local" / "samples.parquet").sort_values(["cell_id", "index"])
    sb = pd.read_parquet(tmp_path / "ray" / "samples.parquet").sort_values(["cell_id", "index"])
    pd.testing.assert_frame_equal(sa.reset_index(drop=True), sb.reset_index(drop=True), check_exact=False,
                                  rtol=1e-4, atol=1e-5)

    # every first attempt died with os._exit: each cell was resubmitted, committed once, and says so
    assert len(pd.read_parquet(tmp_path / "ray" / "asr.parquet")) == 2
    for cell in cells:
        meta = json.loads((tmp_path / "ray" / "cells" / cell.cell_id / "meta.json").read_text())
        assert meta["executor"] == "ray" and meta["attempts"] == 2
        assert len(meta["retry_errors"]) == 1 and "attempt 1" in meta["retry_errors"][0]

    # resume: the driver skips finished cells without submitting anything
    again = api.run_grid(cells, out=tmp_path / "ray", executor="ray")
    assert [s.status for s in again] == ["skipped", "skipped"]


@pytest.mark.slow
def test_ray_shards_a_cell_and_commits_it_equal_to_the_whole_cell(local_ray, tmp_path: Path) -> None:
    """``--shards 3``: a randomized, certifying cell split into 3 Ray tasks (each first attempt dies and
    is retried) commits once, with the rows and certificates of the local unsharded run."""
    spec = CellSpec(model="clip-tiny", attack="pgd-l2", defense="fs-quick", task="fmnist-zeroshot", steps=2, n=5,
                    batch_size=2, seed=1, device="cpu")
    cells = [api.resolve_cell(spec)]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (OMP_NUM_THREADS=1): same float reduction order, same bits
    try:
        local = api.run_grid(cells, out=tmp_path / "local")
    finally:
        torch.set_num_threads(threads)
    remote = api.run_grid(cells, out=tmp_path / "ray", executor="ray", shards=3)
    assert [s.status for s in local] == [s.status for s in remote] == ["ok"]
    for table in ("samples", "certified"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ray" / f"{table}.parquet"),
                                      pd.read_parquet(tmp_path / "local" / f"{table}.parquet"), check_exact=True)
    a, b = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    for col in ("cell_id", "n", "clean_accuracy", "robust_accuracy", "asr", "certified_accuracy"):
        assert a[col].tolist() == b[col].tolist(), col
    meta = json.loads((tmp_path / "ray" / "cells" / cells[0].cell_id / "meta.json").read_text())
    assert meta["shards"] == 3 and meta["attempts"] == [2, 2, 2] and len(meta["retry_errors"]) == 3


def test_shards_need_the_ray_executor(tmp_path: Path) -> None:
    from robustbench_mm.errors import ConfigError

    cells = [api.resolve_cell(CellSpec(model="clip-tiny", attack="none", n=2, device="cpu"))]
    with pytest.raises(ConfigError, match="--shards only applies to --executor ray"):
        api.run_grid(cells, out=tmp_path / "s", shards=2)
    assert not (tmp_path / "s" / "asr.parquet").exists()
