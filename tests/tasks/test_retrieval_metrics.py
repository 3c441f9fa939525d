"""Recall@K of the retrieval task against clip_benchmark's top-K one-hot definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustbench_mm.tasks.retrieval_metrics import best_positive_rank, hits_at, positive_pairs, retrieval_ranks


def clip_benchmark_recall_at_k(scores: torch.Tensor, positive_pairs: torch.Tensor, k: int) -> torch.Tensor:
    """clip_benchmark's ``recall_at_k`` (zeroshot_retrieval.py): the share of a query's positives in
    its top K by ``torch.topk``; a query is a hit when that share is > 0."""
    nb_queries, nb_items = scores.shape
    topk_indices = torch.topk(scores, k, dim=1)[1]
    nb_positive = positive_pairs.sum(dim=1)
    topk_onehot = F.one_hot(topk_indices, num_classes=nb_items)
    nb_true_positive = (topk_onehot * positive_pairs.view(nb_queries, 1, nb_items)).sum(dim=(1, 2))
    return nb_true_positive / nb_positive


def reference_recalls(images: torch.Tensor, texts: torch.Tensor, positive: torch.Tensor, k: int) -> tuple[float, float]:
    """(image->text, text->image) Recall@K as clip_benchmark computes them from text x image scores."""
    scores = texts @ images.T  # [T, I]
    ir = (clip_benchmark_recall_at_k(scores, positive.T, k) > 0).float().mean().item()
    tr = (clip_benchmark_recall_at_k(scores.T, positive, k) > 0).float().mean().item()
    return tr, ir


@pytest.mark.parametrize("many_to_many", [False, True])
def test_recall_matches_clip_benchmark_on_random_embeddings(many_to_many: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    n_img, per = 40, 5
    images = F.normalize(torch.randn(n_img, 16, generator=gen), dim=-1)
    owner = torch.arange(n_img).repeat_interleave(per)
    # captions near their image, so recall is neither 0 nor 1
    texts = F.normalize(images[owner] + 0.9 * torch.randn(n_img * per, 16, generator=gen), dim=-1)
    groups = torch.arange(n_img) % 7 if many_to_many else torch.arange(n_img)
    positive = positive_pairs(groups, groups[owner])
    tr_rank, ir_rank = retrieval_ranks(images, texts, positive)
    seen = set()
    for k in (1, 5, 10):
        tr_ref, ir_ref = reference_recalls(images, texts, positive, k)
        tr, ir = hits_at(tr_rank, (k,))[k].float().mean().item(), hits_at(ir_rank, (k,))[k].float().mean().item()
        assert tr == pytest.approx(tr_ref, abs=1e-9) and ir == pytest.approx(ir_ref, abs=1e-9)
        seen.update((round(tr, 6), round(ir, 6)))
    assert len(seen) > 2  # the recalls differ across K: the comparison is not between constants


def test_recall_matches_clip_benchmark_on_clip_tiny_gallery() -> None:
    """The same equality on real embeddings: clip-tiny on the bundled retrieval gallery (duplicate
    caption strings across images, a class-level many-to-many ground truth)."""
    from robustbench_mm.attacks.retrieval_objective import CAPTIONS_KEY, text_features
    from robustbench_mm.models.zoo import LoadOptions, load_model
    from robustbench_mm.presets import build, load_preset
    from robustbench_mm.runner.registration import register_all
    from robustbench_mm.tasks.base import TASKS
    from robustbench_mm.tasks.retrieval import GROUP_KEY

    register_all()
    task = build(TASKS.get("retrieval"), load_preset("task", "fmnist-retrieval", TASKS))
    model = load_model("clip-tiny", LoadOptions(device="cpu"))
    batch = task.load_examples(task.sample_indices(n=60, seed=1), model.image_size)
    with torch.no_grad():
        images = F.normalize(model.encode_image(batch.pixels).float(), dim=-1)
    captions = batch.extra[CAPTIONS_KEY]
    texts = text_features(model, [c for caps in captions for c in caps])
    owner = torch.tensor([i for i, caps in enumerate(captions) for _ in caps])
    groups = batch.extra[GROUP_KEY]
    positive = positive_pairs(groups, groups[owner])
    tr_rank, ir_rank = retrieval_ranks(images, texts, positive)
    for k in (1, 5, 10):
        tr_ref, ir_ref = reference_recalls(images, texts, positive, k)
        assert hits_at(tr_rank, (k,))[k].float().mean().item() == pytest.approx(tr_ref, abs=1e-9)
        assert hits_at(ir_rank, (k,))[k].float().mean().item() == pytest.approx(ir_ref, abs=1e-9)
    rows = task.gallery_rows(groups, owner, (images, texts), [(images, texts)])
    assert not rows["success"].any()  # the same features on both sides break nothing


def test_rank_counts_strictly_better_items_and_misses_without_positive() -> None:
    scores = torch.tensor([[0.9, 0.5, 0.7], [0.1, 0.2, 0.3]])
    positive = torch.tensor([[False, True, False], [False, False, False]])
    assert best_positive_rank(scores, positive).tolist() == [2, 3]
