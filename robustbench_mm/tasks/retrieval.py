"""Image-text retrieval with CLIP-style models: a gallery of images and captions, Recall@1/5/10 both
ways, and the attack success rate on R@1 (clean right at R@1, wrong after the attack).

The gallery is the evaluated sample (``--n`` images and all their captions). Every image and every
caption is attacked, then clean images are ranked against clean captions and adversarial images
against adversarial captions, as the Co-Attack and SGA evaluations do; one ``samples.parquet`` row
per image holds its image->text (TR) hits and the text->image (IR) hits of its captions.

Sources: ``bundled:fmnist`` (held-out Fashion-MNIST test images, captions generated from the class
name and caption templates, a caption matching every image of its class), or a ``datasets`` source
(``hf:<id>``, ``disk:<save_to_disk dir>``) with an image column and a column of caption lists
(Flickr30k / COCO Karpathy test: 5 per image, each caption matching its own image).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from robustbench_mm.attacks.retrieval_objective import CAPTIONS_KEY, PROTECTED_KEY, CaptionSetObjective
from robustbench_mm.errors import ConfigError
from robustbench_mm.tasks.base import TASKS, Task, to_long
from robustbench_mm.tasks.data import images_to_pixels, load_checked
from robustbench_mm.tasks.retrieval_metrics import RECALL_KS, hits_at, positive_pairs, retrieval_ranks
from robustbench_mm.types import Batch, Objective

BUNDLED = "bundled:fmnist"
GROUP_KEY = "groups"  # per row the ground-truth group its captions belong to


@TASKS.register("retrieval")
class ImageTextRetrieval(Task):
    """Image->text and text->image retrieval (see module docstring).

    Args:
        dataset: ``bundled:fmnist``, ``hf:<id>`` or ``disk:<dir>``.
        split: split for hub / DatasetDict sources.
        image_column, caption_column: an image and a list of captions per row (non-bundled sources).
        captions_per_image: captions kept per image (the first ones; bundled: distinct templates drawn per image).
        templates: bundled caption templates with ``{c}``; classes: the bundled class names.
        caption_seed: seed of the bundled per-image template draw.
    """

    requires = frozenset({"text_tower"})
    families = frozenset({"clip"})
    metric = "recall@1"
    ranks_whole_gallery = True  # a cell is ranked as one gallery: it cannot be split into shards

    def __init__(self, *, dataset: str = BUNDLED, split: str = "test", image_column: str = "image",
                 caption_column: str = "caption", captions_per_image: int = 5,
                 templates: tuple[str, ...] = (), classes: tuple[str, ...] = (), caption_seed: int = 0) -> None:
        if captions_per_image <= 0:
            raise ConfigError(f"captions_per_image={captions_per_image} must be a positive integer")
        if dataset == BUNDLED:
            if not classes or any("{c}" not in t for t in templates):
                raise ConfigError("bundled retrieval needs params.classes and templates that each hold {c}")
            if len(set(templates)) < captions_per_image:
                raise ConfigError(f"captions_per_image={captions_per_image} needs at least as many distinct "
                                  f"templates ({len(set(templates))} given)")
        self.dataset, self.split = dataset, split
        self.image_column, self.caption_column = image_column, caption_column
        self.captions_per_image, self.caption_seed = captions_per_image, caption_seed
        self.templates, self.classes = tuple(templates), tuple(classes)
        self._ds: Any = None

    @property
    def ds(self) -> Any:
        if self._ds is None:
            columns = [self.image_column, "label"] if self.dataset == BUNDLED else [self.image_column,
                                                                                  self.caption_column]
            self._ds = load_checked(self.dataset, self.split, columns, self.name)
        return self._ds

    def __len__(self) -> int:
        return len(self.ds)

    def captions_for(self, index: int, row: dict[str, Any]) -> list[str]:
        """The captions of dataset row ``index``: bundled ones are drawn from the templates per image
        (fixed by ``caption_seed`` and the index), others are the dataset's own, first ones first."""
        if self.dataset == BUNDLED:
            order = np.random.RandomState(self.caption_seed * 1_000_003 + index).permutation(len(self.templates))
            name = self.classes[int(row["label"])]
            return [self.templates[int(t)].format(c=name) for t in order[: self.captions_per_image]]
        captions = row[self.caption_column]
        if isinstance(captions, str) or not captions:
            raise ConfigError(f"task {self.name}: column {self.caption_column!r} must hold a list of captions per "
                              f"image (row {index} has {captions!r})")
        return [str(c) for c in list(captions)[: self.captions_per_image]]

    def load_examples(self, indices: list[int], image_size: int) -> Batch:
        rows = self.ds.select(indices)
        pixels = images_to_pixels(self.dataset, rows[self.image_column], image_size)
        records = [rows[i] for i in range(len(indices))]
        captions = [self.captions_for(idx, r) for idx, r in zip(indices, records)]
        labels = to_long([self.ground_truth_group(idx, r) for idx, r in zip(indices, records)])
        extra: dict[str, object] = {CAPTIONS_KEY: captions, GROUP_KEY: labels.clone()}
        if self.dataset == BUNDLED:  # a caption's class name is its ground truth: text attacks keep it
            extra[PROTECTED_KEY] = frozenset(w for c in self.classes for w in c.lower().split())
        return Batch(pixels=pixels, labels=labels, index=to_long(indices), extra=extra)

    def check_model(self, model: Any) -> None:
        """Raise ``ConfigError`` when ``model`` cannot read this task's captions (called once the model
        is loaded, before any batch); every CLIP model can read the class-name captions."""

    def ground_truth_group(self, index: int, row: dict[str, Any]) -> int:
        """The group whose captions match this image: the class on the bundled set (many-to-many),
        else the image's own row."""
        return int(row["label"]) if self.dataset == BUNDLED else index

    def objective(self, loss: str | None = None) -> Objective:
        if loss not in (None, "ce"):
            raise ConfigError(f"loss {loss!r}: retrieval attacks use the caption-set cosine loss only")
        return CaptionSetObjective()

    def predict(self, model: Any, batch: Batch) -> Tensor:
        raise ConfigError(f"task {self.name} ranks a whole gallery; run it through `mmrobust run` "
                          f"(runner.retrieval_eval), not per batch")

    def correct(self, batch: Batch, prediction: Tensor | list[str]) -> Tensor:
        raise ConfigError(f"task {self.name} is judged on the whole gallery (runner.retrieval_eval)")

    def prompt_for(self, family: str) -> str:
        return " | ".join(self.templates)

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "captions_per_image": self.captions_per_image}

    # ---- gallery scoring (called once per cell, after every batch was attacked) -------------
    def gallery_rows(self, image_groups: Tensor, text_owner: Tensor, clean: tuple[Tensor, Tensor],
                     adversarial: list[tuple[Tensor, Tensor]], members: list[str] | None = None) -> pd.DataFrame:
        """One row per gallery image: TR hits at each K, clean and adversarial, and the IR hits of its
        captions (counts over them). ``clean`` and each entry of ``adversarial`` are ``(image [I,D],
        text [T,D])`` unit features, one entry per attack member, each ranked as its own gallery; a
        query's adversarial rank is its worst (highest) over the members. ``text_owner`` ``[T]`` is the
        image row each caption belongs to; ``broken_by`` names the first member that broke a TR query."""
        positive = positive_pairs(image_groups, image_groups[text_owner])
        tr_clean, ir_clean = retrieval_ranks(*clean, positive)
        per_member = [retrieval_ranks(img, txt, positive) for img, txt in adversarial]
        tr_adv = torch.stack([tr for tr, _ in per_member]).amax(dim=0)
        ir_adv = torch.stack([ir for _, ir in per_member]).amax(dim=0)
        out: dict[str, Any] = {"n_captions": torch.bincount(text_owner, minlength=len(image_groups)).numpy()}
        for side, tr_rank, ir_rank in (("clean", tr_clean, ir_clean), ("adv", tr_adv, ir_adv)):
            for k, hit in hits_at(tr_rank, RECALL_KS).items():
                out[f"tr_r{k}_{side}"] = hit.numpy()
            for k, hit in hits_at(ir_rank, RECALL_KS).items():
                out[f"ir_r{k}_{side}"] = torch.zeros(len(image_groups)).index_add(0, text_owner, hit.float()).numpy()
        # IR successes per image: its captions right at R@1 clean and wrong after the attack
        ir_broken = ((ir_clean < 1) & (ir_adv >= 1)).float()
        out["ir_success"] = torch.zeros(len(image_groups)).index_add(0, text_owner, ir_broken).numpy()
        rows = pd.DataFrame(out)
        # the per-sample prediction columns of other tasks: here the TR rank of the image's best
        # matching caption (0 = retrieved first), clean and under the worst member
        rows["clean_pred"], rows["adv_pred"] = tr_clean.numpy(), tr_adv.numpy()
        rows["clean_correct"] = rows["tr_r1_clean"].astype(bool)
        rows["adv_correct"] = rows["tr_r1_adv"].astype(bool)
        rows["success"] = rows["clean_correct"] & ~rows["adv_correct"]
        names = members or [""] * len(adversarial)
        broke = torch.stack([tr >= 1 for tr, _ in per_member])  # [M, I]
        first = broke.float().argmax(dim=0).tolist()
        rows["broken_by"] = [names[m] if ok else "" for m, ok in zip(first, rows["success"])]
        return rows


def retrieval_summary(samples: pd.DataFrame) -> dict[str, float]:
    """Recall@K both ways (clean and adversarial) and the R@1 attack success rates, from the rows of
    ``ImageTextRetrieval.gallery_rows``; IR recalls are over captions, TR over images."""
    nan = float("nan")
    if samples.empty or "tr_r1_clean" not in samples:
        return {}
    n_caps = float(samples["n_captions"].sum())
    out: dict[str, float] = {}
    for side in ("clean", "adv"):
        for k in RECALL_KS:
            out[f"tr_r{k}_{side}"] = float(samples[f"tr_r{k}_{side}"].mean())
            out[f"ir_r{k}_{side}"] = float(samples[f"ir_r{k}_{side}"].sum()) / n_caps if n_caps else nan
    tr_clean = float(samples["tr_r1_clean"].sum())
    ir_clean = float(samples["ir_r1_clean"].sum())
    out["tr_asr"] = float(samples["success"].sum()) / tr_clean if tr_clean else nan
    out["ir_asr"] = float(samples["ir_success"].sum()) / ir_clean if ir_clean else nan
    out["ir_asr_n"] = ir_clean
    out["ir_asr_successes"] = float(samples["ir_success"].sum())
    return out


def is_retrieval(task: Any) -> bool:
    return isinstance(task, ImageTextRetrieval)
