"""CRMT's model and certificate math: the late-fusion head on frozen CLIP towers, its two training
losses, the certified radius, the Lipschitz estimate ``tau`` and the joint l2 attack that checks it.

The method, its sources and the benchmark's adaptations are described in ``defenses/crmt.py``, which
trains this model as a defense. Model: per modality ``g^(m) = W~^(m) phi^(m)`` with
``W~ = rownorm(center(W))``, fused ``h = sum_m a^(m) ⊙ g^(m) + b``; radius
``r(x) = min_{k!=y} (h_y - h_k) / sqrt(sum_m (|a_y| tau_y + |a_k| tau_k)^2)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustbench_mm.defenses.training import TextInput, mean_token_norm, text_features, token_embedding, tokenize
from robustbench_mm.models.base import VLM


class CRMTHead(nn.Module):
    """Per-modality normalised class weights, integration weights ``a^(m)`` and shared bias ``b``.

    ``forward(feats)`` takes one ``[N,D_m]`` tensor per modality and returns ``(g list, h)``.
    ``tau [M,K]`` (Lipschitz estimates) is a buffer so checkpoints and exports carry it.
    """

    def __init__(self, dims: Sequence[int], num_classes: int, a_init: float = 0.1, reparam: bool = True,
                 seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.reparam = reparam
        self.W = nn.ParameterList([nn.Parameter(torch.randn(num_classes, d, generator=gen) / d ** 0.5) for d in dims])
        self.a = nn.ParameterList([nn.Parameter(torch.full((num_classes,), float(a_init))) for _ in dims])
        self.b = nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("tau", torch.ones(len(dims), num_classes))
        self.register_buffer("tau_ready", torch.zeros(()))

    def weight(self, m: int) -> Tensor:
        """``W~^(m)``: rows centred (mean 0) and l2-normalised [CODE: OWN with one row per group]."""
        w = self.W[m]
        if not self.reparam:
            return w
        w = w - w.mean(dim=1, keepdim=True)
        return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        g = [f.float() @ self.weight(m).T for m, f in enumerate(feats)]
        h = sum(a * gm for a, gm in zip(self.a, g)) + self.b
        return g, h  # type: ignore[return-value]

    def a_list(self) -> list[Tensor]:
        return list(self.a)


def crmt_step1_loss(g_list: Sequence[Tensor], h: Tensor, y: Tensor, rho: float = 1.0) -> Tensor:
    """``CE(h,y) + rho mean_i log(sum_m sum_{k!=y_i} exp(g_k - g_y) + 1e-5)`` (4.4 [CODE])."""
    ce = F.cross_entropy(h, y)
    if not rho:
        return ce
    total = h.new_zeros(len(y))
    for g in g_list:
        diff = g - g.gather(1, y[:, None])
        total = total + diff.exp().masked_fill(F.one_hot(y, g.shape[1]).bool(), 0.0).sum(1)
    return ce + rho * torch.log(total + 1e-5).mean()


def _ratio(g_list: Sequence[Tensor], y: Tensor, k: Tensor, a_list: Sequence[Tensor], b: Tensor, tau: Tensor) -> Tensor:
    """Margin-over-Lipschitz ratio of 4.3 for the class pair ``(y_i, k_i)`` per sample ``[N]``."""
    num = b[y] - b[k]
    den = torch.zeros_like(num)
    for m, (g, a) in enumerate(zip(g_list, a_list)):
        gy, gk = g.gather(1, y[:, None]).squeeze(1), g.gather(1, k[:, None]).squeeze(1)
        num = num + a[y] * gy - a[k] * gk
        den = den + (a[y].abs() * tau[m, y] + a[k].abs() * tau[m, k]) ** 2
    return num / den.sqrt().clamp_min(1e-12)


def crmt_radius(g_list: Sequence[Tensor], h: Tensor, y: Tensor, a_list: Sequence[Tensor], b: Tensor,
                tau: Tensor) -> Tensor:
    """Certified joint-l2 radius per sample ``[N]`` (4.3 [DERIVED]): ``min_{k!=y}`` of the ratio.

    Positive iff ``h`` classifies ``y`` with a strict margin; negative when misclassified."""
    K = h.shape[1]
    ratios = []
    for k in range(K):
        kk = torch.full_like(y, k)
        r = _ratio(g_list, y, kk, a_list, b, tau)
        ratios.append(r.masked_fill(y == k, float("inf")))
    return torch.stack(ratios, 1).amin(1)


def crmt_step2_loss(g_list: Sequence[Tensor], h: Tensor, y: Tensor, a_list: Sequence[Tensor], b: Tensor,
                    tau: Tensor) -> Tensor:
    """``-mean_i ratio(y_i, k_i)`` with ``k_i`` the strongest non-label class of ``h`` (4.4 [CODE]);
    ``g``, ``b`` are detached so only ``a`` moves."""
    k = h.detach().masked_fill(F.one_hot(y, h.shape[1]).bool(), -float("inf")).argmax(1)
    return -_ratio([g.detach() for g in g_list], y, k, a_list, b.detach(), tau).mean()


# ---- the late-fusion model on CLIP towers -------------------------------------------------------
class CRMTFusion(VLM):
    """Frozen CLIP adapter + ``CRMTHead``; keeps the CLIP interface and adds ``fused_logits``."""

    family = "clip"
    capabilities = frozenset({"features", "classify"})

    def __init__(self, clip: Any, head: CRMTHead) -> None:
        super().__init__(clip.image_size, clip.name, clip.revision)
        self.clip, self.head = clip, head
        self.nu = mean_token_norm(clip)

    def raw_vision_features(self, pixels: Tensor) -> Tensor:
        return self.clip.raw_vision_features(pixels)  # type: ignore[no-any-return]

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return self.clip.encode_text(texts)  # type: ignore[no-any-return]

    def classify(self, pixels: Tensor, class_prompts: Any) -> Tensor:
        return self.clip.classify(pixels, class_prompts)  # type: ignore[no-any-return]

    def features(self, pixels: Tensor, texts: Sequence[str], text_delta: Tensor | None = None) -> list[Tensor]:
        """``[phi_img, phi_txt]``: unit CLIP embeddings, text zeroed where missing.
        ``text_delta [B,L,E]`` is in units of the mean token norm ``nu``."""
        img = F.normalize(self.clip.raw_vision_features(pixels).float(), dim=-1)
        tok = tokenize(self.clip, [t or " " for t in texts])
        delta = None if text_delta is None else text_delta * self.nu
        txt = F.normalize(text_features(self.clip, TextInput(tok.ids, tok.mask, delta)).float(), dim=-1)
        present = torch.tensor([bool(t) for t in texts], device=txt.device, dtype=txt.dtype)[:, None]
        return [img, txt * present]

    def outputs(self, pixels: Tensor, texts: Sequence[str], text_delta: Tensor | None = None
                ) -> tuple[list[Tensor], Tensor]:
        return self.head(self.features(pixels, texts, text_delta))  # type: ignore[no-any-return]

    def fused_logits(self, pixels: Tensor, texts: Sequence[str], text_delta: Tensor | None = None) -> Tensor:
        return self.outputs(pixels, texts, text_delta)[1]

    def radius(self, pixels: Tensor, texts: Sequence[str], labels: Tensor) -> Tensor:
        g, h = self.outputs(pixels, texts)
        return crmt_radius(g, h, labels, self.head.a_list(), self.head.b, self.head.tau)

    def text_shape(self, texts: Sequence[str]) -> tuple[int, int, int]:
        ids = tokenize(self.clip, [t or " " for t in texts]).ids
        return (ids.shape[0], ids.shape[1], int(token_embedding(self.clip).weight.shape[1]))


def estimate_tau(fusion: CRMTFusion, pixels: Tensor, texts: Sequence[str], batch_size: int = 128) -> Tensor:
    """``tau [M,K]``: max over samples of ``||grad_{x^(m)} g_c^(m)||_2`` (4.3 [CODE get_lip, BENCH fix:
    uni-modal score, every input gradient kept]); text gradients in ``nu`` units."""
    K = fusion.head.b.shape[0]
    tau = torch.zeros(2, K, device=pixels.device)
    for s in range(0, len(pixels), batch_size):
        x = pixels[s:s + batch_size].clone().requires_grad_(True)
        tx = list(texts[s:s + batch_size])
        d = torch.zeros(fusion.text_shape(tx), device=x.device, requires_grad=True)
        g, _ = fusion.outputs(x, tx, d)
        for c in range(K):
            gx = torch.autograd.grad(g[0][:, c].sum(), x, retain_graph=True)[0]
            gd = torch.autograd.grad(g[1][:, c].sum(), d, retain_graph=True)[0]
            tau[0, c] = torch.maximum(tau[0, c], gx.flatten(1).norm(dim=1).max())
            tau[1, c] = torch.maximum(tau[1, c], gd.flatten(1).norm(dim=1).max())
    return tau.detach()


def joint_l2_attack(fusion: CRMTFusion, pixels: Tensor, texts: Sequence[str], labels: Tensor, eps: float,
                    steps: int = 4, modalities: str = "joint", alpha: float | None = None) -> Tensor:
    """l2 PGD on the fused CE over the joint (image, text/nu) ball of radius ``eps``; returns the
    adversarial fused logits. ``modalities``: ``joint``, ``image`` or ``text``. Default step eps/3,
    4 steps [CODE rob_test.py]; pixels stay in [0,1]."""
    alpha = eps / 3 if alpha is None else alpha
    dx = torch.zeros_like(pixels)
    dt = torch.zeros(fusion.text_shape(texts), device=pixels.device)
    use_x, use_t = modalities in ("joint", "image"), modalities in ("joint", "text")
    for _ in range(steps):
        dx.requires_grad_(True)
        dt.requires_grad_(True)
        loss = F.cross_entropy(fusion.fused_logits((pixels + dx).clamp(0, 1), texts, dt), labels, reduction="sum")
        gx, gt = torch.autograd.grad(loss, (dx, dt))
        with torch.no_grad():
            gx, gt = gx * use_x, gt * use_t
            gn = (gx.flatten(1).norm(dim=1) ** 2 + gt.flatten(1).norm(dim=1) ** 2).sqrt().clamp_min(1e-12)
            dx = dx + alpha * gx / gn.view(-1, 1, 1, 1)
            dt = dt + alpha * gt / gn.view(-1, 1, 1)
            dx = (pixels + dx).clamp(0, 1) - pixels
            n = (dx.flatten(1).norm(dim=1) ** 2 + dt.flatten(1).norm(dim=1) ** 2).sqrt().clamp_min(1e-12)
            f = (eps / n).clamp(max=1.0)
            dx, dt = dx * f.view(-1, 1, 1, 1), dt * f.view(-1, 1, 1)
        dx, dt = dx.detach(), dt.detach()
    with torch.no_grad():
        return fusion.fused_logits(pixels + dx, texts, dt)
