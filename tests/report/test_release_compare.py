"""``mmrobust compare RELEASE_A RELEASE_B``: rows, rank changes and the protocol change behind a move,
on two small releases built from synthetic stores, and on the committed v1 against itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from robustbench_mm.errors import ConfigError, StoreError
from robustbench_mm.report import protocol_history
from robustbench_mm.report.entries import build
from robustbench_mm.report.release_compare import compare_releases

REPO = Path(__file__).resolve().parents[2]
V1 = REPO / "results" / "leaderboard" / "v1"
N = 40
STANDARD_V2 = ("standard-v2: Square runs with resc_schedule false as in AutoAttack, and the sticky verdict rule "
               "is stated")


def cell(cell_id: str, model: str, defense: str, robust: int, *, protocol: str = "mm-aa/standard/v1",
         norm: str = "linf", eps: float = 8 / 255) -> dict[str, Any]:
    """A cell of N clean-correct samples, ``robust`` of them surviving the attack."""
    return {"cell_id": cell_id, "model": model, "defense": defense, "norm": norm, "eps": eps,
            "clean": [True] * N, "adv": [True] * robust + [False] * (N - robust), "protocol": protocol}


def release(make_store, tmp_path: Path, name: str, cells: list[dict[str, Any]]) -> Path:
    """A release folder holding only ``entries.parquet``: all that a comparison reads."""
    board = build([make_store(f"store-{name}", cells)])
    root = tmp_path / name
    root.mkdir()
    board.entries.to_parquet(root / "entries.parquet", index=False)
    return root


@pytest.fixture
def two_releases(make_store, tmp_path: Path) -> tuple[Path, Path]:
    # linf table: clip/none and openclip/none swap ranks by moves inside their intervals; tecoa drops
    # outside its interval under a new protocol; openclip/mmcoa is removed, openclip/tecoa is new.
    # l2 table: clip/mmcoa jumps outside its interval under the same protocol.
    a = release(make_store, tmp_path, "a", [
        cell("a1", "clip-tiny", "none", 24), cell("a2", "openclip-tiny", "none", 22),
        cell("a3", "clip-tiny", "tecoa", 12), cell("a4", "openclip-tiny", "mmcoa", 4),
        cell("a5", "clip-tiny", "mmcoa", 8, norm="l2", eps=0.5)])
    b = release(make_store, tmp_path, "b", [
        cell("b1", "clip-tiny", "none", 22), cell("b2", "openclip-tiny", "none", 24),
        cell("b3", "clip-tiny", "tecoa", 2, protocol="mm-aa/standard/v3"),
        cell("b4", "openclip-tiny", "tecoa", 16), cell("b5", "clip-tiny", "mmcoa", 36, norm="l2", eps=0.5)])
    return a, b


def by_entry(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["model"], r["defense"], r["norm"]): r for r in rows}


def test_rows_ranks_and_explanations(two_releases: tuple[Path, Path]) -> None:
    result = compare_releases(*two_releases)
    rows = by_entry([c.row() for c in result.changes])
    assert {k: r["change"] for k, r in rows.items()} == {
        ("clip-tiny", "none", "linf"): "within-interval", ("openclip-tiny", "none", "linf"): "within-interval",
        ("clip-tiny", "tecoa", "linf"): "explained", ("clip-tiny", "mmcoa", "l2"): "unexplained",
        ("openclip-tiny", "mmcoa", "linf"): "removed", ("openclip-tiny", "tecoa", "linf"): "new"}
    clip, openclip = rows[("clip-tiny", "none", "linf")], rows[("openclip-tiny", "none", "linf")]
    assert (clip["rank_before"], clip["rank_after"], clip["rank_change"]) == (1, 2, -1)
    assert (openclip["rank_before"], openclip["rank_after"], openclip["rank_change"]) == (2, 1, 1)
    assert clip["robust_accuracy_before"] == pytest.approx(0.6) and clip["robust_accuracy_after"] == pytest.approx(0.55)
    assert clip["delta"] == pytest.approx(-0.05)
    assert clip["robust_low_before"] < 0.55 < clip["robust_high_before"]

    tecoa = rows[("clip-tiny", "tecoa", "linf")]
    assert (tecoa["protocol_before"], tecoa["protocol_after"]) == ("mm-aa/standard/v1", "mm-aa/standard/v3")
    assert (tecoa["rank_before"], tecoa["rank_after"], tecoa["rank_change"]) == (3, 4, -1)
    assert tecoa["robust_accuracy_after"] == pytest.approx(0.05)
    assert tecoa["robust_accuracy_after"] < tecoa["robust_low_before"]
    assert tecoa["explanation"][0] == STANDARD_V2
    assert [s.split(":")[0] for s in tecoa["explanation"]] == ["standard-v2", "standard-v3"]
    assert "per-sample random streams" in tecoa["explanation"][1]

    mmcoa = rows[("clip-tiny", "mmcoa", "l2")]
    assert mmcoa["protocol_before"] == mmcoa["protocol_after"] == "mm-aa/standard/v1"
    assert mmcoa["explanation"] == [] and mmcoa["rank_change"] == 0
    assert mmcoa["robust_accuracy_after"] == pytest.approx(0.9)
    assert mmcoa["robust_accuracy_after"] > mmcoa["robust_high_before"]

    removed, new = rows[("openclip-tiny", "mmcoa", "linf")], rows[("openclip-tiny", "tecoa", "linf")]
    assert removed["rank_before"] == 4 and removed["rank_after"] is None and removed["rank_change"] is None
    assert new["rank_after"] == 3 and new["robust_accuracy_before"] is None
    assert result.summary() == "4 entries in both (1 unexplained, 1 explained, 2 within-interval), 1 new, 1 removed"
    assert [c.change for c in result.changes][:2] == ["unexplained", "explained"]  # worst news first


def test_cli_table_json_and_page(two_releases: tuple[Path, Path], cli, tmp_path: Path) -> None:
    a, b = two_releases
    code, out, _ = cli("compare", str(a), str(b), "--out", str(tmp_path / "page"))
    assert code == 0
    assert "1 unexplained, 1 explained" in out
    table_line = next(line for line in out.splitlines() if line.startswith("explained"))
    assert "30.0% [18.1–45.4]" in table_line and "5.0% [" in table_line and "3 -> 4 (-1)" in table_line
    assert "mm-aa/standard/v1 -> mm-aa/standard/v3" in table_line
    assert f"    {STANDARD_V2}" in out.splitlines()
    unexplained = out.split("unexplained (outside")[1]
    assert "fmnist-zeroshot/clip-tiny/mmcoa (l2 0.5): 20.0% [10.5–34.8] -> 90.0%" in unexplained

    html, md = (tmp_path / "page" / "compare.html").read_text(), (tmp_path / "page" / "compare.md").read_text()
    assert 'class="sortable"' in html and "Content-Security-Policy" in html  # the release pages' styling
    assert "standard-v3: Square is our implementation" in html and '<span class="badge">unexplained</span>' in html
    assert "| explained | fmnist-zeroshot/clip-tiny/tecoa (linf 8/255) | 30.0% [18.1–45.4] |" in md

    code, out, _ = cli("compare", str(a), str(b), "--json")
    assert code == 0
    rows = by_entry(json.loads(out))
    assert rows[("openclip-tiny", "none", "linf")]["rank_change"] == 1
    assert rows[("openclip-tiny", "tecoa", "linf")]["change"] == "new"


def test_committed_v1_against_itself_is_all_same(cli) -> None:
    code, out, _ = cli("compare", str(V1), str(V1), "--json")
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 30
    assert {r["change"] for r in rows} == {"same"}
    assert {r["rank_change"] for r in rows} == {0} and {r["delta"] for r in rows} == {0.0}
    assert all(r["explanation"] == [] and r["protocol_before"] == r["protocol_after"] for r in rows)
    code, out, _ = cli("compare", str(V1), str(V1))
    assert code == 0 and "30 entries in both (30 same), 0 new, 0 removed" in out.splitlines()[0]
    assert "protocol changes" not in out and "unexplained" not in out


def test_bad_folder_unreadable_parquet_and_unknown_protocol(cli, make_store, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = cli("compare", str(empty), str(V1))
    assert code == 2 and out == ""
    assert err.strip() == (f"error: {empty} is not a leaderboard release (no entries.parquet); pass a release "
                           f"folder written by `mmrobust leaderboard --out`, e.g. results/leaderboard/v1")

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "entries.parquet").write_bytes(b"not a parquet file")
    code, _, err = cli("compare", str(V1), str(broken))
    assert code == 2 and "entries.parquet is unreadable" in err and "mmrobust leaderboard --out" in err
    assert len(err.strip().splitlines()) == 1

    future = release(make_store, tmp_path, "future",
                     [cell("f1", "clip-tiny", "none", 20, protocol="mm-aa/standard/v9")])
    code, _, err = cli("compare", str(V1), str(future))
    assert code == 2
    assert "protocol id 'mm-aa/standard/v9'" in err and "tasks/protocols/standard-v9.yaml" in err
    with pytest.raises(ConfigError):
        compare_releases(V1, future)
    with pytest.raises(StoreError):
        compare_releases(tmp_path / "nowhere", V1)


def test_protocol_history_reads_the_change_sentence(tmp_path: Path) -> None:
    versions = protocol_history.load_versions()
    assert versions["mm-aa/standard/v3"].name == "standard-v3"
    assert protocol_history.between("mm-aa/standard/v3", "mm-aa/standard/v2", versions) == [
        "undone " + versions["mm-aa/standard/v3"].line]
    assert protocol_history.between("mm-aa/rand/v1", "mm-aa/rand/v2", versions) == [
        "rand-v2: v1 published only the final fresh verdict, so a sample a member broke could be counted robust"]
    assert protocol_history.between("mm-aa/rand/v1", "mm-aa/rand/v1", versions) == []
    assert protocol_history.one_line_change("First run. More.") == "First run"
    (tmp_path / "x-v1.yaml").write_text("name: x-v1\nversion: 1\n")  # no id
    with pytest.raises(ConfigError, match="x-v1.yaml is unreadable or lacks id/version"):
        protocol_history.load_versions(tmp_path)
