"""`manifest run --jobs K --cost FILE`: stores side by side, one writer per store, and a cost file
that records what each entry took (a fake `mmrobust` that logs when each command starts and ends)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from robustbench_mm.report import manifest

FAKE = """#!/bin/sh
# fake mmrobust: log start/end with the --out store and the --n value; --n 13 fails
store=""; n=""
while [ $# -gt 0 ]; do case "$1" in --out) store="$2"; shift;; --n) n="$2"; shift;; esac; shift; done
echo "start $store $n $(date +%s.%N) $OMP_NUM_THREADS" >> "$LOG"
sleep 0.4
echo "end $store $n $(date +%s.%N)" >> "$LOG"
[ "$n" = "13" ] && exit 3
exit 0
"""


def _setup(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    fake = tmp_path / "mmrobust"
    fake.write_text(FAKE)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "log"
    monkeypatch.setenv("LOG", str(log))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    m = tmp_path / "manifest.yaml"
    lines = [f"  - mmrobust benchmark --model clip-tiny --n {n} --out {store}"
             for n, store in ((1, "A"), (2, "A"), (3, "B"), (13, "B"))]
    m.write_text("commands:\n" + "\n".join(lines) + "\n")
    return fake, m


def _spans(log: Path) -> dict[str, tuple[str, float, float]]:
    starts, spans = {}, {}
    for line in log.read_text().splitlines():
        kind, store, n, t = line.split()[:4]
        if kind == "start":
            starts[n] = float(t)
        else:
            spans[n] = (store, starts[n], float(t))
    return spans


def test_two_jobs_run_stores_side_by_side_and_record_the_cost(tmp_path: Path, monkeypatch) -> None:
    fake, m = _setup(tmp_path, monkeypatch)
    cost = tmp_path / "cost.json"
    monkeypatch.setenv("MMROBUST", str(fake))
    rc = manifest.main(["run", str(m), "--jobs", "2", "--cost", str(cost)])
    assert rc == 1  # one entry failed; the others still ran
    spans = _spans(tmp_path / "log")
    assert set(spans) == {"1", "2", "3", "13"}
    for a, b in (("1", "2"), ("3", "13")):  # one store: one writer at a time, in manifest order
        assert spans[a][2] <= spans[b][1]
    assert spans["3"][1] < spans["1"][2]  # the other store ran meanwhile
    doc = json.loads(cost.read_text())
    assert [e["rc"] for e in doc["entries"]] == [0, 0, 0, 3] and doc["failed"] == 1 and doc["jobs"] == 2
    assert all(e["wall_s"] >= 0.4 for e in doc["entries"])
    assert doc["entries"][0]["command"] == "mmrobust benchmark --model clip-tiny --n 1 --out A"
    assert doc["total_wall_s"] < doc["entries_wall_s"]  # the side-by-side build took less than the sum
    threads = {line.split()[4] for line in (tmp_path / "log").read_text().splitlines() if line.startswith("start")}
    assert threads == {str(max(1, (os.cpu_count() or 1) // 2))}  # workers split the cores


def test_one_job_runs_in_order_and_bad_jobs_is_one_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    fake, m = _setup(tmp_path, monkeypatch)
    monkeypatch.setenv("MMROBUST", str(fake))
    assert manifest.main(["run", str(m)]) == 1
    spans = _spans(tmp_path / "log")
    order = sorted(spans, key=lambda n: spans[n][1])
    assert order == ["1", "2", "3", "13"]
    assert manifest.main(["run", str(m), "--jobs", "0"]) == 2
    assert "--jobs 0 must be a positive integer" in capsys.readouterr().err
