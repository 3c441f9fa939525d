"""``--vision-encoder`` (issue 33): a CLIP image encoder in place of a LLaVA / BLIP-2 vision tower."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from robustbench_mm.models.base import normalize_pixels
from robustbench_mm.models.vision_swap import open_clip_to_hf, swap_vision_encoder, tower_outputs
from robustbench_mm.models.zoo import load_model
from tests.cli_invoke import invoke


def _pixels(n: int = 6) -> torch.Tensor:
    from robustbench_mm.tasks.bundled import fmnist_eval_arrays, to_model_pixels

    images, _, _ = fmnist_eval_arrays()
    return to_model_pixels(images[:n], 32)


def test_open_clip_tower_converts_to_the_same_function() -> None:
    oc = load_model("openclip-tiny")
    tower = open_clip_to_hf(oc.model.visual).eval()
    x = normalize_pixels(_pixels(), oc.mean, oc.std)
    with torch.no_grad():
        ours = tower(pixel_values=x).pooler_output @ oc.model.visual.proj
        theirs = oc.model.encode_image(x)
    assert float((ours - theirs).abs().max()) <= 1e-4 * float(theirs.abs().max())


def test_llava_tiny_with_its_own_clip_tiny_tower_is_unchanged_and_fare_changes_it() -> None:
    # llava-tiny's tower is a frozen copy of clip-tiny's (its MODEL_CARD): the swap must be the identity
    from robustbench_mm.runner.vision_encoder import zoo_encoders

    x = _pixels()
    base = load_model("llava-tiny")
    tokens = tower_outputs(base, normalize_pixels(x, base.mean, base.std))
    same = swap_vision_encoder(load_model("llava-tiny"), load_model("clip-tiny"), "clip-tiny")
    assert torch.equal(tower_outputs(same, normalize_pixels(x, base.mean, base.std)), tokens)
    assert "+vision:clip-tiny" in same.revision and same.revision != base.revision
    fare = swap_vision_encoder(load_model("llava-tiny"), load_model(zoo_encoders()["fare-clip-tiny"]),
                               "fare-clip-tiny")
    moved = tower_outputs(fare, normalize_pixels(x, base.mean, base.std))
    assert moved.shape == tokens.shape and float((moved - tokens).abs().max()) > 1e-3
    assert not any(p.requires_grad for p in fare.model.parameters())


def test_blip2_tiny_takes_a_clip_tower_and_still_generates() -> None:
    blip = swap_vision_encoder(load_model("blip2-tiny"), load_model("clip-tiny"), "clip-tiny")
    feats = blip.raw_vision_features(_pixels(4))
    assert feats.shape[:2] == (4, blip.num_query_tokens) and torch.isfinite(feats).all()
    answers = blip.generate(_pixels(4), ["What is this?"] * 4)
    assert len(answers) == 4 and all(isinstance(a, str) for a in answers)


def test_width_mismatch_is_one_line_exit_2_and_writes_nothing(monkeypatch, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "store"
    code, _, err = invoke(monkeypatch, capsys, "run", "--model", "llava-tiny", "--vision-encoder", "openclip-tiny",
                          "--task", "fmnist-caption", "--attack", "pgd", "--n", "4", "--out", str(out))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "width 64" in err and "width 96" in err
    assert not (out / "asr.parquet").exists()


@pytest.mark.parametrize("args, needle", [
    (["--model", "clip-tiny", "--vision-encoder", "fare-clip-tiny"], "applies to llava and blip2"),
    (["--model", "llava-tiny", "--vision-encoder", "fare2-vit-l-14"], "hf download chs20/fare2-clip"),
    (["--model", "llava-tiny", "--vision-encoder", "blip2-tiny"], "must be a CLIP image encoder"),
])
def test_bad_encoders_are_refused_before_any_load(monkeypatch, capsys, tmp_path: Path, args, needle) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "store"
    code, _, err = invoke(monkeypatch, capsys, "run", *args, "--n", "4", "--out", str(out))
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_the_encoder_is_part_of_the_cell_id() -> None:
    from robustbench_mm.runner.resolve import CellSpec, resolve

    ids = {enc: resolve(CellSpec(model="llava-tiny", task="fmnist-caption", n=8, vision_encoder=enc)).cell_id
           for enc in (None, "clip-tiny", "fare-clip-tiny", "fare2-clip-tiny")}
    assert len(set(ids.values())) == 4
    plain = resolve(CellSpec(model="llava-tiny", task="fmnist-caption", n=8)).config()
    assert "vision_encoder" not in plain  # cells without a swapped tower keep their ids


@pytest.mark.slow
def test_run_llava_tiny_with_the_zoo_fare_encoder_under_pgd(monkeypatch, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    out = tmp_path / "store"
    code, stdout, err = invoke(monkeypatch, capsys, "run", "--model", "llava-tiny", "--vision-encoder",
                               "fare-clip-tiny", "--task", "fmnist-caption", "--attack", "pgd", "--eps", "4/255",
                               "--n", "16", "--out", str(out))
    assert code == 0, err
    assert "vision encoder fare-clip-tiny" in stdout
    row = pd.read_parquet(out / "asr.parquet").iloc[0]
    assert row["vision_encoder"] == "fare-clip-tiny" and row["status"] == "ok"
    assert row["max_linf"] <= 4 / 255 + 1e-6 and row["clean_accuracy"] > 0.5


def test_a_local_weights_directory_names_an_encoder_too() -> None:
    from robustbench_mm.defenses.training import SHIPPED_DIR
    from robustbench_mm.runner.resolve import CellSpec, resolve

    cell = resolve(CellSpec(model="blip2-tiny", task="fmnist-caption", n=8,
                            vision_encoder=str(SHIPPED_DIR / "fare2-clip-tiny")))
    assert cell.encoder is not None and cell.encoder.family == "clip"
    assert Path(cell.encoder.source) == SHIPPED_DIR / "fare2-clip-tiny"


def test_list_encoders_names_the_zoo_and_public_presets(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    code, out, err = invoke(monkeypatch, capsys, "list", "encoders", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["fare-clip-tiny"]["available"] and rows["clip-tiny"]["available"]
    assert rows["fare2-vit-l-14"]["source"] == "hf-hub:chs20/fare2-clip"
    assert "crmt-clip-tiny" not in rows  # a head, not a CLIP model
