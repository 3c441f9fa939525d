"""Evaluate a retrieval cell: attack every image and caption batch by batch, then rank the whole
gallery once (clean against clean, adversarial against adversarial) and write one row per image.

Unlike per-sample tasks, a retrieval row depends on the whole gallery, so the cell keeps no
per-batch checkpoint: an interrupted retrieval cell reruns from its first batch.
"""

from __future__ import annotations

from typing import Any, Callable

import pandas as pd
import torch
import torch.nn.functional as F

from robustbench_mm.attacks.guard import check_valid, perturbation_norms
from robustbench_mm.attacks.retrieval_objective import CAPTIONS_KEY, text_features
from robustbench_mm.errors import ValidityError
from robustbench_mm.runner.resolve import ResolvedCell
from robustbench_mm.tasks.retrieval import GROUP_KEY
from robustbench_mm.types import Batch

Progress = Callable[[int], None]


def evaluate_retrieval(cell: ResolvedCell, model: Any, device: torch.device,
                       progress: Progress | None) -> dict[str, Any]:
    """The cell's ``samples`` table (``ImageTextRetrieval.gallery_rows`` plus the usual per-image
    columns) after attacking every batch of the gallery."""
    task, attack, spec = cell.task, cell.attack, cell.spec
    objective = task.objective(getattr(attack, "loss", None))
    parts: dict[str, list[Any]] = {k: [] for k in ("img", "img_adv", "txt", "txt_adv", "owner", "group", "index",
                                                   "linf", "l2", "grad", "changed", "adv_text")}
    offset = 0
    for batch in task.examples(n=spec.n, seed=spec.seed, batch_size=spec.batch_size, image_size=model.image_size):
        batch = batch.to(device)
        batch.seeds = spec.seed * 1_000_003 + batch.index  # per-example attack randomness, batch-layout free
        parts["grad"].append(input_gradient_norms(model, batch, objective))
        gen = torch.Generator().manual_seed(spec.seed)
        result = attack.perturb(model, batch, attack.prepare(model, batch, objective), generator=gen)
        check_valid(batch.pixels, result.pixels, attack.norm, attack.eps)
        captions: list[list[str]] = batch.extra[CAPTIONS_KEY]  # type: ignore[assignment]
        adv_captions = result.texts if result.texts is not None else captions
        check_word_budget(captions, adv_captions, getattr(attack, "word_budget", None))
        with torch.no_grad():
            parts["img"].append(unit_image(model, batch.pixels))
            parts["img_adv"].append(unit_image(model, result.pixels))
        flat, flat_adv = sum(captions, []), sum(adv_captions, [])
        parts["txt"].append(text_features(model, flat).cpu())
        parts["txt_adv"].append(text_features(model, flat_adv).cpu())
        parts["owner"].append(torch.tensor([offset + i for i, caps in enumerate(captions) for _ in caps]))
        parts["group"].append(batch.extra[GROUP_KEY].cpu())  # type: ignore[union-attr]
        parts["index"].append(batch.index.cpu())
        linf, l2 = perturbation_norms(batch.pixels, result.pixels)
        parts["linf"].append(linf.cpu())
        parts["l2"].append(l2.cpu())
        parts["changed"].extend(sum(changed_words(a, b) for a, b in zip(c, ac)) for c, ac in zip(captions, adv_captions))
        parts["adv_text"].extend(" | ".join(ac) for ac in adv_captions)
        offset += len(batch)
        if progress:
            progress(len(batch))
    cat = {k: torch.cat(v) for k, v in parts.items() if k not in ("changed", "adv_text")}
    rows = task.gallery_rows(cat["group"], cat["owner"], (cat["img"], cat["txt"]), (cat["img_adv"], cat["txt_adv"]))
    rows.insert(0, "index", cat["index"].numpy())
    rows.insert(0, "cell_id", cell.cell_id)
    rows["label"] = cat["group"].numpy()
    rows["linf"], rows["l2"], rows["grad_norm"] = cat["linf"].numpy(), cat["l2"].numpy(), cat["grad"].numpy()
    rows["words_changed"] = parts["changed"]
    rows["adv_text"] = parts["adv_text"]
    rows["feature_cosine"] = (cat["img"] * cat["img_adv"]).sum(dim=1).numpy()
    rows["clean_score"] = rows["clean_correct"].astype(float)
    rows["adv_score"] = rows["adv_correct"].astype(float)
    return {"samples": rows, "certified": pd.DataFrame()}


def unit_image(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    return F.normalize(model.encode_image(pixels).float(), dim=-1).cpu()


def changed_words(before: str, after: str) -> int:
    """Words of ``after`` that differ from ``before`` position by position (substitutions keep the count)."""
    a, b = before.split(), after.split()
    return sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b))


def check_word_budget(captions: list[list[str]], adv: list[list[str]], budget: int | None) -> None:
    """The text side of the threat model: same caption count, at most ``budget`` changed words each."""
    if [len(c) for c in captions] != [len(c) for c in adv]:
        raise ValidityError("a text attack returned a different number of captions than it was given")
    if budget is None:
        return
    for caps, adv_caps in zip(captions, adv):
        for c, a in zip(caps, adv_caps):
            if changed_words(c, a) > budget:
                raise ValidityError(f"text attack changed {changed_words(c, a)} words of {c!r} (budget {budget})")


def input_gradient_norms(model: Any, batch: Batch, objective: Any) -> torch.Tensor:
    """l2 norm of the image objective's input gradient at the clean input, per image (zero = blind attack)."""
    x = batch.pixels.detach().requires_grad_(True)
    with torch.enable_grad():
        grad = torch.autograd.grad(objective(model, x, batch).float().sum(), x, allow_unused=True)[0]
    return torch.zeros(len(batch)) if grad is None else grad.detach().flatten(1).norm(dim=1).cpu()
