"""Real-size architectures (random weights) through the CLI, the way a user names real checkpoints:
a hub id resolved from an offline Hugging Face cache (HF_HOME), an open_clip ``hf-hub:`` id, and a
local LLaVA-1.5 directory. Each test builds its model, runs ``mmrobust run --n 2`` and checks the row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cli_invoke import invoke  # tests/cli_invoke.py
import realsize  # tests/models/realsize.py (pytest puts this folder on sys.path)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
pytestmark = pytest.mark.slow


@pytest.fixture
def hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An offline Hugging Face cache at ``tmp_path/hf`` (what ``HF_HOME=tmp_path/hf`` selects)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("MMROBUST_PROGRESS_EVERY", "0")
    return tmp_path / "hf"


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code, _, err = invoke(monkeypatch, capsys, *args)
    return code, err


def _row(out: Path) -> pd.Series:
    asr = pd.read_parquet(out / "asr.parquet")
    assert len(asr) == 1
    return asr.iloc[0]


def _attack_raises_objective(model_ref: str, image_size: int, classify: bool) -> None:
    """The cell's own PGD (2 steps) on two task samples at the model's real resolution: inside the
    eps-ball and the task objective goes up (gradients flow through the whole real-size path)."""
    import torch

    from robustbench_mm.models.zoo import LoadOptions, load_model
    from robustbench_mm.runner.resolve import CellSpec, resolve

    cell = resolve(CellSpec(model=model_ref, attack="pgd", steps=2, n=2, device="cpu"))
    model = load_model(cell.model_name, LoadOptions())
    batch = next(cell.task.examples(n=2, seed=0, batch_size=2, image_size=model.image_size))
    assert tuple(batch.pixels.shape[1:]) == (3, image_size, image_size)
    if classify:  # random weights: attack the model's own clean prediction so the objective is meaningful
        batch.labels = cell.task.predict(model, batch).cpu()
    batch.seeds = batch.index
    objective = cell.task.objective(getattr(cell.attack, "loss", None))
    with torch.no_grad():
        before = objective(model, batch.pixels, batch).float()
    res = cell.attack.perturb(model, batch, cell.attack.prepare(model, batch, objective),
                              generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        after = objective(model, res.pixels, batch).float()
    assert float((res.pixels - batch.pixels).abs().max()) <= cell.attack.eps + 1e-6
    assert bool((after >= before - 1e-4).all()) and bool((after > before + 1e-6).any()), (before, after)


def test_hf_clip_vit_b32_by_hub_id_offline(tmp_path: Path, hf_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = tmp_path / "clip-b32"
    realsize.write_hf_clip_b32(model_dir)
    import open_clip
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)  # the real CLIP BPE: same ids as open_clip's tokenizer
    for text in ("a photo of a T-shirt/top.", "a photo of an ankle boot"):
        assert tok(text)["input_ids"] == [int(i) for i in open_clip.tokenize([text])[0] if i != 0]
    snapshot = realsize.fake_hub_cache(hf_cache, "test-org/clip-vit-b-32", model_dir, COMMIT)
    out = tmp_path / "store"
    code, err = _cli(monkeypatch, capsys, "run", "--model", "test-org/clip-vit-b-32", "--n", "2", "--steps", "2",
                     "--batch-size", "2", "--device", "cpu", "--out", str(out))
    assert code == 0, err
    row = _row(out)
    assert row["model"] == "test-org/clip-vit-b-32" and row["model_revision"] == COMMIT
    assert row["n"] == 2 and row["status"] == "ok" and row["max_linf"] <= 8 / 255 + 1e-6
    assert "test-org/clip-vit-b-32 / pgd / none: 2/2 samples (100%)" in err and "ETA" in err  # progress off a TTY
    # another id the cache lacks: one line naming how to get the weights, exit 2, no store
    code, err = _cli(monkeypatch, capsys, "run", "--model", "test-org/clip-vit-b-16", "--n", "2",
                     "--out", str(tmp_path / "s2"))
    assert code == 2 and "hf download test-org/clip-vit-b-16" in err and "HF_HOME" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s2").exists()
    _attack_raises_objective(str(snapshot), 224, classify=True)


def test_open_clip_vit_b32_by_hf_hub_id_offline(tmp_path: Path, hf_cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    model_dir = tmp_path / "openclip-b32"
    realsize.write_open_clip_b32(model_dir)
    snapshot = realsize.fake_hub_cache(hf_cache, "test-org/openclip-vit-b-32", model_dir, COMMIT)
    out = tmp_path / "store"
    code, err = _cli(monkeypatch, capsys, "run", "--model", "hf-hub:test-org/openclip-vit-b-32", "--n", "2",
                     "--steps", "2", "--batch-size", "2", "--device", "cpu", "--out", str(out))
    assert code == 0, err
    row = _row(out)
    assert row["model"] == "hf-hub:test-org/openclip-vit-b-32" and row["model_revision"] == COMMIT
    assert row["n"] == 2 and row["status"] == "ok"
    _attack_raises_objective(str(snapshot), 224, classify=True)


def test_llava15_architecture_local_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from robustbench_mm.models.zoo import ZOO_DIR, LoadOptions, load_model

    model_dir = tmp_path / "llava-1.5-arch"
    realsize.write_llava15(model_dir, ZOO_DIR / "llava-tiny")
    model = load_model(str(model_dir), LoadOptions())
    assert model.image_size == 336 and model.num_image_tokens == 576  # (336/14)^2, CLS dropped
    prompt = model.format_prompt("What is this?")
    assert prompt == "USER: " + "<image>" * 576 + "\nWhat is this? ASSISTANT:"  # llava-1.5 template
    import torch

    assert tuple(model.raw_vision_features(torch.rand(1, 3, 336, 336)).shape) == (1, 576, 64)
    out = tmp_path / "store"
    code, err = _cli(monkeypatch, capsys, "run", "--model", str(model_dir), "--n", "2", "--steps", "1",
                     "--batch-size", "2", "--device", "cpu", "--out", str(out))
    assert code == 0, err
    row = _row(out)
    assert row["model"] == str(model_dir.resolve()) and row["task"] == "fmnist-vqa" and row["status"] == "ok"
    assert row["model_revision"] != ""  # weights hash of a local directory
    _attack_raises_objective(str(model_dir), 336, classify=False)
