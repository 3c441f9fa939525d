"""Run one cell: load, defend, attack every batch, verdict in fp32, write rows atomically."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import pandas as pd
import torch
import torch.nn.functional as F

from robustbench_mm.attacks.guard import check_valid, perturbation_norms
from robustbench_mm.attacks.verdict import VERDICT_KEY, Verdict
from robustbench_mm.errors import MMRobustError
from robustbench_mm.models.device import pick_device
from robustbench_mm.models.zoo import LoadOptions, load_model
from robustbench_mm.runner import gallery_capture, provenance
from robustbench_mm.runner.resolve import CellSpec, ResolvedCell, resolve, spec_dict
from robustbench_mm.runner.resume import Checkpoint, CellProgress
from robustbench_mm.runner.stats import wilson_interval
from robustbench_mm.runner.scores import add_sample_scores, score_summary
from robustbench_mm.runner.store import SCHEMA_VERSION, ResultStore
from robustbench_mm.tasks.base import as_list
from robustbench_mm.types import Batch

log = logging.getLogger(__name__)
Progress = Callable[[int], None]  # called with the number of samples just finished


@dataclass
class CellSummary:
    cell_id: str
    status: str  # ok | failed | skipped
    row: dict[str, Any] = field(default_factory=dict)


def run_cell(spec: CellSpec | ResolvedCell, *, store: ResultStore, force: bool = False,
             progress: Progress | None = None) -> CellSummary:
    """Run a cell unless the store has it (``force`` recomputes). Bad input raises before any write;
    a failure during evaluation (NaN, OOM at batch 1, invalid adversarial) is recorded as ``failed``."""
    cell = spec if isinstance(spec, ResolvedCell) else resolve(spec)
    device = pick_device(cell.spec.device)
    if store.finished(cell.cell_id) and not force:
        log.info("cell %s already in %s; skipped", cell.cell_id, store.root)
        return CellSummary(cell.cell_id, "skipped", store.cell_row(cell.cell_id) or {})
    start = time.time()
    model = load_model(cell.model_name, LoadOptions(device=str(device), dtype=cell.spec.load_dtype,
                                                    allow_pickle=cell.spec.allow_pickle,
                                                    trust_remote_code=cell.spec.trust_remote_code,
                                                    revision=cell.entry.revision or cell.spec.revision,
                                                    device_map=cell.spec.device_map))
    if cell.spec.compile:
        model.compile_for_attacks()
    checkpoint = Checkpoint.for_cell(store, cell)
    if checkpoint is not None and force:
        checkpoint.drop()  # --force recomputes from the first batch
    done = (checkpoint.load() if checkpoint is not None else None) or CellProgress()
    start -= done.elapsed_s  # the wall time counts the interrupted runs too
    try:
        tables = evaluate(cell, model, device, progress, checkpoint, done)
        status, error = "ok", ""
    except MMRobustError:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded as a failed cell, never as a number
        log.exception("cell %s failed", cell.cell_id)
        tables, status, error = _empty_tables(), "failed", f"{type(exc).__name__}: {exc}"
    row = summary_row(cell, model, device, tables, status, error, time.time() - start)
    tables["asr"] = pd.DataFrame([row])
    gallery = gallery_capture.take(cell, status == "ok")
    if gallery is not None:
        tables[gallery_capture.TABLE] = gallery  # written as cells/<id>/gallery/*, same atomic commit
    store.commit_cell(cell.cell_id, tables, _meta(cell, row))
    if checkpoint is not None and status == "ok":
        checkpoint.drop()  # a failed cell keeps its finished batches for the retry
    return CellSummary(cell.cell_id, status, row)


def evaluate(cell: ResolvedCell, model: Any, device: torch.device, progress: Progress | None,
             checkpoint: Checkpoint | None = None, done: CellProgress | None = None) -> dict[str, Any]:
    """Per-sample rows of the cell (``samples`` and ``certified`` tables). With a ``checkpoint`` the
    finished batches are saved after each batch; ``done`` (what an earlier run saved there) is
    continued after its last batch (``runner.resume``)."""
    started = time.time()
    defended = cell.defense.apply(model)
    task, attack = cell.task, cell.attack
    gallery_capture.reset(cell.cell_id)
    if getattr(attack, "targeted", False):
        objective = task.targeted_objective(getattr(attack, "loss", None))
    else:
        objective = task.objective(getattr(attack, "loss", None))
    done = done or CellProgress()
    if done.batches:
        cell.defense.set_rng_state(defended, done.rng["defense"])
        torch.set_rng_state(done.rng["torch"])
        gallery_capture.restore(cell.cell_id, done.gallery)
    rows, cert_frames = list(done.rows), list(done.cert)
    spec = cell.spec
    batches = task.examples(n=spec.n, seed=spec.seed, batch_size=spec.batch_size, image_size=model.image_size)
    for k, batch in enumerate(batches):
        if k < done.batches:  # finished in an earlier run
            if progress:
                progress(len(batch))
            continue
        batch = batch.to(device)
        batch_rows = _evaluate_halving_on_oom(cell, defended, objective, batch)
        if cell.certify:
            cert = _certify_batch(cell, defended, batch)
            cert_frames.append(cert)
            _attach_bound(batch_rows, cert, cell)
            _attach_certified(batch_rows, cert, cell)
        rows.extend(batch_rows)
        if checkpoint is not None:
            checkpoint.save(CellProgress(k + 1, rows, cert_frames,
                                         {"defense": cell.defense.rng_state(defended), "torch": torch.get_rng_state()},
                                         gallery_capture.pending(cell.cell_id),
                                         done.elapsed_s + time.time() - started))
        if progress:
            progress(len(batch))
    certified = aggregate_certified(cell, pd.concat(cert_frames, ignore_index=True)) if cert_frames else pd.DataFrame()
    return {"samples": pd.DataFrame(rows), "certified": certified}


def _certify_batch(cell: ResolvedCell, model: Any, batch: Batch) -> pd.DataFrame:
    radii = sorted(set(cell.defense.certificate_radii()) | ({float(cell.attack.eps)} if cell.attack.norm == "l2"
                                                            and cell.attack.eps else set()))
    if hasattr(cell.task, "class_prompts"):  # zero-shot: prediction-wise certificates (docs/methods.md)
        batch = replace(batch, extra={**batch.extra, "class_prompts": tuple(cell.task.class_prompts())})
    with torch.no_grad():
        frame = cell.defense.certify(model, batch, radii)
    if frame is None:
        raise RuntimeError(f"defense {cell.defense.name} declared a certificate but returned none")
    return frame


def _attach_bound(rows: list[dict[str, Any]], cert: pd.DataFrame, cell: ResolvedCell) -> None:
    """Per-sample certified bound at the attack's l2 radius (first quantity the defense reports)."""
    if cell.attack.norm != "l2" or cert.empty:
        return
    quantity = cert["quantity"].iloc[0]
    at = cert[(cert["quantity"] == quantity) & ((cert["radius"] - float(cell.attack.eps)).abs() < 1e-9)]
    bound = dict(zip(at["index"].astype(int), at["value"].astype(float)))
    for r in rows:
        r["certified_bound"] = bound.get(r["index"], float("nan"))


def _attach_certified(rows: list[dict[str, Any]], cert: pd.DataFrame, cell: ResolvedCell) -> None:
    """``certified``: the sample's prediction has a *sound* certificate at the attack's l2 radius
    (``certified_accuracy`` = 1 with ``bound_kind`` sound); estimates never count."""
    if cell.attack.norm != "l2" or cert.empty:
        return
    kind = cert["bound_kind"] if "bound_kind" in cert else pd.Series("estimate", index=cert.index)
    at = cert[(cert["quantity"] == "certified_accuracy") & (kind == "sound")
              & ((cert["radius"] - float(cell.attack.eps)).abs() < 1e-9) & (cert["value"] == 1.0)]
    ok = set(at["index"].astype(int))
    for r in rows:
        r["certified"] = r["index"] in ok


def aggregate_certified(cell: ResolvedCell, per_sample: pd.DataFrame) -> pd.DataFrame:
    """``certified.parquet`` rows: per radius and quantity, mean/q05/median over samples.

    Abstentions count as the quantity's worst value (-1 for cosine bounds, 0 for accuracies), so
    a mean never hides them; ``abstain_rate`` reports them separately. ``bound_kind`` is the
    defense's label (``sound`` or ``estimate``); a defense that does not say is an ``estimate``.
    """
    out = []
    for (radius, quantity), g in per_sample.groupby(["radius", "quantity"], sort=True):
        worst = -1.0 if str(quantity).startswith("fcsb") else 0.0
        v = g["value"].astype(float).fillna(worst)
        out.append({
            "cell_id": cell.cell_id, "model": cell.entry.name, "defense": cell.defense.name, "task": cell.task.name,
            "radius": float(radius), "quantity": quantity, "mean": float(v.mean()), "q05": float(v.quantile(0.05)),
            "median": float(v.median()), "n": int(len(g)), "abstain_rate": float(g["abstain"].mean()),
            "mc_samples": int(g["mc_samples"].iloc[0]), "alpha": float(g["alpha"].iloc[0]),
            "schema_version": SCHEMA_VERSION,
            "bound_kind": str(g["bound_kind"].iloc[0]) if "bound_kind" in g else "estimate",
        })
    return pd.DataFrame(out)


# Test hook (reliability tests inject a real torch.OutOfMemoryError through it): called with
# the model and the batch about to be attacked.
BEFORE_ATTACK_HOOK: Callable[[Any, Batch], None] | None = None


def _evaluate_halving_on_oom(cell: ResolvedCell, model: Any, objective: Any, batch: Batch) -> list[dict[str, Any]]:
    """Evaluate a batch; on out-of-memory split it in halves and retry (per-example seeds keep
    the results identical). A single example that does not fit fails the cell with the reason."""
    try:
        return add_sample_scores(cell.task, batch, _evaluate_batch(cell, model, objective, batch))
    except torch.OutOfMemoryError:
        if len(batch) == 1:
            raise
        if batch.pixels.is_cuda:
            torch.cuda.empty_cache()
        half = len(batch) // 2
        log.warning("out of memory at batch %d; retrying with %d", len(batch), half)
        first = torch.zeros(len(batch), dtype=torch.bool)
        first[:half] = True
        return (_evaluate_halving_on_oom(cell, model, objective, batch.select(first.to(batch.pixels.device)))
                + _evaluate_halving_on_oom(cell, model, objective, batch.select(~first.to(batch.pixels.device))))


def _evaluate_batch(cell: ResolvedCell, model: Any, objective: Any, batch: Batch) -> list[dict[str, Any]]:
    task, attack = cell.task, cell.attack
    verdict = Verdict(task, getattr(cell, "verdict_draws", 1))  # clean and adversarial: the same verdict
    clean_pred = verdict.predict(model, batch)
    clean_ok = task.correct(batch, clean_pred).cpu()
    x_adv = batch.pixels.clone()
    by_member = [""] * len(batch)
    verdict_model = model
    grad_norm = torch.full((len(batch),), float("nan"))
    if bool(clean_ok.any()):
        sub = batch.select(clean_ok.to(batch.pixels.device))
        sub.seeds = cell.spec.seed * 1_000_003 + sub.index  # per-example attack randomness
        sub.extra[VERDICT_KEY] = verdict  # attacks stop on a sample only when this verdict breaks it
        if BEFORE_ATTACK_HOOK is not None:
            BEFORE_ATTACK_HOOK(model, sub)
        grad_norm[clean_ok] = _input_gradient_norms(model, sub, objective)
        gen = torch.Generator().manual_seed(cell.spec.seed)
        result = attack.perturb(model, sub, attack.prepare(model, sub, objective), generator=gen)
        check_valid(sub.pixels, result.pixels, attack.norm, attack.eps)
        if not torch.isfinite(result.loss).all():
            raise FloatingPointError("attack objective became NaN/inf; the cell's numbers would be meaningless")
        x_adv[clean_ok.nonzero().flatten().to(x_adv.device)] = result.pixels.to(x_adv.dtype)
        if result.broken_by is not None:
            for r, name in zip(clean_ok.nonzero().flatten().tolist(), result.broken_by):
                by_member[r] = name
        # text-side attacks (text-embed) are judged with the adversarial class embeddings
        verdict_model = attack.verdict_model(model) if hasattr(attack, "verdict_model") else model
    adv_batch = batch.with_pixels(x_adv)
    adv_pred = verdict.predict(verdict_model, adv_batch)  # fp32 verdict (k fresh draws if randomized)
    if verdict_model is not model and isinstance(adv_pred, torch.Tensor):  # unattacked rows keep clean preds
        adv_pred = torch.where(clean_ok, adv_pred.cpu(), torch.as_tensor(clean_pred).cpu())
    if getattr(attack, "targeted", False):  # targeted ASR: the output is the attacker's target
        success = clean_ok & task.targeted_success(batch, adv_pred).cpu()
    else:
        success = task.success(batch, clean_ok, adv_pred).cpu()
    # robust = right before and after the attack: a sample the clean model gets wrong is never robust,
    # even if a randomized defense happens to get its (unattacked) re-prediction right
    adv_ok = task.correct(batch, adv_pred).cpu() & clean_ok
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
        })
    return out


def _input_gradient_norms(model: Any, batch: Batch, objective: Any) -> torch.Tensor:
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


def cell_sanity(cell: ResolvedCell, samples: pd.DataFrame, ok: bool) -> dict[str, Any]:
    """Checks every cell runs, stored as data (design 'Trust'); a failed check sets ``unreliable``.

    validity_guard: every adversarial batch was inside the threat model (else the cell failed).
    zero_gradient: no attacked example had a zero or non-finite input gradient.
    eot_for_randomized: a randomized defense was attacked with EOT.
    """
    checks: dict[str, str] = {"validity_guard": "pass" if ok else "not run"}
    if ok and cell.attack.norm is not None and "grad_norm" in samples and len(samples):
        g = samples["grad_norm"].dropna()
        blind = int(((g == 0) | ~g.apply(lambda v: v == v and abs(v) != float("inf"))).sum())
        checks["zero_gradient"] = "pass" if blind == 0 else f"fail ({blind} of {len(g)} examples)"
    if cell.defense.randomized and cell.attack.norm is not None:
        checks["eot_for_randomized"] = "pass" if getattr(cell.attack, "uses_eot", False) or \
            getattr(cell.attack, "eot", 1) > 1 else "fail"
    unreliable = any(v.startswith("fail") for v in checks.values())
    return {"unreliable": unreliable, "sanity": json.dumps(checks, sort_keys=True)}


def summary_row(cell: ResolvedCell, model: Any, device: torch.device, tables: dict[str, Any], status: str,
                error: str, wall: float) -> dict[str, Any]:
    """The ``asr.parquet`` row: design 'Tables' columns, numbers as numbers."""
    samples = tables["samples"]
    n = len(samples)
    clean_ok = int(samples["clean_correct"].sum()) if n else 0
    succ = int(samples["success"].sum()) if n else 0
    lo, hi = wilson_interval(succ, clean_ok)
    threat = cell.attack.describe()
    ok = status == "ok"
    nan = float("nan")
    return {
        "cell_id": cell.cell_id, "model": cell.entry.name, "attack": cell.attack.name, "defense": cell.defense.name,
        "task": cell.task.name, "norm": threat["norm"], "eps": threat["eps"], "steps": threat["steps"],
        "seed": cell.spec.seed, "n": n if ok else (cell.spec.n or 0),
        "clean_accuracy": clean_ok / n if n else nan,
        "robust_accuracy": float(samples["adv_correct"].mean()) if n else nan,
        "asr": succ / clean_ok if clean_ok else nan, "asr_low": lo if ok else nan, "asr_high": hi if ok else nan,
        "max_linf": float(samples["linf"].max()) if n else nan, "max_l2": float(samples["l2"].max()) if n else nan,
        "queries": int(getattr(cell.attack, "steps", 0) or 0) * int(getattr(cell.attack, "restarts", 1) or 1),
        "wall_s": wall, "samples_per_s": n / wall if wall > 0 else nan,
        "device": provenance.device_name(device), "dtype": cell.spec.dtype,
        "precision_policy": f"search={getattr(cell.attack, 'search_dtype', 'fp32')},verdict=fp32"
                            + (",compiled" if cell.spec.compile else ""),
        "status": status, "error": error, **cell_sanity(cell, samples, ok),
        "created_at": provenance.now(), "git_commit": provenance.git_commit(),
        "versions": provenance.versions_json(), "model_revision": getattr(model, "revision", ""),
        "schema_version": SCHEMA_VERSION, "batch_size": cell.spec.batch_size,
        **score_summary(cell.task, cell.entry.family, samples),
        "load_dtype": cell.spec.load_dtype, "device_map": cell.spec.device_map or "",
        "feature_cosine_attacked": attacked_feature_cosine(samples),
        "protocol": getattr(cell, "protocol", ""), "verdict_draws": int(getattr(cell, "verdict_draws", 1)),
    }


def attacked_feature_cosine(samples: pd.DataFrame) -> float:
    """Mean clean-vs-adversarial feature cosine over the attacked samples only (the clean-correct
    ones; the others are never perturbed and would add cosines of 1)."""
    if samples.empty or "feature_cosine" not in samples or "clean_correct" not in samples:
        return float("nan")
    v = samples.loc[samples["clean_correct"].astype(bool), "feature_cosine"].astype(float)
    return float(v.mean()) if len(v) else float("nan")


def _empty_tables() -> dict[str, Any]:
    return {"samples": pd.DataFrame(columns=["cell_id", "clean_correct", "adv_correct", "success", "linf", "l2"]),
            "certified": pd.DataFrame()}


def _meta(cell: ResolvedCell, row: dict[str, Any]) -> dict[str, Any]:
    return {"cell_id": cell.cell_id, "config": cell.config(), "spec": spec_dict(cell.spec),
            "overrides": dict(cell.attack_preset.overrides), "git_commit": row["git_commit"],
            "versions": provenance.versions(), "device": row["device"], "created_at": row["created_at"],
            "wall_s": row["wall_s"], "status": row["status"]}
