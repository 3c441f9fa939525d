"""The standard protocol as one call: ``mmrobust benchmark`` and ``robustbench_mm.benchmark``.

``benchmark(model, ...)`` evaluates a model under a versioned protocol (``runner.protocol``):
a registered name, Hugging Face id or local directory runs as ordinary cells of the result store
(resumable, one cell per threat model); a plain ``nn.Module`` classifier on [0,1] images runs the
protocol's classification members directly on the given ``x``, ``y``. Either way the verdict
procedure (``attacks.verdict``) decides clean correctness and breaks.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch
from torch import Tensor, nn

from robustbench_mm.errors import ConfigError
from robustbench_mm.runner.protocol import (
    LATEST_RETRIEVAL, VERSIONS, Protocol, load_protocol, task_family, threat_models, version_name,
)

log = logging.getLogger(__name__)


@dataclass
class BenchmarkResult:
    """Outcome of one threat model under a protocol."""

    protocol: str  # e.g. mm-aa/standard/v1
    version: str  # standard | rand (what auto chose)
    norm: str
    eps: float
    n: int
    clean_accuracy: float
    robust_accuracy: float
    robust_low: float  # Wilson 95% interval of the robust accuracy
    robust_high: float
    verdict_draws: int
    samples: pd.DataFrame  # one row per example (clean_correct, adv_correct, broken_by, ...)
    adversarial: Tensor | None = None  # adversarial images, on request (nn.Module path)
    row: dict[str, Any] = field(default_factory=dict)  # the asr.parquet row (store path)

    def line(self, label: str) -> str:
        """The summary ``mmrobust benchmark`` prints: one line, plus Recall@K both ways for retrieval."""
        if "tr_r1_clean" in self.row:
            recall = " | ".join(f"{name} R@1/5/10 clean " + "/".join(f"{self.row[f'{d}_r{k}_clean']:.3f}" for k in (1, 5, 10))
                                + " robust " + "/".join(f"{self.row[f'{d}_r{k}_adv']:.3f}" for k in (1, 5, 10))
                                for d, name in (("tr", "image->text"), ("ir", "text->image")))
            return (f"{label} | {self.norm} eps={self.eps:.4f} + {self.row['word_budget']} word | {recall} | "
                    f"n={self.n} | protocol {self.protocol}")
        return (f"{label} | {self.norm} eps={self.eps:.4f} | clean {self.clean_accuracy:.3f} | robust "
                f"{self.robust_accuracy:.3f} [{self.robust_low:.3f}, {self.robust_high:.3f}] | n={self.n} | "
                f"protocol {self.protocol} (version {self.version}, verdict draws {self.verdict_draws})")


def choose_version(version: str, randomized: bool) -> str:
    """``auto`` picks ``rand`` for randomized models, else ``standard``; others pass through."""
    _check_version(version)
    if version == "auto":
        return "rand" if randomized else "standard"
    return version


def _check_version(version: str) -> None:
    """auto, standard, rand, a protocol preset name, or a protocol YAML file."""
    if version not in VERSIONS:
        version_name(version)


def _version_label(protocol: Protocol) -> str:
    return protocol.id.split("/")[1] if protocol.id.count("/") >= 2 else protocol.name


# ---- registered models: cells of the store -------------------------------------------------------------
def plan(model: str, *, defense: str = "none", task: str | None = None, norm: str | None = None,
         eps: float | None = None, version: str = "auto", n: int | None = 64, seed: int = 0,
         **spec_kw: Any) -> tuple[Protocol, str, list[Any]]:
    """Protocol, chosen version and one CellSpec per threat model; every check before weights load."""
    from robustbench_mm.defenses.base import DEFENSES
    from robustbench_mm.models.zoo import entry_for, resolve_model_name
    from robustbench_mm.presets import load_preset
    from robustbench_mm.runner.resolve import DEFAULT_TASKS, CellSpec, resolve
    from robustbench_mm.presets import build
    from robustbench_mm.runner.registration import register_all
    from robustbench_mm.tasks.base import TASKS

    register_all()
    _check_version(version)
    entry = entry_for(resolve_model_name(model))
    d_preset = load_preset("defense", defense, DEFENSES)
    d = build(DEFENSES.get(d_preset.impl), d_preset)
    chosen = choose_version(version, bool(d.randomized))
    t_preset = load_preset("task", task or DEFAULT_TASKS[entry.family], TASKS)
    t = build(TASKS.get(t_preset.impl), t_preset)
    family = task_family(t)
    ref = retrieval_version(chosen, version, t.name) if family == "retrieval" else version_name(chosen)
    protocol = load_protocol(ref)
    specs = [CellSpec(model=model, attack=protocol.attack_name, defense=defense, task=task, norm=tm.norm, eps=tm.eps,
                      n=n, seed=seed, protocol=ref, **spec_kw)
             for tm in threat_models(protocol, family, t.name, norm, eps)]
    for s in specs:
        resolve(s)  # names, compatibility and budgets fail here, before any weights load
    return protocol, _version_label(protocol), specs


def retrieval_version(chosen: str, asked: str, task_name: str) -> str:
    """The retrieval protocol for ``standard``/``auto``; a named protocol file as given; no ``rand`` one yet."""
    if chosen == "standard":
        return LATEST_RETRIEVAL
    if chosen == "rand":
        raise ConfigError(f"task {task_name} has no randomized-defense retrieval protocol; pass --version standard "
                          f"(or a protocol file) {'instead of auto ' if asked == 'auto' else ''}for this defense")
    return version_name(chosen)


def run(specs: list[Any], protocol: Protocol, version: str, *, out: str | Path, force: bool = False,
        on_result: Callable[[BenchmarkResult], None] | None = None,
        progress: Callable[[int], None] | None = None) -> list[BenchmarkResult]:
    """Run the planned cells into the store at ``out`` and read back one result per threat model."""
    from robustbench_mm import api
    from robustbench_mm.runner.store import ResultStore

    results = []
    for spec in specs:
        summary = api.run_cell(spec, out=out, force=force, progress=progress)
        if summary.status == "failed":
            raise RuntimeError(f"cell {summary.cell_id} failed: {summary.row.get('error', '')}")
        samples = ResultStore(out).read("samples")
        samples = samples[samples["cell_id"] == summary.cell_id].reset_index(drop=True)
        res = _from_row(summary.row, samples, protocol, version)
        results.append(res)
        if on_result:
            on_result(res)
    return results


def _from_row(row: dict[str, Any], samples: pd.DataFrame, protocol: Protocol, version: str) -> BenchmarkResult:
    from robustbench_mm.runner.stats import wilson_interval

    n = int(row["n"])
    robust = int(samples["adv_correct"].sum()) if len(samples) else 0
    lo, hi = wilson_interval(robust, n)
    return BenchmarkResult(protocol.id, version, str(row["norm"]), float(row["eps"]), n,
                           float(row["clean_accuracy"]), float(row["robust_accuracy"]), lo, hi,
                           int(row.get("verdict_draws", 1)), samples, None, dict(row))


# ---- plain nn.Module classifiers --------------------------------------------------------------------------
class ModuleTask:
    """``task.predict``/``task.correct`` of a plain classifier (what the verdict procedure needs)."""

    name = "module"

    def predict(self, model: Any, batch: Any) -> Tensor:
        return model(batch.pixels).argmax(dim=1).cpu()  # type: ignore[no-any-return]

    def correct(self, batch: Any, prediction: Tensor) -> Tensor:
        return prediction.cpu() == batch.labels.cpu()


def benchmark_module(model: nn.Module, x: Tensor, y: Tensor, *, norm: str = "linf", eps: float = 8 / 255,
                     version: str = "auto", seed: int = 0, verdict_draws: int | None = None,
                     batch_size: int = 256, return_adversarial: bool = False) -> BenchmarkResult:
    """The protocol's classification members on a classifier ``model`` mapping [0,1] images to logits."""
    from robustbench_mm.attacks.base import check_threat
    from robustbench_mm.attacks.ensemble import Ensemble
    from robustbench_mm.attacks.guard import check_valid
    from robustbench_mm.attacks.objectives import ModuleObjective
    from robustbench_mm.attacks.verdict import DEFAULT_DRAWS, VERDICT_KEY, Verdict, check_draws, is_randomized
    from robustbench_mm.attacks.verdict_rule import BreakLedger, member_broken, published_correct
    from robustbench_mm.runner.stats import wilson_interval
    from robustbench_mm.types import Batch

    check_threat(norm, eps)
    _check_version(version)
    if x.dim() != 4 or len(x) != len(y) or not len(x):
        raise ConfigError(f"x must be [N,C,H,W] images in [0,1] and y [N] labels of the same N (got {tuple(x.shape)}, "
                          f"{tuple(y.shape)})")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ConfigError("x must hold images in [0,1] (normalise inside the model, not before)")
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    x, y = x.detach().to(device).float(), y.detach().to(device).long()
    randomized = is_randomized(model, x[: min(len(x), 8)])
    chosen = choose_version(version, randomized)
    protocol = load_protocol(version_name(chosen))
    plan_ = protocol.plan("classification", "module")
    if norm not in {t.norm for t in plan_.threat_models}:
        raise ConfigError(f"protocol {protocol.id} has no {norm} budget; use norm='linf' or norm='l2'")
    draws = check_draws(verdict_draws or protocol.verdict_draws or DEFAULT_DRAWS) if randomized else 1
    verdict = Verdict(ModuleTask(), draws)
    eot = protocol.eot_draws if randomized else None  # a plain module draws once per forward
    attack = Ensemble(attacks=plan_.members, norm=norm, eps=eps, seed=seed, eot=eot)  # type: ignore[arg-type]
    attack.name = protocol.attack_name
    objective = ModuleObjective(loss="ce")
    adv = x.clone()
    rows: list[dict[str, Any]] = []
    for start in range(0, len(x), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(x)))
        batch = Batch(pixels=x[idx.to(device)], labels=y[idx.to(device)], index=idx)
        clean_ok = verdict.correct(model, batch)
        by, wrong = [""] * len(batch), [0] * len(batch)
        xa = batch.pixels.clone()
        if bool(clean_ok.any()):
            sub = batch.select(clean_ok.to(device))
            sub.seeds = seed * 1_000_003 + sub.index
            ledger = BreakLedger(attack.name)  # every break a check decides (the sticky rule's input)
            sub.extra[VERDICT_KEY] = dataclasses.replace(verdict, ledger=ledger)
            gen = torch.Generator().manual_seed(seed)
            res = attack.perturb(model, sub, objective, generator=gen)
            check_valid(sub.pixels, res.pixels, norm, eps)  # type: ignore[arg-type]
            pos = clean_ok.nonzero().flatten()
            xa[pos.to(device)] = res.pixels
            for r, name, w in zip(pos.tolist(), *ledger.rows(sub.index)):
                by[r], wrong[r] = name, w
        _, fraction = verdict.judge(model, batch.with_pixels(xa))
        final_ok = (fraction > 0.5).cpu() & clean_ok  # correct in more than half of the final draws
        adv_ok = published_correct(protocol.verdict_rule, clean_ok, final_ok, member_broken(by, len(batch)) & clean_ok)
        adv[idx.to(device)] = xa
        for i in range(len(batch)):
            broken = bool(clean_ok[i]) and not bool(adv_ok[i])
            rows.append({"index": int(idx[i]), "label": int(batch.labels[i]), "clean_correct": bool(clean_ok[i]),
                         "adv_correct": bool(adv_ok[i]), "success": broken,
                         "broken_by": (by[i] or attack.name) if broken else "",
                         "broken_draws": wrong[i] if broken and by[i] else 0,
                         "correct_draw_fraction": float(fraction[i]), "final_adv_correct": bool(final_ok[i]),
                         "linf": float((xa[i] - batch.pixels[i]).abs().max())})
    samples = pd.DataFrame(rows)
    n = len(samples)
    robust = int(samples["adv_correct"].sum())
    lo, hi = wilson_interval(robust, n)
    return BenchmarkResult(protocol.id, _version_label(protocol), norm, float(eps), n,
                           float(samples["clean_correct"].mean()), robust / n, lo, hi, draws, samples,
                           adv.cpu() if return_adversarial else None)


# ---- the public entry point ---------------------------------------------------------------------------------
def benchmark(model: Any, x: Tensor | None = None, y: Tensor | None = None, *, norm: str = "linf",
              eps: float = 8 / 255, version: str = "auto", task: str | None = None, defense: str = "none",
              n: int | None = None, seed: int = 0, out: str | Path | None = None,
              return_adversarial: bool = False, device: str | None = None) -> BenchmarkResult:
    """Robust accuracy of ``model`` under the standard protocol at one threat model.

    ``model``: a registered name, Hugging Face id or local directory (evaluated on ``task`` as a
    cell of the store at ``out``, a temporary one by default), or an ``nn.Module`` classifier on
    [0,1] images (then ``x``, ``y`` are required; ``task``/``defense`` do not apply).
    ``version``: ``auto`` (``rand`` for randomized models, else ``standard``), ``standard``, ``rand``.
    """
    if isinstance(model, nn.Module):
        if x is None or y is None:
            raise ConfigError("benchmark(nn.Module, ...) needs the evaluation data: pass x (images in [0,1]) and y")
        if task is not None or defense != "none":
            raise ConfigError("task and defense apply to registered models; an nn.Module is evaluated as given")
        if n is not None:
            x, y = x[:n], y[:n]
        return benchmark_module(model, x, y, norm=norm, eps=eps, version=version, seed=seed,
                                return_adversarial=return_adversarial)
    if not isinstance(model, str):
        raise ConfigError(f"model must be a registered name, Hugging Face id, local directory or nn.Module, "
                          f"not {type(model).__name__}")
    if x is not None or y is not None:
        raise ConfigError("x and y apply to nn.Module models; a named model is evaluated on its task (task=...)")
    if return_adversarial:
        raise ConfigError("return_adversarial applies to nn.Module models; named models record per-sample rows")
    protocol, chosen, specs = plan(model, defense=defense, task=task, norm=norm, eps=eps, version=version,
                                   n=n if n is not None else 64, seed=seed, device=device)
    if out is None:
        with tempfile.TemporaryDirectory(prefix="mmrobust-benchmark-") as tmp:
            return run(specs, protocol, chosen, out=tmp)[0]
    return run(specs, protocol, chosen, out=out)[0]


__all__ = ["BenchmarkResult", "benchmark", "plan", "run"]
