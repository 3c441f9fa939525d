"""MMCoA: multimodal contrastive adversarial fine-tuning of CLIP (and its image-only TeCoA variant).

Paper: Zhou, Bai, Zhao, Chen, "Revisiting the Adversarial Robustness of Vision Language Models: a
Multimodal Perspective", arXiv 2404.19287 [PAPER]; code ElleZWQ/MMCoA [CODE]. Loss (docs/methods.md
[CODE + PAPER]), with ``S(A,B) = s A B^T`` on unit embeddings and ``CE_diag(M) = mean_i CE(M_i, i)``:

    L_img = CE_diag(S(I_adv, T)) + CE_diag(S(T, I_adv))     # adversarial images vs clean texts
    L_txt = CE_diag(S(I, T_adv)) + CE_diag(S(T_adv, I))     # clean images vs adversarial texts
    L     = lam_img L_img + lam_txt L_txt                   # lam_img = lam_txt = 0.5 [CODE]

Same-class batch items count as negatives, as in the code [CODE].

Deviations [BENCH], recorded here and in the presets:
- The text attack inside training is BERT-Attack in the paper [CODE]; offline, with word-level
  tiny vocabularies and no BERT MLM, it is replaced by PGD in token-embedding space (l2 per token,
  radius ``text_eps`` x the mean token-embedding norm) maximising ``L_txt`` against the current
  text tower.
- Image PGD in the loop maximises the zero-shot CE against all class prompts (TeCoA-style,
  [CODE]) but uses ``eps`` / ``pgd_steps`` fitted to the CPU budget and a step of 2.5 eps / steps
  (the code: eps = alpha = 1/255, 10 steps).
- Optimiser: AdamW with a cosine schedule and a higher lr for the tiny models (the code: Adam
  lr 1e-6, wd 0.2, batch 256, 30 epochs on CIFAR).
- TeCoA (Mao et al. ICLR 2023) is the image-only variant: ``lam_txt = 0``, vision tower only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustbench_mm.defenses.base import DEFENSES
from robustbench_mm.defenses.topk_softmax import pgd_examples
from robustbench_mm.defenses.training import (
    ClipFinetuneDefense,
    TextInput,
    image_features,
    mean_token_norm,
    text_features,
    tokenize,
    zero_shot_eval,
)
from robustbench_mm.errors import ConfigError
from robustbench_mm.tasks.bundled import FMNIST_CLASSES


class ContrastiveModel(Protocol):
    """What ``mmcoa_loss`` needs: two encoders (unnormalised outputs are fine) and the scale."""

    logit_scale: float

    def encode_image(self, x: Tensor) -> Tensor: ...

    def encode_text(self, tok: Any) -> Tensor: ...


def ce_diag(m: Tensor) -> Tensor:
    """``mean_i CE(M_i, i)`` for a square logit matrix ``[N,N]``."""
    return F.cross_entropy(m.float(), torch.arange(m.shape[0], device=m.device))


def mmcoa_contrastive(img: Tensor, img_adv: Tensor, txt: Tensor, txt_adv: Tensor, scale: float,
                      lam_img: float = 0.5, lam_txt: float = 0.5) -> Tensor:
    """The MMCoA loss on embeddings ``[N,D]`` (normalised here); terms with weight 0 are skipped."""
    n = lambda v: F.normalize(v.float(), dim=-1)  # noqa: E731
    loss = img.new_zeros((), dtype=torch.float32)
    if lam_img:
        ia, t = n(img_adv), n(txt)
        loss = loss + lam_img * (ce_diag(scale * ia @ t.T) + ce_diag(scale * t @ ia.T))
    if lam_txt:
        i, ta = n(img), n(txt_adv)
        loss = loss + lam_txt * (ce_diag(scale * i @ ta.T) + ce_diag(scale * ta @ i.T))
    return loss


def mmcoa_loss(model: ContrastiveModel, x: Tensor, x_adv: Tensor, t_tok: Any, t_adv_tok: Any,
               lam_img: float = 0.5, lam_txt: float = 0.5) -> Tensor:
    """``lam_img L_img + lam_txt L_txt`` of docs/methods.md for images ``x``/``x_adv`` and prompts
    ``t_tok``/``t_adv_tok`` (whatever ``model.encode_text`` takes), one prompt per image."""
    img = model.encode_image(x) if lam_txt else None
    img_adv = model.encode_image(x_adv) if lam_img else None
    txt = model.encode_text(t_tok) if lam_img else None
    txt_adv = model.encode_text(t_adv_tok) if lam_txt else None
    dummy = next(v for v in (img, img_adv) if v is not None)
    pick = lambda v: dummy if v is None else v  # noqa: E731
    return mmcoa_contrastive(pick(img), pick(img_adv), pick(txt), pick(txt_adv), model.logit_scale, lam_img, lam_txt)


@dataclass
class ClipTowers:
    """A CLIP adapter seen as a ``ContrastiveModel`` (text input: ``TextInput``)."""

    adapter: Any

    @property
    def logit_scale(self) -> float:
        return float(self.adapter.logit_scale_value)

    def encode_image(self, x: Tensor) -> Tensor:
        return image_features(self.adapter, x)

    def encode_text(self, tok: TextInput) -> Tensor:
        return text_features(self.adapter, tok)


# ---- continuous text attack (token-embedding space) ---------------------------------------------
def project_tokens(delta: Tensor, mask: Tensor, radius: float) -> Tensor:
    """Per-token l2 projection of ``delta [...,L,E]`` onto radius ``radius``; pads stay 0."""
    norms = delta.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return delta * (radius / norms).clamp(max=1.0) * mask[..., None].to(delta.dtype)


def token_step(delta: Tensor, grad: Tensor, step: float) -> Tensor:
    """Ascent step along the per-token l2-normalised gradient."""
    return delta + step * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def text_embedding_pgd(loss_fn: Callable[[Tensor], Tensor], text: TextInput, radius: float, steps: int,
                       emb_dim: int) -> Tensor:
    """Maximise ``loss_fn(delta)`` over per-token l2 balls of ``radius``; returns ``delta [T,L,E]``.

    Zero start, step 2.5 radius / steps [BENCH]."""
    delta = torch.zeros(*text.ids.shape, emb_dim, device=text.ids.device)
    for _ in range(steps):
        delta.requires_grad_(True)
        grad = torch.autograd.grad(loss_fn(delta), delta)[0]
        delta = project_tokens(token_step(delta.detach(), grad, 2.5 * radius / steps), text.mask, radius)
    return delta.detach()


def joint_attack(model: Any, x: Tensor, y: Tensor, prompts: list[str], eps_img: float, text_eps: float,
                 steps: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Joint image (linf ``eps_img``) + text-embedding (per-token l2, ``text_eps`` x mean token norm)
    PGD on the zero-shot CE, with a separate text perturbation of every class prompt per sample.

    Returns ``(x_adv [B,3,H,W], logits_adv [B,C])``; ``eps_img = 0`` or ``text_eps = 0`` gives the
    uni-modal attacks. Steps: eps/4 (image), 2.5 r / steps (text) [BENCH]."""
    B, C = len(x), len(prompts)
    text = tokenize(model, prompts)
    rep = TextInput(text.ids.repeat(B, 1), text.mask.repeat(B, 1))
    radius = text_eps * mean_token_norm(model)
    emb = token_embedding_dim(model)
    x_adv = x.clone()
    if eps_img:
        x_adv = (x + (torch.rand(x.shape, generator=gen) * 2 - 1).to(x.device) * eps_img).clamp(0, 1)
    delta = torch.zeros(*rep.ids.shape, emb, device=x.device)

    def logits_of(xa: Tensor, d: Tensor) -> Tensor:
        img = F.normalize(image_features(model, xa).float(), dim=-1)
        txt = F.normalize(text_features(model, rep.with_delta(d if text_eps else None)).float(), dim=-1)
        return model.logit_scale_value * torch.einsum("bd,bcd->bc", img, txt.view(B, C, -1))

    for _ in range(steps):
        x_adv.requires_grad_(True)
        delta.requires_grad_(True)
        loss = F.cross_entropy(logits_of(x_adv, delta), y, reduction="sum")
        gx, gd = torch.autograd.grad(loss, (x_adv, delta), allow_unused=True)
        with torch.no_grad():
            if eps_img:
                x_adv = torch.min(torch.max(x_adv + eps_img / 4 * gx.sign(), x - eps_img), x + eps_img).clamp(0, 1)
            if text_eps and gd is not None:
                delta = project_tokens(token_step(delta, gd, 2.5 * radius / steps), rep.mask, radius)
        x_adv, delta = x_adv.detach(), delta.detach()
    with torch.no_grad():
        return x_adv, logits_of(x_adv, delta)


def joint_eval(model: Any, *, n: int, eps_img: float, text_eps: float, steps: int, seed: int = 0,
               template: str = "a photo of a {c}", batch_size: int = 50) -> dict[str, float]:
    """Accuracy on ``n`` bundled eval images: clean, image-only, text-only and joint attacks."""
    from robustbench_mm.tasks.zero_shot import ZeroShotClassification

    task = ZeroShotClassification(classes=tuple(FMNIST_CLASSES), templates=(template,))
    prompts = [template.format(c=c) for c in FMNIST_CLASSES]
    counts = {"clean": 0, "image": 0, "text": 0, "joint": 0}
    total = 0
    for batch in task.examples(n=n, seed=seed, batch_size=batch_size, image_size=model.image_size):
        b = batch.to(model.device)
        with torch.no_grad():
            ok = model.classify(b.pixels, prompts).argmax(1) == b.labels
        counts["clean"] += int(ok.sum())
        for name, ei, et in (("image", eps_img, 0.0), ("text", 0.0, text_eps), ("joint", eps_img, text_eps)):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + int(b.index[0]))
            _, logits = joint_attack(model, b.pixels, b.labels, prompts, ei, et, steps, gen)
            counts[name] += int(((logits.argmax(1) == b.labels) & ok).sum())
        total += len(b)
    return {f"{k}_accuracy": v / total for k, v in counts.items()} | {"n": float(total)}


@DEFENSES.register("mmcoa")
class MMCoA(ClipFinetuneDefense):
    """MMCoA adversarial fine-tuning of CLIP (both towers by default); TeCoA with ``lam_txt: 0``.

    Args:
        lam_img, lam_txt: weights of ``L_img`` / ``L_txt`` (0.5 / 0.5 [CODE]).
        eps, pgd_steps: image linf budget and PGD steps in the loop [BENCH].
        text_eps, text_steps: token-embedding radius (fraction of the mean token-embedding norm)
            and steps of the text attack [BENCH, replaces BERT-Attack].
        towers: which CLIP towers train (``vision``, ``text``); both in MMCoA [CODE].
        template: prompt template of the training texts [BENCH: the bundled task's template;
            the code uses "This is a photo of a {c}"].
        steps, batch_size, lr, weight_decay, warmup, seed, ckpt_every, log_every: optimisation.
        eval_n, eval_steps, eval_text_eps: what the card measures (PGD linf at ``eps``; joint
            image+text attack at ``eval_text_eps``).
    """

    def __init__(self, *, lam_img: float = 0.5, lam_txt: float = 0.5, eps: float = 4 / 255, pgd_steps: int = 3,
                 text_eps: float = 0.25, text_steps: int = 3, towers: tuple[Literal["vision", "text"], ...] = (
                     "vision", "text"), template: str = "a photo of a {c}", steps: int = 300, batch_size: int = 64,
                 lr: float = 1e-4, weight_decay: float = 0.1, warmup: int = 20, seed: int = 0, ckpt_every: int = 50,
                 log_every: int = 10, eval_n: int = 500, eval_steps: int = 10, eval_text_eps: float = 0.25) -> None:
        if lam_img < 0 or lam_txt < 0 or lam_img + lam_txt == 0:
            raise ConfigError(f"lam_img={lam_img}, lam_txt={lam_txt} must be >= 0 and not both 0")
        if not towers or any(t not in ("vision", "text") for t in towers):
            raise ConfigError(f"towers={towers!r} must name vision and/or text")
        self._record(locals())
        self.towers = tuple(towers)

    def class_prompts(self) -> list[str]:
        return [self.template.format(c=c) for c in FMNIST_CLASSES]

    def train_step(self, model: Any, module: nn.Module, x: Tensor, y: Tensor, step: int,
                   gen: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        prompts = self.class_prompts()
        towers = ClipTowers(model)
        x_adv = pgd_examples(model, x, y, prompts, self.eps, self.pgd_steps, gen) if self.lam_img else x
        text = tokenize(model, [prompts[int(c)] for c in y])
        text_adv = text
        if self.lam_txt and self.text_eps:
            with torch.no_grad():
                img = image_features(model, x).detach()
            radius = self.text_eps * mean_token_norm(model)
            emb = token_embedding_dim(model)
            delta = text_embedding_pgd(
                lambda d: mmcoa_contrastive(img, img, img, text_features(model, text.with_delta(d)),
                                            towers.logit_scale, 0.0, 1.0), text, radius, self.text_steps, emb)
            text_adv = text.with_delta(delta)
        loss = mmcoa_loss(towers, x, x_adv, text, text_adv, self.lam_img, self.lam_txt)
        return loss, {}

    def measure(self, model: Any, module: nn.Module) -> dict[str, float]:
        out = zero_shot_eval(model, n=self.eval_n, eps=self.eps, steps=self.eval_steps)
        joint = joint_eval(model, n=min(self.eval_n, 100), eps_img=self.eps, text_eps=self.eval_text_eps,
                           steps=self.eval_steps)
        return out | {f"joint_{k}": v for k, v in joint.items()}


def token_embedding_dim(model: Any) -> int:
    from robustbench_mm.defenses.training import token_embedding

    return int(token_embedding(model).weight.shape[1])
