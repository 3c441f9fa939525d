"""PSM plug-in (methods 2.7 / 2.12): identity at init, training, caching by config hash, resume."""

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
    monkeypatch.setattr(P, "training_images", lambda size, limit, seed: (torch.rand(64, 3, size, size),
                                                                         torch.rand(16, 3, size, size)))
    enc = TinyEncoder()
    with pytest.raises(FileNotFoundError, match="mmrobust train --defense fs-psm"):
        P.load_or_train(enc, CFG, train_if_missing=False)
    psm, state = P.load_or_train(enc, CFG)
    assert (state.path / "psm.safetensors").exists() and not (state.path / "ckpt.safetensors").exists()
    assert set(state.metrics["s_hat_after"]) == {0.25, 0.5}
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
