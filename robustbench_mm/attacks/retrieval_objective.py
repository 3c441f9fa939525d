"""Objectives of retrieval attacks: push an image away from its captions, a caption away from its image.

A retrieval batch carries each image's captions in ``batch.extra[CAPTIONS_KEY]`` (a list of
strings per row). The image objective is the set-level loss of SGA (Lu et al., ICCV 2023): the
sum over image scales of ``1 - mean cos(f(x'), t(c))`` over the row's guiding captions; with one
scale and the clean captions it is the plain image-side loss of Sep-Attack. Joint attacks guide
the image by their adversarial captions by setting ``GUIDE_KEY`` on the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_mm.types import Batch

CAPTIONS_KEY = "captions"  # list[list[str]]: every caption of the row's image
GUIDE_KEY = "guide_captions"  # list[list[str]]: captions that guide the image attack (adversarial ones)
# frozenset[str]: words a text attack may neither replace nor introduce, because they decide which
# images a caption matches (the class names of the bundled set); swapping one would change the
# ground truth instead of attacking the model
PROTECTED_KEY = "protected_words"
# frozenset[str]: words a text attack may replace but not introduce (the attribute words of the
# attribute-caption set): putting one in would make the caption state another attribute of the
# image, a false caption rather than an attack; taking one out only makes the caption vaguer
NOT_INTRODUCED_KEY = "not_introduced_words"


def text_features(model: Any, texts: Sequence[str]) -> Tensor:
    """Unit text features ``[T,D]`` without gradients (the model's own tokenizer and text tower)."""
    with torch.no_grad():
        return F.normalize(model._text_embed(list(texts)).float(), dim=-1)


def rescaled(pixels: Tensor, scale: float, size: int) -> Tensor:
    """``pixels`` resized by ``scale`` and back to the model's ``size``: SGA's scale augmentation
    (the model needs its own resolution, so the copy keeps only what the rescaling preserved)."""
    if scale == 1.0:
        return pixels
    small = F.interpolate(pixels, scale_factor=scale, mode="bilinear", align_corners=False)
    return F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def row_captions(batch: Batch) -> list[list[str]]:
    """The captions guiding row i's image attack: the adversarial ones when a joint attack set them."""
    guide = batch.extra.get(GUIDE_KEY)
    captions = guide if guide is not None else batch.extra.get(CAPTIONS_KEY)
    if not isinstance(captions, list) or len(captions) != len(batch):
        raise ValueError("a retrieval objective needs one caption list per row in batch.extra['captions']")
    return captions  # type: ignore[return-value]


@dataclass
class CaptionSetObjective:
    """Per image, ``sum_s (1 - mean_j cos(f(rescale_s(x')), t_j))`` over its guiding captions ``t_j``.

    Higher means the image moved away from its captions; the retrieval task's default objective
    (``scales=(1.0,)``), so ``pgd`` attacks the image side of retrieval unchanged.
    """

    scales: tuple[float, ...] = (1.0,)

    def __call__(self, model: Any, pixels: Tensor, batch: Batch) -> Tensor:
        captions = row_captions(batch)
        flat = [c for caps in captions for c in caps]
        owner = torch.tensor([i for i, caps in enumerate(captions) for _ in caps], device=pixels.device)
        texts = text_features(model, flat).to(pixels.device)
        loss = torch.zeros(len(pixels), device=pixels.device)
        for s in self.scales:
            image = F.normalize(model.encode_image(rescaled(pixels, s, model.image_size)).float(), dim=-1)
            cos = (image[owner] * texts).sum(dim=-1)
            mean_cos = torch.zeros(len(pixels), device=pixels.device).index_add(0, owner, cos)
            mean_cos = mean_cos / torch.bincount(owner, minlength=len(pixels)).clamp_min(1)
            loss = loss + 1 - mean_cos
        return loss


def is_retrieval_objective(objective: Any) -> bool:
    return isinstance(objective, CaptionSetObjective)
