"""Evaluate one batch of a cell: clean verdict, attack on the clean-correct samples, validity guard,
adversarial verdict (fp32; k fresh draws for randomized defenses), one ``samples.parquet`` row each.
An out-of-memory batch is split in halves and retried with identical results."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F

from robustbench_mm.attacks.guard import check_valid, perturbation_norms
from robustbench_mm.attacks.verdict import VERDICT_KEY, Verdict
from robustbench_mm.attacks.verdict_rule import DEFAULT_RULE, BreakLedger, member_broken, published_correct
from robustbench_mm.runner import gallery_capture
from robustbench_mm.runner.resolve import ResolvedCell
from robustbench_mm.runner.retrieval_eval import check_word_budget
from robustbench_mm.runner.scores import add_sample_scores
from robustbench_mm.tasks.base import as_list
from robustbench_mm.types import Batch

log = logging.getLogger(__name__)

# Test hook (reliability tests inject a real torch.OutOfMemoryError through it): called with
# the model and the batch about to be attacked.
BEFORE_ATTACK_HOOK: Callable[[Any, Batch], None] | None = None


def evaluate_halving_on_oom(cell: ResolvedCell, model: Any, objective: Any, batch: Batch) -> list[dict[str, Any]]:
    """Evaluate a batch; on out-of-memory split it in halves and retry (per-example seeds keep
    the results identical). A single example that does not fit fails the cell with the reason."""
    try:
        return add_sample_scores(cell.task, batch, evaluate_batch(cell, model, objective, batch))
    except torch.OutOfMemoryError:
        if len(batch) == 1:
            raise
        if batch.pixels.is_cuda:
            torch.cuda.empty_cache()
        half = len(batch) // 2
        log.warning("out of memory at batch %d; retrying with %d", len(batch), half)
        first = torch.zeros(len(batch), dtype=torch.bool)
        first[:half] = True
        return (evaluate_halving_on_oom(cell, model, objective, batch.select(first.to(batch.pixels.device)))
                + evaluate_halving_on_oom(cell, model, objective, batch.select(~first.to(batch.pixels.device))))


def evaluate_batch(cell: ResolvedCell, model: Any, objective: Any, batch: Batch) -> list[dict[str, Any]]:
    task, attack = cell.task, cell.attack
    draws = getattr(cell, "verdict_draws", 1)  # clean and adversarial: the same verdict (the defense's, if it has one)
    verdict = cell.defense.verdict(task, draws) or Verdict(task, draws)
    ledger = BreakLedger(attack.name)  # every break a check decides during the attack (the sticky rule's input)
    clean_pred = verdict.predict(model, batch)
    clean_ok = task.correct(batch, clean_pred).cpu()
    x_adv = batch.pixels.clone()
    by_member = [""] * len(batch)
    member_draws = [0] * len(batch)  # wrong draws of the check that first broke the sample
    verdict_model = model
    adv_prompts = batch.prompts
    grad_norm = torch.full((len(batch),), float("nan"))
    if bool(clean_ok.any()):
        sub = batch.select(clean_ok.to(batch.pixels.device))
        sub.seeds = cell.spec.seed * 1_000_003 + sub.index  # per-example attack randomness
        sub.extra[VERDICT_KEY] = dataclasses.replace(verdict, ledger=ledger)  # attacks stop on a sample only when it breaks it
        if BEFORE_ATTACK_HOOK is not None:
            BEFORE_ATTACK_HOOK(model, sub)
        grad_norm[clean_ok] = input_gradient_norms(model, sub, objective)
        gen = torch.Generator().manual_seed(cell.spec.seed)
        result = attack.perturb(model, sub, attack.prepare(model, sub, objective), generator=gen)
        check_valid(sub.pixels, result.pixels, attack.norm, attack.eps)
        if not torch.isfinite(result.loss).all():
            raise FloatingPointError("attack objective became NaN/inf; the cell's numbers would be meaningless")
        x_adv[clean_ok.nonzero().flatten().to(x_adv.device)] = result.pixels.to(x_adv.dtype)
        names, wrong = ledger.rows(sub.index)
        for r, name, w in zip(clean_ok.nonzero().flatten().tolist(), names, wrong):
            by_member[r], member_draws[r] = name, w
        # text-side attacks (text-embed) are judged with the adversarial class embeddings
        verdict_model = attack.verdict_model(model) if hasattr(attack, "verdict_model") else model
        adv_prompts = substituted_prompts(batch, clean_ok, sub, result.texts, getattr(attack, "word_budget", None))
    adv_batch = dataclasses.replace(batch.with_pixels(x_adv), prompts=adv_prompts)
    adv_pred, draw_fraction = verdict.judge(verdict_model, adv_batch)  # fp32 verdict (k fresh draws if randomized)
    if verdict_model is not model and isinstance(adv_pred, torch.Tensor):  # unattacked rows keep clean preds
        adv_pred = torch.where(clean_ok, adv_pred.cpu(), torch.as_tensor(clean_pred).cpu())
    # robust = right before and after the attack: a sample the clean model gets wrong is never robust,
    # even if a randomized defense happens to get its (unattacked) re-prediction right
    final_ok = task.correct(batch, adv_pred).cpu() & clean_ok
    rule = getattr(cell, "verdict_rule", DEFAULT_RULE)
    held = member_broken(by_member, len(batch)) & clean_ok  # a member's verdict broke it: sticky keeps it broken
    adv_ok = published_correct(rule, clean_ok, final_ok, held)
    if getattr(attack, "targeted", False):  # targeted ASR: the output is the attacker's target
        success = clean_ok & task.targeted_success(batch, adv_pred).cpu()
    else:
        success = task.success(batch, clean_ok, adv_pred).cpu() | (clean_ok & ~adv_ok)
    linf, l2 = perturbation_norms(batch.pixels, x_adv)
    with torch.no_grad():
        cos = F.cosine_similarity(model.encode_image(batch.pixels).float(), model.encode_image(x_adv).float(), dim=-1)
    texts = not isinstance(clean_pred, torch.Tensor)
    gallery_capture.capture(cell, batch, x_adv, clean_pred, adv_pred, success, clean_ok)
    out = []
    for i in range(len(batch)):
        out.append({
            "cell_id": cell.cell_id, "index": int(batch.index[i]), "label": int(batch.labels[i]),
            "clean_pred": -1 if texts else int(clean_pred[i]), "adv_pred": -1 if texts else int(adv_pred[i]),
            "clean_text": as_list(clean_pred)[i] if texts else "", "adv_text": as_list(adv_pred)[i] if texts else "",
            "clean_correct": bool(clean_ok[i]), "adv_correct": bool(adv_ok[i]), "success": bool(success[i]),
            "linf": float(linf[i]), "l2": float(l2[i]), "feature_cosine": float(cos[i]),
            "certified_bound": float("nan"), "grad_norm": float(grad_norm[i]),
            "certified": False,
            "broken_by": (by_member[i] or attack.name) if bool(success[i]) else "",
            "broken_draws": member_draws[i] if by_member[i] and bool(success[i]) else 0,
            "correct_draw_fraction": float(draw_fraction[i]), "final_adv_correct": bool(final_ok[i]),
        })
    return out


def input_gradient_norms(model: Any, batch: Batch, objective: Any) -> torch.Tensor:
    """l2 norm of the task objective's input gradient per example, at the clean input ``[B]``
    (a zero or non-finite gradient means the attack is blind: gradient masking or a bug)."""
    if batch.seeds is None or not callable(objective):
        return torch.full((len(batch),), float("nan"))
    x = batch.pixels.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = objective(model, x, batch).float()
        grad = torch.autograd.grad(loss.sum(), x, allow_unused=True)[0]
    if grad is None:
        return torch.zeros(len(batch))
    return grad.detach().flatten(1).norm(dim=1).cpu()


def substituted_prompts(batch: Batch, attacked: torch.Tensor, sub: Batch, texts: list[list[str]] | None,
                        budget: int | None) -> list[str] | None:
    """The prompts the adversarial verdict generates from: a prompt attack's (one text per attacked row,
    within its word budget) in place of the attacked rows' own; the batch's prompts otherwise."""
    if texts is None or batch.prompts is None:
        return batch.prompts
    assert sub.prompts is not None
    check_word_budget([[p] for p in sub.prompts], texts, budget)
    prompts = list(batch.prompts)
    for row, row_texts in zip(attacked.nonzero().flatten().tolist(), texts):
        prompts[row] = row_texts[0]
    return prompts

