"""``mmrobust leaderboard --verify RELEASE``: a release's entries re-derive from its ``samples/`` rows;
a tampered sample, a tampered number, a swapped rank, a missing samples file or a certified accuracy
without per-sample certificates fail with exit 1, naming the entry."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from robustbench_mm.report.release import write_release
from robustbench_mm.runner.store import ResultStore
from tests.report.conftest import add_cell

T, F = True, False
CLEAN = [T] * 16 + [F] * 4
SLUG_A = "fmnist-zeroshot--clip-tiny--none--linf--8-255"
SLUG_B = "fmnist-zeroshot--clip-tiny--tecoa--linf--8-255"
SLUG_D = "fmnist-zeroshot--clip-tiny--fs--l2--0.5"
CERT_D = [T] * 7 + [F] * 13  # 7/20 = 0.35 certified, as the aggregate row says


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release of three entries: two ranked linf entries and one l2 entry with per-sample certificates."""
    base = tmp_path_factory.mktemp("verify")
    store = ResultStore(base / "store").open()
    add_cell(store, "a", clean=CLEAN, adv=[F] * 12 + [T] * 8)                    # robust 4/20
    add_cell(store, "b", defense="tecoa", clean=CLEAN, adv=[F] * 4 + [T] * 16)    # robust 12/20
    add_cell(store, "d", defense="fs", norm="l2", eps=0.5, clean=CLEAN, adv=[F] * 6 + [T] * 14,
             certified=[("certified_accuracy", 0.5, 0.35, "sound")], certified_samples=CERT_D)
    write_release([store.root], base / "release")
    return base / "release"


@pytest.fixture
def copy(release: Path, tmp_path: Path) -> Path:
    out = tmp_path / "release"
    shutil.copytree(release, out)
    return out


def _fails(cli, root: Path, *names: str) -> str:  # type: ignore[no-untyped-def]
    code, out, err = cli("leaderboard", "--verify", str(root))
    assert code == 1, out + err
    assert "verified" not in out
    for name in names:
        assert name in err, err
    return err


def test_release_writes_samples_per_entry(release: Path) -> None:
    entries = pd.read_parquet(release / "entries.parquet")
    assert sorted(p.stem for p in (release / "samples").iterdir()) == sorted(Path(d).stem for d in entries["detail"])
    s = pd.read_parquet(release / "samples" / f"{SLUG_D}.parquet")
    assert list(s.columns[:8]) == ["index", "label", "clean_pred", "adv_pred", "clean_correct", "adv_correct",
                                   "success", "broken_by"]
    assert s["certified"].tolist() == CERT_D
    # no certificate, no flag: a column of False would read as "0% certified"
    assert "certified" not in pd.read_parquet(release / "samples" / f"{SLUG_A}.parquet")


def test_verify_passes_on_a_fresh_release(cli, release: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("leaderboard", "--verify", str(release))
    assert code == 0, err
    assert "verified 3 entries" in out


def test_a_tampered_sample_fails(cli, copy: Path) -> None:  # type: ignore[no-untyped-def]
    path = copy / "samples" / f"{SLUG_B}.parquet"
    s = pd.read_parquet(path)
    i = s.index[s["adv_correct"]][0]
    s.loc[i, "adv_correct"] = False
    s.to_parquet(path, index=False)
    _fails(cli, copy, SLUG_B, "robust_accuracy", "0.6", "0.55")


def test_a_tampered_robust_accuracy_fails(cli, copy: Path) -> None:  # type: ignore[no-untyped-def]
    df = pd.read_parquet(copy / "entries.parquet")
    df.loc[df["defense"] == "none", "robust_accuracy"] += 1e-6
    df.to_parquet(copy / "entries.parquet", index=False)
    _fails(cli, copy, SLUG_A, "robust_accuracy")


def test_a_swapped_rank_fails(cli, copy: Path) -> None:  # type: ignore[no-untyped-def]
    df = pd.read_parquet(copy / "entries.parquet")
    linf = df["norm"] == "linf"
    assert sorted(df.loc[linf, "rank"]) == [1, 2]
    df.loc[linf, "rank"] = 3 - df.loc[linf, "rank"]
    df.to_parquet(copy / "entries.parquet", index=False)
    _fails(cli, copy, "rank", "published 2, recomputed 1")


def test_a_tampered_certified_sample_fails(cli, copy: Path) -> None:  # type: ignore[no-untyped-def]
    path = copy / "samples" / f"{SLUG_D}.parquet"
    s = pd.read_parquet(path)
    s.loc[0, "certified"] = False
    s.to_parquet(path, index=False)
    _fails(cli, copy, SLUG_D, "certified_accuracy")


def test_a_missing_samples_file_fails(cli, copy: Path) -> None:  # type: ignore[no-untyped-def]
    (copy / "samples" / f"{SLUG_A}.parquet").unlink()
    _fails(cli, copy, SLUG_A, "samples")


def test_a_release_without_samples_fails(cli, copy: Path) -> None:  # type: ignore[no-untyped-def]
    shutil.rmtree(copy / "samples")  # as v1, made before samples were written
    _fails(cli, copy, "samples/", "no per-sample rows")


def test_certified_accuracy_without_per_sample_certificates_fails(cli, make_store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = make_store("s", [dict(cell_id="d", defense="fs", norm="l2", eps=0.5, clean=CLEAN,
                                  certified=[("certified_accuracy", 0.5, 0.35, "sound")])])
    write_release([store], tmp_path / "rel")
    _fails(cli, tmp_path / "rel", SLUG_D, "certified_accuracy", "no per-sample certificate")


def test_carried_entries_keep_their_samples(cli, release: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_release([], tmp_path / "again", carry=release)
    for p in (release / "samples").iterdir():
        assert (tmp_path / "again" / "samples" / p.name).read_bytes() == p.read_bytes()
    code, out, err = cli("leaderboard", "--verify", str(tmp_path / "again"))
    assert code == 0, err


def test_verify_with_stores_is_refused(cli, release: Path) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli("leaderboard", "store", "--verify", str(release))
    assert code == 2, err


def test_a_real_cell_verifies(cli, real_store: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_release([real_store], tmp_path / "real")
    (s,) = (tmp_path / "real" / "samples").iterdir()
    assert {"clean_text", "adv_text"} <= set(pd.read_parquet(s).columns)
    code, out, err = cli("leaderboard", "--verify", str(tmp_path / "real"))
    assert code == 0, err
    assert "verified 1 entries" in out


COMMITTED = sorted(p for p in (Path(__file__).resolve().parents[2] / "results" / "leaderboard").glob("v*")
                   if (p / "entries.parquet").is_file())


@pytest.mark.parametrize("committed", COMMITTED, ids=[p.name for p in COMMITTED])
def test_every_committed_release_verifies_or_says_it_predates_samples(cli, committed: Path) -> None:  # type: ignore[no-untyped-def]
    """A committed release with per-sample rows re-derives exactly; one without (v1, published before
    they were written) is refused with that reason, never passed."""
    code, out, err = cli("leaderboard", "--verify", str(committed))
    if (committed / "samples").is_dir():
        assert code == 0 and "verified" in out, err
    else:
        assert code == 1 and "no per-sample rows" in err, out + err
