"""The task metric beside ASR: per-sample scores in samples.parquet, their means in asr.parquet.

``clean_score`` / ``adv_score`` are the task's metric (VQA accuracy, CIDEr-D, or 0/1 accuracy) on
the clean and on the adversarial input of each sample; samples the clean model gets wrong are not
attacked, so their adversarial input is the clean image. Under the sticky verdict rule a sample a
member broke scores 0 on a 0/1 metric even when the final fresh draws got it right. The ``asr.parquet`` row also records the
metric's name, the correctness threshold on it, and the prompt template the model family got.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from robustbench_mm.tasks.base import Task
from robustbench_mm.types import Batch


def add_sample_scores(task: Task, batch: Batch, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add ``clean_score`` and ``adv_score`` to a batch's sample rows (in batch order)."""
    if not rows:
        return rows
    texts = batch.prompts is not None  # generative tasks answer in text
    for side in ("clean", "adv"):
        if texts:
            preds: Any = [str(r[f"{side}_text"]) for r in rows]
        else:
            preds = torch.tensor([int(r[f"{side}_pred"]) for r in rows], dtype=torch.long)
        values = task.score(batch, preds).double().cpu().tolist()
        for r, v in zip(rows, values):
            r[f"{side}_score"] = float(v)
    if str(getattr(task, "metric", "accuracy") or "accuracy") == "accuracy":
        for r in rows:  # broken by a member's verdict (sticky rule), right in the final draws: scored broken
            if r.get("final_adv_correct") and not r["adv_correct"]:
                r["adv_score"] = 0.0
    return rows


def score_summary(task: Task, family: str, samples: pd.DataFrame) -> dict[str, Any]:
    """``asr.parquet`` columns: metric, threshold, prompt and the mean clean/adversarial score."""
    nan = float("nan")
    has = len(samples) > 0 and "clean_score" in samples
    threshold = getattr(task, "threshold", None)
    return {
        "metric": str(getattr(task, "metric", "") or "accuracy"),
        "metric_threshold": float(threshold) if threshold is not None and getattr(task, "bundled", True) is False
        else nan,
        "prompt": str(task.prompt_for(family)),
        "clean_score": float(samples["clean_score"].mean()) if has else nan,
        "adv_score": float(samples["adv_score"].mean()) if has else nan,
    }
