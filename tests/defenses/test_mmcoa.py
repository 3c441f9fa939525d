"""MMCoA loss (docs/methods.md), the token-embedding text attack and the joint attack."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from robustbench_mm.defenses.mmcoa import (
    mmcoa_contrastive,
    mmcoa_loss,
    project_tokens,
    text_embedding_pgd,
)
from robustbench_mm.defenses.training import TextInput


@dataclass
class LinearTowers:
    """Weight-free stand-in for CLIP: linear image and text encoders."""

    A: torch.Tensor
    Bt: torch.Tensor
    logit_scale: float = 10.0

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.A

    def encode_text(self, t: torch.Tensor) -> torch.Tensor:
        return t @ self.Bt


def _towers(seed: int = 0) -> tuple[LinearTowers, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    towers = LinearTowers(torch.randn(12, 8, generator=g), torch.randn(5, 8, generator=g))
    return towers, torch.rand(6, 3, 2, 2, generator=g), torch.randn(6, 5, generator=g)


def test_clean_inputs_give_twice_the_symmetric_clip_loss() -> None:
    towers, x, t = _towers()
    loss = mmcoa_loss(towers, x, x, t, t, 0.5, 0.5)
    img = F.normalize(towers.encode_image(x), dim=-1)
    txt = F.normalize(towers.encode_text(t), dim=-1)
    sim = (img @ txt.T).tolist()
    n, s = len(sim), towers.logit_scale
    # independent reference: per-row log-softmax in plain Python floats (CLIP loss = mean of both directions)
    import math

    def ce_rows(m: list[list[float]]) -> float:
        return sum(math.log(sum(math.exp(s * v) for v in row)) - s * row[i] for i, row in enumerate(m)) / n

    clip_loss = (ce_rows(sim) + ce_rows([list(c) for c in zip(*sim)])) / 2
    assert abs(float(loss) - 2 * clip_loss) < 1e-4


def test_weights_select_the_terms() -> None:
    towers, x, t = _towers()
    x_adv, t_adv = x.flip(0), t + 0.3
    only_img = mmcoa_loss(towers, x, x_adv, t, t_adv, 1.0, 0.0)
    only_txt = mmcoa_loss(towers, x, x_adv, t, t_adv, 0.0, 1.0)
    both = mmcoa_loss(towers, x, x_adv, t, t_adv, 0.5, 0.5)
    assert torch.allclose(both, 0.5 * only_img + 0.5 * only_txt, atol=1e-6)
    i, ia = towers.encode_image(x), towers.encode_image(x_adv)
    tt, ta = towers.encode_text(t), towers.encode_text(t_adv)
    assert torch.allclose(only_img, mmcoa_contrastive(i, ia, tt, ta, 10.0, 1.0, 0.0), atol=1e-6)


def test_training_step_lowers_the_loss_on_fixed_adversarial_examples() -> None:
    towers, x, t = _towers(1)
    x_adv, t_adv = (x + 0.05).clamp(0, 1), t + 0.1
    A = towers.A.clone().requires_grad_(True)
    towers.A = A
    before = mmcoa_loss(towers, x, x_adv, t, t_adv)
    (g,) = torch.autograd.grad(before, A)
    towers.A = (A - 0.05 * g).detach()
    assert mmcoa_loss(towers, x, x_adv, t, t_adv) < before


def test_text_embedding_pgd_stays_in_per_token_balls_and_raises_the_loss() -> None:
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(4, 3, 6, generator=g)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    w = torch.randn(6, generator=g)
    text = TextInput(torch.zeros(4, 3, dtype=torch.long), mask)

    def loss(d: torch.Tensor) -> torch.Tensor:
        return ((emb + d) @ w).sum()

    delta = text_embedding_pgd(loss, text, radius=0.5, steps=5, emb_dim=6)
    assert (delta.norm(dim=-1) <= 0.5 + 1e-5).all()
    assert (delta[mask == 0] == 0).all()
    assert loss(delta) > loss(torch.zeros_like(delta))
    assert torch.allclose(project_tokens(delta * 3, mask, 0.5).norm(dim=-1)[mask == 1], torch.tensor(0.5), atol=1e-5)


def test_tecoa_preset_is_the_image_only_variant() -> None:
    from robustbench_mm.defenses.base import DEFENSES
    from robustbench_mm.presets import load_preset
    from robustbench_mm.presets import build
    from robustbench_mm.runner.registration import register_all

    register_all()
    tecoa = build(DEFENSES.get("mmcoa"), load_preset("defense", "tecoa", DEFENSES))
    mmcoa = build(DEFENSES.get("mmcoa"), load_preset("defense", "mmcoa", DEFENSES))
    assert tecoa.lam_txt == 0 and tecoa.towers == ("vision",)
    assert mmcoa.lam_txt == 0.5 and set(mmcoa.towers) == {"vision", "text"}
    assert tecoa.params != mmcoa.params


@pytest.mark.slow
def test_mmcoa_step_on_clip_tiny_lowers_the_loss_and_attacks_stay_in_budget() -> None:
    from robustbench_mm.defenses.mmcoa import MMCoA, joint_attack
    from robustbench_mm.models.zoo import load_model
    from robustbench_mm.tasks.bundled import FMNIST_CLASSES, fmnist_eval_arrays, to_model_pixels

    model = load_model("clip-tiny")
    d = MMCoA(steps=4, batch_size=8, pgd_steps=1, text_steps=1, lr=1e-3, warmup=0)
    module = d.prepare(model)
    opt = d.optimizers(module, model)["main"]
    images, labels, _ = fmnist_eval_arrays()
    x, y = to_model_pixels(images[:12], 32), torch.as_tensor(labels[:12])
    losses = []
    for _ in range(3):
        loss, _ = d.train_step(model, module, x, y, 0, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    model.freeze()
    prompts = [f"a photo of a {c}" for c in FMNIST_CLASSES]
    x_adv, logits = joint_attack(model, x, y, prompts, 4 / 255, 0.25, 2, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 4 / 255 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    assert logits.shape == (12, 10)


@pytest.mark.slow
def test_shipped_mmcoa_beats_tecoa_under_the_joint_attack() -> None:
    from robustbench_mm.defenses.mmcoa import joint_eval
    from defense_helpers import shipped

    res = {}
    for name in ("mmcoa", "tecoa"):
        d, model = shipped(name)
        res[name] = joint_eval(model, n=60, eps_img=d.eps, text_eps=d.eval_text_eps, steps=5)
    assert res["mmcoa"]["joint_accuracy"] > res["tecoa"]["joint_accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mmcoa", "tecoa"])
def test_shipped_adversarial_finetuning_is_robust(name: str) -> None:
    """Issue 7: at the training budget, robust accuracy +15pp or more, clean accuracy -10pp at most."""
    from robustbench_mm.defenses.training import zero_shot_eval
    from robustbench_mm.models.zoo import load_model
    from defense_helpers import shipped

    d, defended = shipped(name)
    base = zero_shot_eval(load_model("clip-tiny"), n=100, eps=d.eps, steps=10)
    ours = zero_shot_eval(defended, n=100, eps=d.eps, steps=10)
    assert ours["robust_accuracy"] >= base["robust_accuracy"] + 0.15, (base, ours)
    assert ours["clean_accuracy"] >= base["clean_accuracy"] - 0.10, (base, ours)
