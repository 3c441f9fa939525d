"""The one interface every model family implements; attacks and tasks only see this."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from robustbench_mm.errors import CapabilityError

FeatureFn = Callable[[Tensor], Tensor]
# A defense at inference replaces the vision features: transform(raw_feature_fn, pixels) -> features.
FeatureTransform = Callable[[FeatureFn, Tensor], Tensor]


class PlainPrompt(str):
    """A prompt the language model reads as it is, without the adapter's chat template or VQA
    format (BLIP-2 captioning starts the caption with ``"a photo of"``); the image tokens still
    come first."""


class VLM(nn.Module, ABC):
    """A vision(-language) model on unnormalised pixels ``[B,3,H,W]`` in [0,1].

    Normalisation (mean/std, resize is the caller's job) happens inside and is differentiable,
    so attacks work in pixel space. Downstream heads (zero-shot logits, LM) always consume
    ``vision_features``; an inference-time defense (FS-PSM smoothing) plugs in there through
    ``feature_transform`` without touching the adapter.

    Attributes:
        family: ``clip``, ``llava`` or ``blip2``.
        capabilities: subset of ``{"features","classify","logprob","generate"}``.
        image_size: square input resolution the model expects.
        name: registry name of the concrete model that was loaded (recorded in tables).
        revision: short hash of the weights (recorded in tables).
    """

    family: ClassVar[str] = ""
    capabilities: frozenset[str] = frozenset()

    def __init__(self, image_size: int, name: str = "", revision: str = "") -> None:
        super().__init__()
        self.image_size = image_size
        self.name = name
        self.revision = revision
        self.feature_transform: FeatureTransform | None = None

    # ---- vision side -------------------------------------------------------------------
    @abstractmethod
    def raw_vision_features(self, pixels: Tensor) -> Tensor:
        """Undefended features the downstream head consumes: ``[B,D]`` (CLIP) or ``[B,N,D]``."""

    def vision_features(self, pixels: Tensor) -> Tensor:
        """Features after the inference-time defense, if any; same shape as the raw ones."""
        if self.feature_transform is not None:
            return self.feature_transform(self.raw_vision_features, pixels)
        return self.raw_vision_features(pixels)

    def encode_image(self, pixels: Tensor) -> Tensor:
        """Flattened vision features ``[B,D']`` (what embedding attacks and FS certify)."""
        return self.vision_features(pixels).flatten(1)

    # ---- family-specific heads (override where the capability exists) ---------------------
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """L2-normalised text embeddings ``[T,D]`` (CLIP only)."""
        raise self._missing("encode_text")

    def classify(self, pixels: Tensor, class_prompts: Sequence[str]) -> Tensor:
        """Zero-shot logits ``[B,C]`` (logit_scale * cosine) against one prompt per class."""
        raise self._missing("classify")

    def lm_loss(self, pixels: Tensor, prompts: Sequence[str], targets: Sequence[str]) -> Tensor:
        """Teacher-forced NLL of ``targets`` given image and prompt, summed over tokens, ``[B]``."""
        raise self._missing("lm_loss")

    def lm_logits(self, pixels: Tensor, prompts: Sequence[str], targets: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Teacher-forced token logits ``[B,L,V]`` and next-token labels ``[B,L]`` (-100 where not
        scored; position t's label is the token at t): what token-level training losses need."""
        raise self._missing("lm_logits")

    def logprob(self, pixels: Tensor, prompts: Sequence[str], targets: Sequence[str]) -> Tensor:
        """Log-probability of each target string, ``[B]`` (= -lm_loss)."""
        return -self.lm_loss(pixels, prompts, targets)

    def generate(self, pixels: Tensor, prompts: Sequence[str], max_new_tokens: int = 16) -> list[str]:
        """Greedy, deterministic, batched decoding; returns the new text only."""
        raise self._missing("generate")

    # ---- helpers ---------------------------------------------------------------------------
    def language_model(self) -> nn.Module | None:
        """The language model the heads run (None for CLIP): what ``compile_for_attacks`` compiles."""
        return None

    def compile_for_attacks(self, mode: str | None = None) -> "VLM":
        """``torch.compile`` the tensor-heavy parts attacks call every step: the vision path
        (``raw_vision_features``, a pure function of pixels) and the language model, if any.
        Tokenisation and prompt handling stay eager. Numbers match eager up to float reordering."""
        self.raw_vision_features = torch.compile(self.raw_vision_features, mode=mode)  # type: ignore[method-assign]
        lm = self.language_model()
        if lm is not None:
            lm.compile(mode=mode)
        self.compiled = True
        return self

    def freeze(self) -> "VLM":
        """Eval mode and no parameter gradients: attacks only need input gradients."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _missing(self, what: str) -> CapabilityError:
        return CapabilityError(
            f"model {self.name or type(self).__name__!r} ({self.family}) has no {what}; "
            f"pick a task its family supports (see `mmrobust list tasks`)"
        )


def normalize_pixels(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Differentiable per-channel ``(x - mean) / std`` on ``[B,C,H,W]``."""
    m = torch.tensor(mean, device=pixels.device, dtype=pixels.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=pixels.device, dtype=pixels.dtype).view(1, -1, 1, 1)
    return (pixels - m) / s
