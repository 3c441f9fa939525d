"""Feature-level attacks on the vision encoder (docs/methods.md): untargeted ``embed`` and the
AttackVLM targeted MF-ii / MF-it (Zhao et al., NeurIPS 2023, "On Evaluating Adversarial Robustness
of Large Vision-Language Models").

All three replace the task objective in ``prepare`` with a feature objective and optimise it with
PGD or APGD under the same threat model; ASR is still the downstream task's criterion (the runner
judges the adversarial pixels with the task), and samples.parquet stores the achieved cosine.

Choices (documented for the tables):
- ``embed``: maximise ``1 - cos(f(x'), f(x))``, ``f = model.encode_image`` (the defended pipeline).
- ``mf-ii``: maximise ``cos(f(x'), f(x_tar))``. The paper's ``x_tar`` is a Stable-Diffusion image of
  the target text, unavailable offline. ``target: batch`` takes, for sample i, the next sample of
  the (attacked) batch with a different label (cyclically); a batch of one class falls back to
  ``bundled``: the first image of class ``(y + 1) mod 10`` of the bundled Fashion-MNIST slice.
  Targets thus depend on batch composition (fixed by task, seed, n and batch size).
- ``mf-it``: maximise ``cos(f(x'), g(t_tar))`` with CLIP's own image and text towers. ``t_tar`` is
  ``target_text`` or, for classification tasks, the class prompt of class ``(y + 1) mod C``. Models
  without a text tower (LLaVA, BLIP-2) need ``surrogate`` (a CLIP model name, e.g.
  ``clip-vit-l-14-336`` whose vision tower LLaVA-1.5 shares): the perturbation is then computed on
  the surrogate and transferred, as in AttackVLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_mm.attacks.apgd import APGD
from robustbench_mm.attacks.base import ATTACKS, Attack, check_threat
from robustbench_mm.attacks.guard import check_valid
from robustbench_mm.attacks.pgd import PGD
from robustbench_mm.errors import CapabilityError, ConfigError
from robustbench_mm.registry import Registry
from robustbench_mm.types import AttackResult, Batch, Objective


def features(model: Any, pixels: Tensor) -> Tensor:
    """Vision features ``[B,D]``: ``encode_image`` for VLMs, the output of a plain ``nn.Module``."""
    enc = getattr(model, "encode_image", None)
    out = enc(pixels) if callable(enc) else model(pixels)
    return out.flatten(1).float()  # type: ignore[no-any-return]


@dataclass
class CosineAwayObjective:
    """``1 - cos(f(x'), f_ref)``, per example (untargeted)."""

    reference: Tensor

    def __call__(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        f = features(model, pixels)
        return 1 - F.cosine_similarity(f, self.reference.to(f.device), dim=-1)


@dataclass
class CosineTowardsObjective:
    """``cos(f(x'), target)``, per example; ``encoder`` replaces the victim for transfer attacks."""

    target: Tensor
    encoder: Any = None

    def __call__(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        f = features(self.encoder if self.encoder is not None else model, pixels)
        return F.cosine_similarity(f, self.target.to(f.device), dim=-1)


class FeatureAttack(Attack):
    """Shared PGD/APGD driver of the feature attacks; subclasses build the objective in ``prepare``.

    Args:
        norm, eps: threat model in [0,1] pixel units.
        steps: iterations; step_size: PGD step (None = docs/methods.md default); restarts.
        optimizer: ``pgd`` or ``apgd``.
        search_dtype: ``fp32`` or ``bf16`` autocast for the search.
        seed: generator seed for ``attack(model, x, y)``.
    """

    def __init__(
        self,
        *,
        norm: Literal["linf", "l2"] = "linf",
        eps: float = 8 / 255,
        steps: int = 100,
        step_size: float | None = None,
        restarts: int = 1,
        optimizer: Literal["pgd", "apgd"] = "pgd",
        search_dtype: Literal["fp32", "bf16"] = "fp32",
        seed: int = 0,
    ) -> None:
        check_threat(norm, eps, steps)
        self.norm, self.eps, self.steps, self.restarts, self.seed = norm, eps, steps, restarts, seed
        self.optimizer, self.search_dtype = optimizer, search_dtype
        common = dict(norm=norm, eps=eps, steps=steps, restarts=restarts, search_dtype=search_dtype, seed=seed)
        if optimizer == "pgd":
            self.inner: Attack = PGD(step_size=step_size, **common)  # type: ignore[arg-type]
        else:
            if step_size is not None:
                raise ConfigError("step_size is adaptive in apgd; leave it unset (null)")
            self.inner = APGD(loss=None, **common)  # type: ignore[arg-type]

    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        return self.inner.perturb(model, batch, objective, generator=generator)

    def __call__(self, model: Any, x: Tensor, y: Tensor) -> Tensor:
        """``attack(model, x, y)``: features are ``model.encode_image`` or the module's output."""
        batch = Batch(pixels=x.detach(), labels=y.to(x.device), index=torch.arange(len(x)))
        gen = torch.Generator().manual_seed(self.seed)
        result = self.perturb(model, batch, self.prepare(model, batch, None), generator=gen)  # type: ignore[arg-type]
        check_valid(x, result.pixels, self.norm, self.eps)
        return result.pixels


@ATTACKS.register("embed")
class EmbeddingAttack(FeatureAttack):
    """Untargeted feature attack: push ``f(x')`` away from the clean ``f(x)`` (cosine)."""

    def prepare(self, model: Any, batch: Batch, objective: Objective) -> Objective:
        with torch.no_grad():
            return CosineAwayObjective(features(model, batch.pixels).detach())


def shifted_targets(labels: Tensor) -> Tensor:
    """For each i, the index of the next sample (cyclically) with a different label; -1 if none."""
    n = len(labels)
    lab = labels.tolist()
    out = []
    for i in range(n):
        j = next(((i + d) % n for d in range(1, n) if lab[(i + d) % n] != lab[i]), -1)
        out.append(j)
    return torch.tensor(out, dtype=torch.long)


# Where ``target: bundled`` images come from: the task layer registers the bundled Fashion-MNIST
# slice under "bundled" (tasks/bundled.py), so the attack names a data source without importing it.
TARGET_IMAGES: Registry[Callable[[Tensor, int], Tensor]] = Registry("target image source")


@ATTACKS.register("mf-ii")
class MFii(FeatureAttack):
    """AttackVLM MF-ii: pull ``f(x')`` towards a target image's features (see module docstring).

    Args: as ``FeatureAttack`` plus ``target``: ``batch`` (another-class sample of the batch) or
    ``bundled`` (a Fashion-MNIST image of class ``(y + 1) mod 10``).
    """

    def __init__(
        self,
        *,
        target: Literal["batch", "bundled"] = "batch",
        norm: Literal["linf", "l2"] = "linf",
        eps: float = 8 / 255,
        steps: int = 100,
        step_size: float | None = None,
        restarts: int = 1,
        optimizer: Literal["pgd", "apgd"] = "pgd",
        search_dtype: Literal["fp32", "bf16"] = "fp32",
        seed: int = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, steps=steps, step_size=step_size, restarts=restarts,
                         optimizer=optimizer, search_dtype=search_dtype, seed=seed)
        self.target = target

    def target_pixels(self, batch: Batch) -> Tensor:
        x = batch.pixels.detach()
        labels = batch.labels.cpu()
        out = torch.empty_like(x)
        j = shifted_targets(labels) if self.target == "batch" else torch.full((len(x),), -1)
        have = j >= 0
        if bool(have.any()):
            out[have.to(x.device)] = x[j[have].to(x.device)]
        if bool((~have).any()):
            out[(~have).to(x.device)] = TARGET_IMAGES.get("bundled")(labels[~have], x.shape[-1]).to(x)
        return out

    def prepare(self, model: Any, batch: Batch, objective: Objective) -> Objective:
        with torch.no_grad():
            return CosineTowardsObjective(features(model, self.target_pixels(batch)).detach())


@ATTACKS.register("mf-it")
class MFit(FeatureAttack):
    """AttackVLM MF-it: pull the image embedding towards a target text's CLIP text embedding.

    Args: as ``FeatureAttack`` plus ``target_text`` (None: class prompt of class ``(y + 1) mod C``
    for classification tasks) and ``surrogate`` (CLIP model name for models without a text tower).
    """

    def __init__(
        self,
        *,
        target_text: str | None = None,
        surrogate: str | None = None,
        norm: Literal["linf", "l2"] = "linf",
        eps: float = 8 / 255,
        steps: int = 100,
        step_size: float | None = None,
        restarts: int = 1,
        optimizer: Literal["pgd", "apgd"] = "pgd",
        search_dtype: Literal["fp32", "bf16"] = "fp32",
        seed: int = 0,
    ) -> None:
        super().__init__(norm=norm, eps=eps, steps=steps, step_size=step_size, restarts=restarts,
                         optimizer=optimizer, search_dtype=search_dtype, seed=seed)
        self.target_text, self.surrogate = target_text, surrogate
        self._surrogate_model: Any = None

    def check_task(self, objective: Any, capabilities: frozenset[str]) -> None:
        if capabilities and "classify" not in capabilities and self.surrogate is None:
            raise CapabilityError("mf-it needs a text tower, which this model family lacks: "
                                  "set params.surrogate to a CLIP model (e.g. clip-vit-l-14-336)")

    def _clip(self, model: Any, device: torch.device) -> tuple[Any, Any]:
        """(text-capable CLIP, image encoder used by the objective; None = the victim itself)."""
        if "classify" in getattr(model, "capabilities", frozenset()):
            return model, None
        if self.surrogate is None:
            raise CapabilityError(f"mf-it needs a text tower; model {getattr(model, 'name', '')!r} has none: "
                                  f"set params.surrogate to a CLIP model (e.g. clip-vit-l-14-336)")
        if self._surrogate_model is None:
            from robustbench_mm.models.zoo import LoadOptions, load_model

            self._surrogate_model = load_model(self.surrogate, LoadOptions(device=device.type))
        return self._surrogate_model, self._surrogate_model

    def target_embeddings(self, clip: Any, batch: Batch, objective: Any) -> Tensor:
        if self.target_text is not None:
            return clip.encode_text([self.target_text]).float().expand(len(batch), -1)
        if isinstance(batch.targets, list) and batch.targets:  # generative tasks name a target per sample
            return clip.encode_text(list(batch.targets)).float()
        prompts = getattr(objective, "class_prompts", None)
        if prompts is None:
            raise ConfigError("mf-it: set params.target_text (the task has no class prompts to pick from)")
        weights = clip.class_weights(prompts).float()  # [C,D], unit norm
        return weights[(batch.labels.to(weights.device) + 1) % len(weights)]

    def prepare(self, model: Any, batch: Batch, objective: Objective) -> Objective:
        clip, encoder = self._clip(model, batch.pixels.device)
        with torch.no_grad():
            return CosineTowardsObjective(self.target_embeddings(clip, batch, objective).detach(), encoder)
