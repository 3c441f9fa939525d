"""Sharded cells: shards 1..k of a cell, merged, equal the unsharded run row for row (randomized
defense and certificates included), and every way of mixing shards up fails with one clear line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from robustbench_mm import api
from robustbench_mm.errors import ConfigError, StoreError
from robustbench_mm.runner.resolve import CellSpec
from robustbench_mm.runner.shards import interleave, parse_shard, shard_size
from robustbench_mm.runner.store import ResultStore
from tests.cli_invoke import invoke

# fs is randomized (its inference noise generator runs across the batches) and certifies; l2 so the
# certificate columns of samples.parquet are filled. 7 samples in batches of 2: 4 batches, the last short.
SPEC = CellSpec(model="clip-tiny", attack="pgd-l2", defense="fs-quick", task="fmnist-zeroshot", steps=2, n=7,
                batch_size=2, seed=3, device="cpu")
NUMBERS = ["n", "clean_accuracy", "robust_accuracy", "asr", "asr_low", "asr_high", "max_linf", "max_l2",
           "certified_accuracy", "feature_cosine_attacked", "cell_id", "protocol", "verdict_draws"]


def _tables(out: Path) -> dict[str, pd.DataFrame]:
    with ResultStore(out) as store:
        return {t: store.read(t) for t in ("asr", "samples", "certified")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shards")
    api.run_cell(SPEC, out=root / "whole")
    for i in (1, 2, 3):
        api.run_cell(replace(SPEC, shard=f"{i}/3"), out=root / f"s{i}")
    return {"root": root, "whole": root / "whole", **{f"s{i}": root / f"s{i}" for i in (1, 2, 3)}}


def test_merged_shards_equal_the_whole_run(runs: dict[str, Path]) -> None:
    merged = runs["root"] / "merged"
    ids = api.merge_shards([runs["s2"], runs["s1"], runs["s3"]], merged)  # any order of the stores
    whole, got = _tables(runs["whole"]), _tables(merged)
    assert ids == list(whole["asr"]["cell_id"])
    pd.testing.assert_frame_equal(got["samples"], whole["samples"], check_exact=True)
    pd.testing.assert_frame_equal(got["certified"], whole["certified"], check_exact=True)
    assert not whole["certified"].empty and "certified_bound" in whole["samples"]
    pd.testing.assert_frame_equal(got["asr"][NUMBERS], whole["asr"][NUMBERS], check_exact=True)
    assert "shard" not in got["asr"] or got["asr"]["shard"].isna().all()


def test_each_shard_holds_only_its_batches(runs: dict[str, Path]) -> None:
    whole = _tables(runs["whole"])["samples"]["index"].tolist()
    batches = [whole[j:j + 2] for j in range(0, 7, 2)]
    for i in (1, 2, 3):
        got = _tables(runs[f"s{i}"])
        expect = [x for j, b in enumerate(batches) if j % 3 == i - 1 for x in b]
        assert got["samples"]["index"].tolist() == expect
        assert got["asr"]["shard"].tolist() == [f"{i}/3"] and int(got["asr"]["n"].iloc[0]) == len(expect)
        assert (runs[f"s{i}"] / "cells" / got["asr"]["cell_id"].iloc[0] / "shard_certificates.parquet").is_file()


def test_a_missing_or_repeated_shard_is_refused_and_nothing_is_written(runs: dict[str, Path]) -> None:
    for stores in ([runs["s1"], runs["s3"]], [runs["s1"], runs["s1"], runs["s2"], runs["s3"]]):
        out = runs["root"] / "bad"
        with pytest.raises(StoreError, match="exactly once"):
            api.merge_shards(stores, out)
        assert not (out / "asr.parquet").exists()
    with pytest.raises(StoreError, match="shard stores only"):
        api.merge_shards([runs["whole"], runs["s1"]], runs["root"] / "bad2")


def test_a_store_never_mixes_a_shard_with_the_whole_cell(runs: dict[str, Path]) -> None:
    before = _tables(runs["s1"])["samples"]
    with pytest.raises(StoreError, match="holds shard 1/3"):
        api.run_cell(SPEC, out=runs["s1"])
    with pytest.raises(StoreError, match="holds the whole cell"):
        api.run_cell(replace(SPEC, shard="2/3"), out=runs["whole"])
    pd.testing.assert_frame_equal(_tables(runs["s1"])["samples"], before)


def test_the_leaderboard_refuses_an_unmerged_shard_store(runs: dict[str, Path]) -> None:
    from robustbench_mm.report.stores import read_stores

    with pytest.raises(StoreError, match="mmrobust merge"):
        read_stores([runs["s1"]])


@pytest.mark.parametrize("text", ["0/2", "3/2", "1-2", "a/b", "1/0"])
def test_bad_shard_text(text: str) -> None:
    with pytest.raises(ConfigError, match="--shard"):
        parse_shard(text)


def test_cli_shard_then_merge(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = invoke(monkeypatch, capsys, "run", "--model", "clip-tiny", "--shard", "0/2",
                          "--out", str(runs["root"] / "cli-bad"))
    assert code == 2 and "--shard" in err and not (runs["root"] / "cli-bad").exists()
    out = runs["root"] / "cli-merged"
    code, stdout, _ = invoke(monkeypatch, capsys, "merge", str(runs["s1"]), str(runs["s2"]), str(runs["s3"]),
                             "--out", str(out))
    assert code == 0 and "merged 1 cell" in stdout
    code, _, err = invoke(monkeypatch, capsys, "merge", str(runs["s1"]), str(runs["s2"]), str(runs["s3"]),
                          "--out", str(out))
    assert code == 2 and "--force" in err


def test_a_retrieval_cell_cannot_be_sharded() -> None:
    from robustbench_mm.runner.resolve import resolve

    with pytest.raises(ConfigError, match="whole gallery"):
        resolve(CellSpec(model="clip-tiny", attack="pgd", task="fmnist-retrieval", n=8, shard="1/2", device="cpu"))


def test_interleave_and_sizes() -> None:
    parts = [pd.DataFrame({"i": [0, 1, 6]}), pd.DataFrame({"i": [2, 3]}), pd.DataFrame({"i": [4, 5]})]
    assert interleave(parts, 2)["i"].tolist() == list(range(7))
    assert [shard_size(7, 2, (i, 3)) for i in (1, 2, 3)] == [3, 2, 2] and shard_size(7, 2, None) == 7
