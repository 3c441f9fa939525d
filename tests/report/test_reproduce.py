"""Paper specs: every shipped spec validates and resolves on the zoo; one spec runs end to end on
clip-tiny; missing weights and unresolvable cells are one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from robustbench_mm import api
from robustbench_mm.errors import MMRobustError
from robustbench_mm.report import paper

MMROBUST = str(Path(sys.executable).parent / "mmrobust")
SPEC = """name: pgd-check
title: "PGD on zero-shot CLIP"
defense: none
defaults: {n: 500, seed: 0}
cells:
  - {id: clean, model: clip-vit-b-32, task: cifar10-zeroshot, attack: none, defense: none}
  - {id: pgd, model: clip-vit-b-32, task: cifar10-zeroshot, attack: pgd, steps: 2, defense: none}
zoo: {n: 8, tasks: {cifar10-zeroshot: fmnist-zeroshot}}
references:
  - {cell: clean, metric: clean_accuracy, value: 50.0, tag: PAPER, tolerance: 100}
  - {cell: pgd, metric: asr, value: 50.0, tag: 2ND}
  - {cell: ~, metric: asr, value: 9.6, tag: 2ND, note: "no cell measures this"}
checks:
  - {claim: "an attack never raises accuracy", left: clean, op: ">=", right: pgd, metric: robust_accuracy, tag: PAPER}
"""


def test_shipped_specs_cover_the_four_papers_and_resolve_on_the_zoo() -> None:
    specs = {s.name: s for s in paper.load_all()}
    assert {s.data["defense"] for s in specs.values()} >= {"fs-psm", "topk-rs", "crmt", "mmcoa"}
    for spec in specs.values():
        cells = paper.plan(spec, zoo=True, n=4, device="cpu")
        assert len(cells) == len(spec.cells)
        assert all(cell.entry.bundled for _, cell in cells), spec.name  # zoo maps every model to a bundled one
    listing = {d["name"]: d for d in api.reproduce_list()}
    assert set(listing) == set(specs)


@pytest.mark.slow
def test_zoo_run_end_to_end_on_clip_tiny(tmp_path: Path) -> None:
    spec_file = tmp_path / "pgd-check.yaml"
    spec_file.write_text(SPEC)
    result = api.reproduce(str(spec_file), zoo=True, out=tmp_path / "results", device="cpu")
    table = pd.read_parquet(tmp_path / "results" / "papers" / "pgd-check-zoo.parquet")
    assert len(table) == 4 and (table["setting"] == "zoo").all()
    assert set(table.loc[table["cell"] != "", "model"]) == {"clip-tiny"}  # clip-vit-b-32 -> its bundled family member
    values = table[table["kind"] == "value"].set_index("metric")
    clean = values.loc["clean_accuracy"]
    assert 0 <= clean["ours"] <= 100 and clean["delta"] == pytest.approx(clean["ours"] - 50.0)
    # no pass/fail on the zoo, nor for a 2ND-tagged number; a reference without a cell says so
    assert set(table["verdict"]) >= {"no verdict (zoo: bundled models, not the paper's setting)", "no verdict (2ND)",
                                     "not measured (no cell for this setting)"}
    assert "pass" not in set(table["verdict"]) and "fail" not in set(table["verdict"])
    check = table[table["kind"] == "check"].iloc[0]
    assert bool(check["within_tolerance"])  # robust accuracy <= clean accuracy, always
    md = result.md_path.read_text()
    assert "Zoo run" in md and "[PAPER]" in md and "[2ND]" in md


def test_verdicts_only_for_paper_and_code_tags_on_real_models() -> None:
    assert paper._verdict("PAPER", False, True, False, False) == "pass"
    assert paper._verdict("CODE", False, False, False, False) == "fail"
    assert paper._verdict("2ND", False, True, False, False) == "no verdict (2ND)"
    assert paper._verdict("PAPER", True, True, False, False).startswith("no verdict (zoo")


def test_missing_weights_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([MMROBUST, "reproduce", "mmcoa-table1", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                                       "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "clip-vit-b-32" in lines[0] and "--zoo" in lines[0]
    assert not (tmp_path / "papers").exists()


def test_unresolvable_zoo_cell_is_one_clear_error(tmp_path: Path) -> None:
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(SPEC.replace("attack: pgd, steps: 2, defense: none", "attack: pgd, defense: no-such-defense"))
    with pytest.raises(MMRobustError, match=r"cell 'pgd' cannot be resolved: .*no-such-defense") as info:
        api.reproduce(str(spec_file), zoo=True, out=tmp_path / "results", device="cpu")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "results" / "papers").exists()
