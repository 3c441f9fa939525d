"""PSM plug-in (docs/methods.md): identity at init, training, caching by config hash, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from robustbench_mm.defenses.fs_psm import psm as P


class TinyEncoder(nn.Module):
    """Stand-in VLM vision side: ``[B,3,8,8] -> [B,4,6]`` token features (LLaVA-like shape)."""

    image_size = 8
    name = "tiny-encoder"
    revision = "r1"

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3 * 8 * 8, 24)
        self.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def raw_vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(pixels.flatten(1))).view(-1, 4, 6) + 0.5


CFG = P.PSMTrainConfig(purifier_steps=3, mapper_steps=4, batch_size=8, train_images=64)


def test_mapper_is_identity_at_init_and_keeps_shape_and_scale() -> None:
    enc = TinyEncoder()
    psm = P.build_psm(enc, CFG)
    feats = enc.raw_vision_features(torch.rand(5, 3, 8, 8)) * 7.0
    assert torch.allclose(psm.map(feats, 0.25), feats, atol=1e-6)


@pytest.mark.slow
def test_train_cache_reuse_and_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMROBUST_CACHE", str(tmp_path))
    from robustbench_mm.defenses.fs_psm.data import PSMData

    monkeypatch.setattr(P, "psm_training_data", lambda size, limit, seed: PSMData(
        torch.rand(64, 3, size, size), torch.rand(16, 3, size, size), {"split": "synthetic", "images": 64}))
    enc = TinyEncoder()
    with pytest.raises(FileNotFoundError, match="mmrobust train --defense fs-psm"):
        P.load_or_train(enc, CFG, train_if_missing=False)
    psm, state = P.load_or_train(enc, CFG)
    assert (state.path / "psm.safetensors").exists() and not (state.path / "ckpt.safetensors").exists()
    assert set(state.metrics["s_hat_after"]) == {0.25, 0.5}
    import json

    assert json.loads((state.path / "psm.json").read_text())["training_data"] == {"split": "synthetic", "images": 64}
    again, state2 = P.load_or_train(enc, CFG, train_if_missing=False)
    assert state2.path == state.path
    for a, b in zip(psm.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    enc.revision = "r2"  # a retrained encoder invalidates the weights
    assert P.cache_key(enc, CFG) != state.key
    with pytest.raises(FileNotFoundError):
        P.load_or_train(enc, CFG, train_if_missing=False)


def test_resume_ignores_foreign_checkpoint(tmp_path: Path) -> None:
    enc = TinyEncoder()
    psm = P.build_psm(enc, CFG)
    P._checkpoint(psm, tmp_path, 2, 1, key="other")
    assert P._resume(psm, tmp_path, P.cache_key(enc, CFG)) == (0, 1)
    P._checkpoint(psm, tmp_path, 2, 1, key=P.cache_key(enc, CFG))
    assert P._resume(psm, tmp_path, P.cache_key(enc, CFG)) == (1, 2)


def test_psm_training_data_is_the_train_split_and_never_the_eval_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The PSM trains on the Fashion-MNIST train split, records split/size/hash, and never reads the
    evaluation slice (reading it fails the test)."""
    from robustbench_mm.defenses.fs_psm import data as D
    from robustbench_mm.tasks import bundled

    if not (bundled.RAW_FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail("Fashion-MNIST train split missing: apt-get install dataset-fashion-mnist (.ci/run installs it)")

    def forbidden(*a: object, **k: object) -> None:
        raise AssertionError("PSM training read the evaluation slice")

    monkeypatch.setattr(bundled, "fmnist_eval_arrays", forbidden)
    d = D.psm_training_data(8, 100, seed=0)
    assert d.train.shape == (100, 3, 8, 8) and d.heldout.shape == (D.HELDOUT, 3, 8, 8)
    rec = d.record
    assert rec["split"] == "train" and rec["images"] == 100 and rec["split_size"] == 60000
    assert len(rec["sha256"]) == 64 and rec["sha256"] != rec["heldout_sha256"]
    assert D.psm_training_data(8, 100, seed=0).record["sha256"] == rec["sha256"]  # the hash names the data
    assert D.psm_training_data(8, 100, seed=1).record["sha256"] != rec["sha256"]


def test_psm_without_train_split_stops_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No train split: training (on demand or by command) raises the exit-2 error naming the package,
    before any image is read; it never falls back to the evaluation slice."""
    from robustbench_mm.defenses.fs_psm import data as D
    from robustbench_mm.errors import WeightsError
    from robustbench_mm.tasks import bundled

    monkeypatch.setattr(bundled, "RAW_FMNIST_DIR", tmp_path / "absent")
    monkeypatch.setenv("MMROBUST_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsError, match="apt-get install dataset-fashion-mnist") as err:
        D.psm_training_data(8, 10, seed=0)
    assert "\n" not in str(err.value)
    with pytest.raises(WeightsError, match="apt-get install dataset-fashion-mnist"):
        P.load_or_train(TinyEncoder(), CFG)


def test_train_command_without_train_split_exits_2_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    from robustbench_mm import cli
    from robustbench_mm.models import zoo
    from robustbench_mm.tasks import bundled

    monkeypatch.setattr(bundled, "RAW_FMNIST_DIR", tmp_path / "absent")
    monkeypatch.setattr(zoo, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    monkeypatch.setattr(sys, "argv", ["mmrobust", "train", "--defense", "fs-psm", "--model", "clip-tiny",
                                      "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as ex:
        cli.main()
    err = capsys.readouterr().err
    assert ex.value.code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "apt-get install dataset-fashion-mnist" in lines[0], err
    assert not (tmp_path / "out").exists()
