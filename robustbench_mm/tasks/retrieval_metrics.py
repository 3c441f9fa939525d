"""Recall@K for image-text retrieval from embeddings and a positive-pair matrix.

A query counts as retrieved at K when at least one of its positives is among the K gallery items
with the highest cosine similarity: image->text (TR) queries are images and their positives the
captions that describe them; text->image (IR) queries are captions. The ground truth is a matrix,
so a caption may describe several images (many-to-many) as well as one.

The rank used here is "how many gallery items score strictly higher than the best positive";
a hit at K is rank < K. ``tests/tasks/test_retrieval_metrics.py`` checks it against the top-K
one-hot definition of clip_benchmark.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

RECALL_KS: tuple[int, ...] = (1, 5, 10)


def best_positive_rank(scores: Tensor, positive: Tensor) -> Tensor:
    """Per query (row), the number of gallery items scoring strictly above its best positive, long ``[Q]``.

    ``scores`` ``[Q,G]`` similarities, ``positive`` bool ``[Q,G]``; a query without any positive gets
    rank ``G`` (never retrieved)."""
    if scores.shape != positive.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and positive {tuple(positive.shape)} differ in shape")
    best = scores.masked_fill(~positive, -float("inf")).amax(dim=1, keepdim=True)
    rank = (scores > best).sum(dim=1)
    return torch.where(positive.any(dim=1), rank, torch.full_like(rank, scores.shape[1]))


def hits_at(rank: Tensor, ks: Sequence[int] = RECALL_KS) -> dict[int, Tensor]:
    """Bool ``[Q]`` per K: the query's best positive is in the top K."""
    return {k: rank < k for k in ks}


def positive_pairs(image_groups: Tensor, text_groups: Tensor) -> Tensor:
    """Bool ``[I,T]``: image i and caption t match when they share a ground-truth group (the image's
    own row for Flickr30k/COCO, the class on the bundled set)."""
    return image_groups.view(-1, 1) == text_groups.view(1, -1)


def retrieval_ranks(image_features: Tensor, text_features: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """``(image->text rank [I], text->image rank [T])`` of unit features under the ``[I,T]`` ground truth."""
    scores = image_features.float() @ text_features.float().T
    return best_positive_rank(scores, positive), best_positive_rank(scores.T, positive.T)
