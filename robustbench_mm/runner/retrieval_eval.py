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
from robustbench_mm.attacks.retrieval_worst_case import RetrievalWorstCase
from robustbench_mm.errors import ValidityError
from robustbench_mm.runner.resolve import ResolvedCell
from robustbench_mm.tasks.retrieval import GROUP_KEY
from robustbench_mm.types import Batch

Progress = Callable[[int], None]


def evaluate_retrieval(cell: ResolvedCell, model: Any, device: torch.device,
                       progress: Progress | None) -> dict[str, Any]:
    """The cell's ``samples`` table (``ImageTextRetrieval.gallery_rows`` plus the usual per-image
    columns) after every member attacked every batch of the gallery (one member for a plain attack)."""
    task, attack, spec = cell.task, cell.attack, cell.spec
    task.check_model(model)  # a model that cannot read the captions: one clear error, nothing written
    members = list(attack.members) if isinstance(attack, RetrievalWorstCase) else [attack]
    objective = task.objective(getattr(attack, "loss", None))
    clean: dict[str, list[Any]] = {k: [] for k in ("img", "txt", "owner", "group", "index", "grad")}
    adv = [{k: [] for k in ("img", "txt", "linf", "l2", "changed", "text")} for _ in members]
    offset = 0
    for batch in task.examples(n=spec.n, seed=spec.seed, batch_size=spec.batch_size, image_size=model.image_size):
        batch = batch.to(device)
        batch.seeds = spec.seed * 1_000_003 + batch.index  # per-example attack randomness, batch-layout free
        captions: list[list[str]] = batch.extra[CAPTIONS_KEY]  # type: ignore[assignment]
        clean["grad"].append(input_gradient_norms(model, batch, objective))
        clean["img"].append(unit_image(model, batch.pixels))
        clean["txt"].append(text_features(model, sum(captions, [])).cpu())
        clean["owner"].append(torch.tensor([offset + i for i, caps in enumerate(captions) for _ in caps]))
        clean["group"].append(batch.extra[GROUP_KEY].cpu())  # type: ignore[union-attr]
        clean["index"].append(batch.index.cpu())
        for member, out in zip(members, adv):
            attack_batch(member, model, batch, objective, captions, spec.seed, out)
        offset += len(batch)
        if progress:
            progress(len(batch))
    cat = {k: torch.cat(v) for k, v in clean.items()}
    adv_feats = [(torch.cat(a["img"]), torch.cat(a["txt"])) for a in adv]
    rows = task.gallery_rows(cat["group"], cat["owner"], (cat["img"], cat["txt"]), adv_feats,
                             [m.name for m in members])
    rows.insert(0, "index", cat["index"].numpy())
    rows.insert(0, "cell_id", cell.cell_id)
    rows["label"] = cat["group"].numpy()
    rows["grad_norm"] = cat["grad"].numpy()
    for key in ("linf", "l2"):  # the largest perturbation any member made
        rows[key] = torch.stack([torch.cat(a[key]) for a in adv]).amax(dim=0).numpy()
    rows["words_changed"] = [max(col) for col in zip(*(a["changed"] for a in adv))]
    shown = [members.index(next(m for m in members if m.name == b)) if b else 0 for b in rows["broken_by"]]
    rows["adv_text"] = [adv[m]["text"][i] for i, m in enumerate(shown)]  # the breaking member's captions
    rows["feature_cosine"] = torch.stack([(cat["img"] * img).sum(dim=1) for img, _ in adv_feats]).amin(dim=0).numpy()
    rows["clean_score"] = rows["clean_correct"].astype(float)
    rows["adv_score"] = rows["adv_correct"].astype(float)
    return {"samples": rows, "certified": pd.DataFrame()}


def attack_batch(attack: Any, model: Any, batch: Batch, objective: Any, captions: list[list[str]], seed: int,
                 out: dict[str, list[Any]]) -> None:
    """One member on one batch: validity-checked images and captions, their features appended to ``out``."""
    gen = torch.Generator().manual_seed(seed)
    result = attack.perturb(model, batch, attack.prepare(model, batch, objective), generator=gen)
    check_valid(batch.pixels, result.pixels, attack.norm, attack.eps)
    adv_captions = result.texts if result.texts is not None else captions
    check_word_budget(captions, adv_captions, getattr(attack, "word_budget", None))
    out["img"].append(unit_image(model, result.pixels))
    out["txt"].append(text_features(model, sum(adv_captions, [])).cpu())
    linf, l2 = perturbation_norms(batch.pixels, result.pixels)
    out["linf"].append(linf.cpu())
    out["l2"].append(l2.cpu())
    out["changed"].extend(sum(changed_words(a, b) for a, b in zip(c, ac)) for c, ac in zip(captions, adv_captions))
    out["text"].extend(" | ".join(ac) for ac in adv_captions)


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
