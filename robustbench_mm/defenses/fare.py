"""Unsupervised adversarial fine-tuning of the CLIP image encoder: FARE and Sim-CLIP.

Both train the vision tower only, with no labels and no text, so the embedding a downstream model
(LLaVA's projector, zero-shot class prompts) was built on stays where it was.

FARE (Schlarmann, Singh, Croce, Hein, "Robust CLIP", ICML 2024; code chs20/RobustVLM), with the
moving encoder ``phi`` and a frozen copy ``phi_0`` of the original encoder:

    L_FARE(phi; x) = max_{||z - x||_inf <= eps} || phi(z) - phi_0(x) ||_2^2     (unnormalised embeddings)

The inner maximisation is PGD on that same loss, against the frozen target ``phi_0(x)``.

Sim-CLIP (Hossain & Imteaj, 2024), SimSiam-style with a stop-gradient on the clean branch:

    L_Sim(phi; x) = - cos( phi(x_adv), sg(phi(x)) ),   x_adv = argmax_{||z - x||_inf <= eps} L_Sim

Deviations [BENCH], recorded here and in the presets: optimisation steps, batch, PGD steps and the
learning rate are fitted to a 2-core CPU and the tiny zoo encoders; ``defenses/fare-paper.yaml`` and
``defenses/sim-clip-paper.yaml`` hold the published settings for real encoders.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustbench_mm.defenses.base import DEFENSES
from robustbench_mm.defenses.training import ClipFinetuneDefense, image_features, zero_shot_eval
from robustbench_mm.errors import ConfigError


def fare_loss(embedding_adv: Tensor, frozen_clean: Tensor) -> Tensor:
    """Per-sample squared l2 distance ``[B]`` between adversarial embeddings and the frozen target."""
    return (embedding_adv.float() - frozen_clean.float()).pow(2).sum(dim=-1)


def sim_clip_loss(embedding_adv: Tensor, embedding_clean: Tensor) -> Tensor:
    """Per-sample negative cosine similarity ``[B]``; the clean branch is detached (stop-gradient)."""
    return -F.cosine_similarity(embedding_adv.float(), embedding_clean.detach().float(), dim=-1)


def embedding_pgd(loss_of: Callable[[Tensor], Tensor], x: Tensor, *, eps: float, steps: int, alpha: float,
                  random_start: bool, gen: torch.Generator) -> Tensor:
    """linf PGD maximising ``loss_of(z).sum()`` over ``||z - x||_inf <= eps`` (pixels stay in [0,1]).

    The random start comes from ``gen`` so a resumed training step draws what the first run drew."""
    if eps == 0 or steps == 0:
        return x.detach()
    z = x.detach().clone()
    if random_start:
        z = (z + (torch.rand(x.shape, generator=gen) * 2 - 1).to(x.device) * eps).clamp(0, 1)
    for _ in range(steps):
        z.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_of(z).sum(), z)
        with torch.no_grad():
            z = torch.min(torch.max(z + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return z.detach()


class EmbeddingFinetune(ClipFinetuneDefense):
    """Shared parts of FARE and Sim-CLIP: vision tower only, embedding PGD in the loop, zero-shot card."""

    towers = ("vision",)
    eps: float
    pgd_steps: int
    pgd_alpha: float
    random_start: bool
    eval_steps: int

    def _check(self) -> None:
        if not 0 <= self.eps <= 1:
            raise ConfigError(f"eps={self.eps} must be in [0, 1] (pixel units, e.g. 4/255)")
        if self.pgd_steps < 0 or self.pgd_alpha < 0:
            raise ConfigError(f"pgd_steps={self.pgd_steps} and pgd_alpha={self.pgd_alpha} must be >= 0")

    def step_size(self) -> float:
        """``pgd_alpha`` when set (the papers: 1/255), else 2.5 eps / steps [BENCH, few steps]."""
        return self.pgd_alpha or 2.5 * self.eps / max(1, self.pgd_steps)

    def attack(self, model: Any, x: Tensor, gen: torch.Generator) -> Tensor:
        """Adversarial images of the inner maximisation (the objective's own loss)."""
        target = self.attack_target(model, x)
        return embedding_pgd(lambda z: self.objective(image_features(model, z), target), x, eps=self.eps,
                             steps=self.pgd_steps, alpha=self.step_size(), random_start=self.random_start, gen=gen)

    def loss(self, model: Any, x: Tensor, x_adv: Tensor) -> Tensor:
        """Outer loss to minimise (batch mean) at fixed adversarial images."""
        return self.objective(image_features(model, x_adv), self.loss_target(model, x)).mean()

    def train_step(self, model: Any, module: nn.Module, x: Tensor, y: Tensor, step: int,
                   gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        del y  # label-free: the labels the loop draws are never used
        return self.loss(model, x, self.attack(model, x, gen)), {}

    def measure(self, model: Any, module: nn.Module) -> dict[str, float]:
        return zero_shot_eval(model, n=self.eval_n, eps=self.eps, steps=self.eval_steps)

    # -- what a subclass defines (abstract, as the template's hooks) --
    @abstractmethod
    def objective(self, embedding_adv: Tensor, target: Tensor) -> Tensor:
        """Per-sample loss between the adversarial embedding and ``target`` ``[B]``."""

    @abstractmethod
    def attack_target(self, model: Any, x: Tensor) -> Tensor:
        """The embedding the inner attack moves away from (held fixed during the attack)."""

    @abstractmethod
    def loss_target(self, model: Any, x: Tensor) -> Tensor:
        """The embedding the outer loss pulls the adversarial one towards."""


@DEFENSES.register("fare")
class FARE(EmbeddingFinetune):
    """FARE: keep adversarial embeddings at the frozen original encoder's clean embedding.

    Args:
        eps: linf budget of the inner PGD (FARE^2: 2/255, FARE^4: 4/255 [PAPER]).
        pgd_steps, pgd_alpha: inner PGD steps and step (0 = 2.5 eps / steps [BENCH]; paper 10 x 1/255).
        random_start: uniform start in the eps ball.
        steps, batch_size, lr, weight_decay, warmup, seed, ckpt_every, log_every: optimisation
            (AdamW, linear warm-up then cosine decay as in the paper).
        eval_n, eval_steps: what the card measures (zero-shot PGD at ``eps``).
    """

    def __init__(self, *, eps: float = 4 / 255, pgd_steps: int = 3, pgd_alpha: float = 0.0, random_start: bool = True,
                 steps: int = 150, batch_size: int = 32, lr: float = 5e-4, weight_decay: float = 1e-4,
                 warmup: int = 10, seed: int = 0, ckpt_every: int = 50, log_every: int = 10, eval_n: int = 300,
                 eval_steps: int = 10) -> None:
        self._record(locals())
        self._check()
        self._frozen: Any = None

    def prepare(self, model: Any) -> nn.Module:
        # phi_0: a frozen copy taken before any update, the target of both the loss and the attack
        self._frozen = copy.deepcopy(model)
        for p in self._frozen.parameters():
            p.requires_grad_(False)
        self._frozen.eval()
        return super().prepare(model)

    def export(self, model: Any, module: nn.Module, out: Path) -> None:
        super().export(model, module, out)
        self._frozen = None  # training is over: drop the copy of the original encoder

    def frozen_features(self, x: Tensor) -> Tensor:
        if self._frozen is None:
            raise ConfigError("FARE.prepare(model) must run before its loss: it keeps the original encoder")
        with torch.no_grad():
            return image_features(self._frozen, x).detach()

    def objective(self, embedding_adv: Tensor, target: Tensor) -> Tensor:
        return fare_loss(embedding_adv, target)

    def attack_target(self, model: Any, x: Tensor) -> Tensor:
        return self.frozen_features(x)

    def loss_target(self, model: Any, x: Tensor) -> Tensor:
        return self.frozen_features(x)


@DEFENSES.register("sim-clip")
class SimCLIP(EmbeddingFinetune):
    """Sim-CLIP: pull the adversarial embedding towards the (stop-gradient) clean one by cosine.

    Args: as ``FARE`` (paper: eps 4/255 or 2/255, PGD 10 x 1/255, AdamW lr 1e-3, wd 1e-5 [PAPER]).
    """

    def __init__(self, *, eps: float = 4 / 255, pgd_steps: int = 3, pgd_alpha: float = 0.0, random_start: bool = True,
                 steps: int = 150, batch_size: int = 32, lr: float = 5e-4, weight_decay: float = 1e-5,
                 warmup: int = 10, seed: int = 0, ckpt_every: int = 50, log_every: int = 10, eval_n: int = 300,
                 eval_steps: int = 10) -> None:
        self._record(locals())
        self._check()

    def objective(self, embedding_adv: Tensor, target: Tensor) -> Tensor:
        return sim_clip_loss(embedding_adv, target)

    def attack_target(self, model: Any, x: Tensor) -> Tensor:
        with torch.no_grad():  # the current encoder's clean embedding, held fixed during the attack
            return image_features(model, x).detach()

    def loss_target(self, model: Any, x: Tensor) -> Tensor:
        return image_features(model, x)  # detached inside sim_clip_loss: the stop-gradient branch
