"""Galleries written with each cell, and ``mmrobust show DIR --json | --csv | --gallery OUT.png``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustbench_mm.runner.gallery_render import CELL_PX, GALLERY_DIR, GRID_FILE, META_FILE, amplified
from robustbench_mm.tasks.bundled import FMNIST_CLASSES


def _cell_dir(store: Path) -> Path:
    (d,) = [p for p in (store / "cells").iterdir() if p.is_dir()]
    return d


def test_a_real_cell_commits_its_gallery(real_store: Path) -> None:
    folder = _cell_dir(real_store) / GALLERY_DIR
    meta = json.loads((folder / META_FILE).read_text())
    assert "clip-tiny / none / pgd / fmnist-zeroshot / linf 8/255" == meta["title"]
    samples = meta["samples"]
    assert len(samples) == 8 and [s["index"] for s in samples] == sorted(s["index"] for s in samples)
    for s in samples:  # class names, not numeric labels
        assert s["label"] in FMNIST_CLASSES and s["clean_out"] in FMNIST_CLASSES and s["adv_out"] in FMNIST_CLASSES
        assert s["verdict"] in ("robust", "broken", "clean wrong")
        assert (s["verdict"] == "clean wrong") == (s["clean_out"] != s["label"])
    img = Image.open(folder / GRID_FILE)
    assert img.format == "PNG" and img.height > 8 * CELL_PX and img.width < 800
    assert (folder / GRID_FILE).stat().st_size < 200_000  # small


def test_amplified_perturbation_is_visible_and_grey_when_unchanged() -> None:
    clean = np.full((4, 4, 3), 100, np.uint8)
    adv = clean.copy()
    adv[0, 0, 0] = 102
    adv[1, 1, 1] = 98
    amp = amplified(clean, adv)
    assert amp[0, 0, 0] == 255 and amp[1, 1, 1] == 0 and amp[2, 2, 2] in (127, 128)
    assert (amplified(clean, clean) == amp[2, 2, 2]).all()


def test_show_json_csv_and_gallery(real_store: Path, make_store, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli("show", str(real_store), "--json")
    assert code == 0, err
    (cell,) = json.loads(out)
    assert cell["eps"] == "8/255" and cell["eps_value"] == pytest.approx(8 / 255)
    assert cell["model"] == "clip-tiny" and cell["protocol"] == "mm-aa/standard/v1" and 0 <= cell["asr"] <= 1
    code, out, _ = cli("show", str(real_store), "--csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 1 and rows[0]["eps"] == "8/255" and rows[0]["cell_id"] == cell["cell_id"]
    l2 = make_store("l2", [dict(cell_id="x", norm="l2", eps=0.5), dict(cell_id="y", eps=4 / 255)])
    code, out, _ = cli("show", str(l2), "--json")
    assert sorted(c["eps"] for c in json.loads(out)) == ["0.5", "4/255"]

    png = tmp_path / "g.png"
    code, out, err = cli("show", str(real_store), "--gallery", str(png))
    assert code == 0 and "gallery of 1 cells" in out, err
    grid = _cell_dir(real_store) / GALLERY_DIR / GRID_FILE
    assert Image.open(png).size == Image.open(grid).size  # the same grid the pages show
    both = tmp_path / "both.png"
    assert cli("show", str(l2), "--gallery", str(both))[0] == 0
    assert Image.open(both).height == 2 * Image.open(grid).height


def test_show_bad_input(make_store, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    bare = make_store("bare", [dict(cell_id="x", gallery=False)])
    for args, message in ((["--gallery", str(tmp_path / "g.png")], "recorded a gallery"),
                          (["--gallery", str(tmp_path / "g.jpg")], ".png"),
                          (["--json", "--csv"], "one of --json and --csv")):
        code, _, err = cli("show", str(bare), *args)
        assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "g.png").exists()
    code, _, err = cli("show", str(tmp_path / "nope"), "--json")
    assert code == 2 and "does not exist" in err


@pytest.mark.slow
def test_generative_gallery_shows_answers_before_and_after(tmp_path: Path) -> None:
    from robustbench_mm import api
    from robustbench_mm.runner.resolve import CellSpec

    store = tmp_path / "llava"
    api.run_cell(CellSpec(model="llava-tiny", attack="pgd-lm", defense="none", steps=2, n=8, device="cpu"),
                 out=store)
    meta = json.loads((_cell_dir(store) / GALLERY_DIR / META_FILE).read_text())
    assert len(meta["samples"]) == 8
    for s in meta["samples"]:
        assert s["label"] in FMNIST_CLASSES  # the true class name
        assert isinstance(s["clean_out"], str) and isinstance(s["adv_out"], str) and s["clean_out"]  # generated text
