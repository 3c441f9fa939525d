"""Adversarial perturbation of CLIP text token embeddings (for multimodal adversarial training and
for attacking zero-shot classifiers through their class prompts).

The perturbation ``delta`` ``[T,L,D]`` is added to the output of the text tower's token-embedding
layer (before position embeddings) through a forward hook, so it works for transformers
``CLIPModel`` and open_clip alike. Budget per text: ``||delta_t||_2 <= eps`` over the whole sequence
(``l2``) or ``|delta| <= eps`` elementwise (``linf``), in embedding units (not pixels).

Loss maximised (PGD, random start):
- ``labels`` given (classification): texts are class prompts, ``CE(s * I @ T_adv^T, labels)``.
- ``labels`` None (paired): texts[i] describes image i, MMCoA's image-supervised text loss
  ``CE_diag(s I T_adv^T) + CE_diag(s T_adv I^T)`` (docs/methods.md).

The ``text-embed`` attack preset perturbs the class-prompt embeddings of a classification task,
one perturbation per attacked batch (the text side of zero-shot classification is shared by all
images); pixels are unchanged, and the runner judges with ``verdict_model`` (the adversarial class
embeddings). Its rows depend on batch composition; its ``eps`` is in embedding units.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Literal, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustbench_mm.attacks.base import ATTACKS, Attack
from robustbench_mm.attacks.objectives import has_logits
from robustbench_mm.errors import CapabilityError, ConfigError
from robustbench_mm.types import AttackResult, Batch, Norm, Objective


class TextAttackResult(NamedTuple):
    """``delta`` ``[T,L,D]``, adversarial unit text features ``[T,D]``, final loss (scalar)."""

    delta: Tensor
    text_features: Tensor
    loss: Tensor


def token_embedding(model: Any) -> nn.Module:
    """The text tower's token-embedding layer of a CLIP adapter (HF or open_clip)."""
    inner = getattr(model, "model", model)
    for name, mod in inner.named_modules():
        if name.endswith("token_embedding") and isinstance(mod, nn.Embedding):
            return mod
    raise CapabilityError(f"model {getattr(model, 'name', type(model).__name__)!r} has no CLIP text tower "
                          f"(token_embedding); text-embed attacks need a CLIP model")


@contextmanager
def added_to_token_embeddings(model: Any, delta: Tensor | None) -> Iterator[dict[str, Any]]:
    """While active, the token-embedding output gets ``+ delta`` (None: record the shape only)."""
    seen: dict[str, Any] = {}

    def hook(_m: nn.Module, _inp: Any, out: Tensor) -> Tensor:
        seen["shape"] = tuple(out.shape)
        return out if delta is None else out + delta.to(out.dtype)

    handle = token_embedding(model).register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def encode_text_with_delta(model: Any, texts: Sequence[str], delta: Tensor | None) -> Tensor:
    """Differentiable unit text features ``[T,D]`` with ``delta`` added to the token embeddings."""
    with added_to_token_embeddings(model, delta):
        return F.normalize(model._text_embed(list(texts)).float(), dim=-1)


def _project(delta: Tensor, norm: Norm, eps: float) -> Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    return delta * (eps / n).clamp(max=1.0)


def _loss(image_features: Tensor, text_features: Tensor, labels: Tensor | None, scale: float) -> Tensor:
    logits = scale * image_features @ text_features.T
    if labels is not None:
        return F.cross_entropy(logits, labels.to(logits.device))
    diag = torch.arange(len(logits), device=logits.device)
    return F.cross_entropy(logits, diag) + F.cross_entropy(logits.T, diag)


def text_embedding_attack(
    model: Any,
    texts: Sequence[str],
    image_features: Tensor,
    *,
    labels: Tensor | None = None,
    norm: Norm = "l2",
    eps: float = 0.5,
    steps: int = 10,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> TextAttackResult:
    """PGD on text token embeddings of a CLIP adapter (see module docstring for the loss).

    Args:
        model: CLIP adapter (``_text_embed`` + a ``token_embedding`` layer); may be in train mode.
        texts: ``T`` prompts; with ``labels`` they are the class prompts, else paired with images.
        image_features: ``[B,D]`` image embeddings (normalised here; detached).
        labels: ``[B]`` class ids into ``texts`` (classification), or None (paired, T == B).
        norm, eps: per-text budget in embedding units.
        steps, step_size: PGD iterations and step (default ``eps/4`` linf, ``2.5 eps/steps`` l2).
        generator: CPU generator for the random start (seeded 0 if None).

    Returns: ``TextAttackResult``; ``delta`` is detached, so training code can recompute the
    adversarial text features with gradients to the weights via ``encode_text_with_delta``.
    """
    if eps <= 0 or steps <= 0:
        raise ConfigError(f"eps={eps} and steps={steps} must be positive")
    if labels is None and len(texts) != len(image_features):
        raise ConfigError(f"paired text attack needs one text per image ({len(texts)} texts, "
                          f"{len(image_features)} images); pass labels for class prompts")
    gen = generator or torch.Generator().manual_seed(0)
    step = step_size or (eps / 4 if norm == "linf" else 2.5 * eps / steps)
    img = F.normalize(image_features.detach().float(), dim=-1)
    scale = float(getattr(model, "logit_scale_value", 100.0))
    with torch.no_grad(), added_to_token_embeddings(model, None) as seen:
        model._text_embed(list(texts))
    shape = seen["shape"]
    if norm == "linf":
        delta = (torch.rand(shape, generator=gen) * 2 - 1) * eps
    else:
        delta = _project(torch.randn(shape, generator=gen) * eps, "l2", eps)
    delta = delta.to(img.device)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = _loss(img, encode_text_with_delta(model, texts, delta), labels, scale)
        grad = torch.autograd.grad(loss, delta)[0]
        with torch.no_grad():
            if norm == "linf":
                delta = delta + step * grad.sign()
            else:
                delta = delta + step * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1)
            delta = _project(delta, norm, eps)
    with torch.no_grad():
        feats = encode_text_with_delta(model, texts, delta)
        loss = _loss(img, feats, labels, scale)
    return TextAttackResult(delta.detach(), feats.detach(), loss.detach())


class AdversarialPromptModel(nn.Module):
    """The victim with its class-prompt embeddings replaced by adversarial ones (for the verdict)."""

    def __init__(self, model: Any, class_prompts: Any, class_weights: Tensor) -> None:
        super().__init__()
        self.victim, self.class_prompts, self.weights = model, class_prompts, class_weights

    def classify(self, pixels: Tensor, class_prompts: Any) -> Tensor:
        if list(class_prompts) != list(self.class_prompts):
            return self.victim.classify(pixels, class_prompts)  # type: ignore[no-any-return]
        image = F.normalize(self.victim.vision_features(pixels).float(), dim=-1)
        return self.victim.logit_scale_value * image @ self.weights.to(image.device).T  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.victim, name)


@ATTACKS.register("text-embed")
class TextEmbedAttack(Attack):
    """Perturb the class-prompt token embeddings of a zero-shot classifier (see module docstring).

    Args:
        norm, eps: per-prompt budget in token-embedding units (``l2`` over the prompt, or ``linf``).
        steps, step_size: PGD iterations and step (None = ``2.5 eps/steps`` l2, ``eps/4`` linf).
        seed: random-start seed when no generator is passed.
    """

    def __init__(self, *, norm: Literal["linf", "l2"] = "l2", eps: float = 0.5, steps: int = 10,
                 step_size: float | None = None, seed: int = 0) -> None:
        if eps <= 0 or steps <= 0:
            raise ConfigError(f"eps={eps} and steps={steps} must be positive")
        self.text_norm, self.text_eps, self.steps, self.step_size, self.seed = norm, eps, steps, step_size, seed
        # The pixel threat model is empty: the guard checks pixels are unchanged.
        self.norm, self.eps = None, None
        self._adversarial: AdversarialPromptModel | None = None

    def check_task(self, objective: Objective, capabilities: frozenset[str]) -> None:
        prompts = getattr(objective, "class_prompts", None)
        if not has_logits(objective) or prompts is None:
            raise CapabilityError("text-embed needs a zero-shot classification task (class prompts), "
                                  "e.g. --task fmnist-zeroshot with a CLIP model")
        if not isinstance(prompts[0], str):
            raise CapabilityError("text-embed supports one template per class (no prompt ensembles)")

    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        self.check_task(objective, frozenset())
        prompts = getattr(objective, "class_prompts")
        with torch.no_grad():
            img = model.vision_features(batch.pixels).float()
        res = text_embedding_attack(model, prompts, img, labels=batch.labels, norm=self.text_norm, eps=self.text_eps,
                                    steps=self.steps, step_size=self.step_size, generator=generator)
        self._adversarial = AdversarialPromptModel(model, prompts, res.text_features)
        with torch.no_grad():
            loss = objective(self._adversarial, batch.pixels, batch).float()
        return AttackResult(batch.pixels.clone(), loss, self.steps)

    def verdict_model(self, model: Any) -> Any:
        """The model the runner judges adversarial pixels with: adversarial class embeddings of the
        last ``perturb`` call (the victim itself before any)."""
        return self._adversarial if self._adversarial is not None else model

    def describe(self) -> dict[str, Any]:
        return {"norm": f"text-{self.text_norm}", "eps": float(self.text_eps), "steps": self.steps}
