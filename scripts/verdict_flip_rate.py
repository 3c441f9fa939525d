"""How often does a randomized defense's verdict flip, and what does the sticky rule change?

For each randomized entry, runs the rand protocol's cell the way the runner does (``evaluate_batch``,
same seeds, certificates off) and keeps the adversarial images. From that one search it reports:

* robust accuracy under the v1 rule (``final``: only the final fresh verdict counts) and under the
  sticky rule (rand-v2: a sample any check broke stays broken), with how many samples differ;
* the flip rate: on the attacked (clean-correct) samples, the share whose verdict differs between two
  independent verdicts of the same adversarial image, for each draw count in ``--draws`` (for a
  PREDICT verdict, two independent noise streams of ``predict_n`` draws).

    python scripts/verdict_flip_rate.py                                  # clip-tiny fs, linf, n=32
    python scripts/verdict_flip_rate.py --entries clip-tiny:fs:linf,clip-tiny:fs-psm:l2 --n 64

Writes ``results/bench/verdict-flip-<date>-<device>.json`` (command, commit, one row per entry).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import torch

from robustbench_mm.runner import provenance


def flip_rate(verdict: Any, model: Any, adv: Any, rows: torch.Tensor, repeats: int = 2) -> float:
    """Share of ``rows`` whose majority verdict differs between two independent verdicts."""
    if not bool(rows.any()):
        return float("nan")
    sub = adv.select(rows)
    first = second = None
    for r in range(repeats):
        v = dataclasses.replace(verdict, seed=verdict.seed + 1000 * (r + 1)) if hasattr(verdict, "seed") else verdict
        ok = v.correct(model, sub)
        first, second = (ok, second) if first is None else (first, ok)
    assert first is not None and second is not None
    return float((first != second).float().mean())


def run_entry(model_name: str, defense: str, norm: str, n: int, draws: list[int], device: str) -> dict[str, Any]:
    from robustbench_mm import benchmarking
    from robustbench_mm.attacks.verdict import Verdict
    from robustbench_mm.models.zoo import LoadOptions, load_model
    from robustbench_mm.runner.batch_eval import evaluate_batch
    from robustbench_mm.runner.resolve import resolve

    protocol, _, specs = benchmarking.plan(model_name, defense=defense, norm=norm, n=n, version="rand",
                                           device=device, batch_size=n, certify=False)
    cell = resolve(specs[0])
    model = load_model(cell.model_name, LoadOptions(device=device))
    defended = cell.defense.apply(model)
    objective = cell.task.objective(getattr(cell.attack, "loss", None))
    batch = next(cell.task.examples(n=n, seed=cell.spec.seed, batch_size=n, image_size=model.image_size)).to(device)
    captured: dict[str, torch.Tensor] = {}
    perturb = cell.attack.perturb

    def keep(*a: Any, **kw: Any) -> Any:
        res = perturb(*a, **kw)
        captured["pixels"] = res.pixels
        return res

    cell.attack.perturb = keep  # type: ignore[method-assign]
    start = time.perf_counter()
    out = evaluate_batch(cell, defended, objective, batch)
    seconds = time.perf_counter() - start
    clean = torch.tensor([r["clean_correct"] for r in out])
    x_adv = batch.pixels.clone()
    x_adv[clean.nonzero().flatten().to(x_adv.device)] = captured["pixels"].to(x_adv.dtype)
    adv = batch.with_pixels(x_adv)
    base = cell.defense.verdict(cell.task, cell.verdict_draws)
    flips = {}
    if base is not None:  # a PREDICT verdict: its own draw count
        flips[f"predict_n={getattr(base, 'n', '?')}"] = flip_rate(base, defended, adv, clean)
    else:
        for k in draws:
            flips[f"k={k}"] = flip_rate(Verdict(cell.task, k), defended, adv, clean)
    final = sum(r["final_adv_correct"] for r in out) / n
    sticky = sum(r["adv_correct"] for r in out) / n
    row = {"model": model_name, "defense": defense, "norm": norm, "eps": cell.spec.eps, "task": cell.task.name,
           "protocol": protocol.id, "n": n, "clean_accuracy": sum(r["clean_correct"] for r in out) / n,
           "robust_final_rule": final, "robust_sticky_rule": sticky,
           "held_by_sticky": sum(bool(r["final_adv_correct"] and not r["adv_correct"]) for r in out),
           "attacked": int(clean.sum()), "flip_rate": flips, "seconds": round(seconds, 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", default="clip-tiny:fs:linf", help="model:defense:norm, comma-separated")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--draws", default="16,32", help="verdict draw counts whose flip rate is measured")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()
    draws = [int(d) for d in args.draws.split(",")]
    commit, started = provenance.git_commit(), provenance.now()  # the code that runs is the code loaded now
    out = Path(args.out) / f"verdict-flip-{dt.date.today().isoformat()}-{args.device}.json"
    rows = []
    for entry in args.entries.split(","):
        rows.append(run_entry(*entry.split(":"), args.n, draws, args.device))
    doc = {"device": provenance.device_name(torch.device(args.device)), "created_at": started,
           "git_commit": commit, "versions": provenance.versions(),
           "command": "python scripts/verdict_flip_rate.py " + " ".join(
               f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
           "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
