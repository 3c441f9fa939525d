"""Where the protocol's time goes: per member, the passes it runs, the samples it sees, its wall-time
share, and the floor its step budget needs at the model's raw batched throughput.

    OMP_NUM_THREADS=1 python scripts/profile_protocol.py                       # committed CPU profile
    python scripts/profile_protocol.py --entries clip-tiny:none:fmnist-zeroshot --n 16 --device cuda
    python scripts/profile_protocol.py --entries clip-tiny:none:fmnist-zeroshot:standard-v2,clip-tiny:none:fmnist-zeroshot:standard-v3

Each ``model:defense:task`` entry runs ``mmrobust benchmark``'s first threat-model cell (the same
resolver and runner, certificates off) on a model whose vision encoder (and language model, if any)
counts the images it forwards and back-propagates. Phases: ``clean`` (the clean verdict), ``grad-norm``
(the zero-gradient sanity check), each member (its search), ``<member>:checks`` (the verdicts that
decide which samples leave the cascade), ``final`` (the published verdict). Each phase reports
encoder forward / backward images, LM forward / backward rows, wall seconds and share; each member
also the samples alive when it starts (summed over batches) and ``floor_s``: the forward+backward
passes its budget needs (alive x steps x restarts x targets x EOT, Square: alive x queries forwards)
at the throughput measured on the same model, objective and batch size; and ``floor_at_batch_s``:
the same passes at the throughput of the mean batch the member's forwards actually had
(``mean_batch``), which separates a member's own overhead (``wall_over_floor_at_batch``) from the
cost of running on few samples. Wall shares are only as quiet as the machine; the counts do not
depend on it.

Writes ``results/bench/profile-<date>-<device>.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch

from robustbench_mm.attacks import verdict as verdict_mod
from robustbench_mm.runner import batch_eval, cell as cell_mod, provenance

ENTRIES = "clip-tiny:none:fmnist-zeroshot,llava-tiny:none:fmnist-vqa,clip-tiny:fs:fmnist-zeroshot"


class Counter:
    """Passes and wall time per phase; a phase stack so nested checks are charged to their member."""

    def __init__(self) -> None:
        self.stats: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.stack = ["setup"]
        self.t = time.perf_counter()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.stats[self.stack[-1]]["wall_s"] += now - self.t
        self.t = now

    def push(self, phase: str) -> None:
        self._tick()
        self.stack.append(phase)

    def pop(self) -> None:
        self._tick()
        self.stack.pop()

    def switch(self, phase: str) -> None:  # a member replaces the previous member at the same depth
        self._tick()
        self.stack[-1] = phase

    def add(self, key: str, k: float) -> None:
        self.stats[self.stack[-1]][key] += k

    # progress.Reporter
    def advance(self, k: int) -> None:
        self.switch("between")

    def member(self, name: str, alive: int | None = None) -> None:
        self.switch(name)
        self.add("alive", alive or 0)
        self.add("runs", 1)


def instrument(model: Any, counter: Counter) -> Any:
    """Count encoder images (forward, and backward through a gradient hook) and LM rows."""
    raw = model.raw_vision_features

    def counted(pixels: torch.Tensor) -> torch.Tensor:
        counter.add("encoder_fwd", len(pixels))
        counter.add("encoder_calls", 1)
        out = raw(pixels)
        if out.requires_grad:
            n = len(pixels)
            out.register_hook(lambda g: counter.add("encoder_bwd", n))
        return out

    model.raw_vision_features = counted
    lm = model.language_model()
    if lm is not None:
        def fwd(_m: Any, args: Any, kwargs: Any, out: Any) -> None:
            emb = kwargs.get("inputs_embeds", args[0] if args else None)
            counter.add("lm_fwd", len(emb) if emb is not None else 0)
        lm.register_forward_hook(fwd, with_kwargs=True)
        lm.register_full_backward_pre_hook(lambda _m, g: counter.add("lm_bwd", 1))
    return model


def phased(fn: Callable[..., Any], counter: Counter, name: Callable[[Counter], str | None]) -> Callable[..., Any]:
    def wrapper(*a: Any, **k: Any) -> Any:
        phase = name(counter)
        if phase is None:
            return fn(*a, **k)
        counter.push(phase)
        try:
            return fn(*a, **k)
        finally:
            counter.pop()
    return wrapper


def budget(member: Any) -> tuple[float, float]:
    """(forward+backward passes, forward-only passes) per alive sample that ``member``'s budget needs."""
    steps = float(getattr(member, "steps", 0) or 0)
    restarts = float(getattr(member, "restarts", 1) or 1)
    targets = float(getattr(member, "n_targets", 1) or 1)
    eot = float(getattr(member, "eot", 1) or 1)
    cls = getattr(member, "cls_name", "") or type(member).__name__
    if cls == "Square" and hasattr(member, "p_init"):  # ours: forward-only queries
        return 0.0, steps * restarts
    if cls == "Square":
        return 0.0, steps * float(member.options.get("n_restarts", 1))
    if cls == "FAB":
        targets = 9.0 if member.options.get("multi_targeted") else 1.0
        restarts = float(member.options.get("n_restarts", 1))
    return steps * restarts * targets * eot, 0.0


def throughput(model: Any, objective: Any, batch: Any, counter: Counter, repeats: int = 3) -> tuple[float, float]:
    """Encoder images per second for forward+backward and for forward only, on this batch."""
    obj = objective.bind(batch) if hasattr(objective, "bind") else objective
    rates = []
    for grad in (True, False):
        counter.push("throughput")
        before = counter.stats["throughput"]["encoder_fwd"]
        t0 = time.perf_counter()
        for _ in range(repeats):
            x = batch.pixels.clone().requires_grad_(grad)
            with torch.set_grad_enabled(grad):
                loss = obj(model, x, batch).float().sum()
                if grad:
                    torch.autograd.grad(loss, x)
        wall = time.perf_counter() - t0
        images = counter.stats["throughput"]["encoder_fwd"] - before
        counter.pop()
        rates.append(images / wall)
    return rates[0], rates[1]


def profile_entry(model: str, defense: str, task: str, n: int, device: str, batch_size: int,
                  version: str = "auto") -> dict[str, Any]:
    from robustbench_mm import api, benchmarking, progress

    protocol, version, specs = benchmarking.plan(model, defense=defense, task=task, n=n, device=device,
                                                 version=version, batch_size=batch_size, certify=False)
    cell = api.resolve_cell(specs[0])
    counter = Counter()
    loaded: dict[str, Any] = {}
    orig_load = cell_mod.load_model

    def load(*a: Any, **k: Any) -> Any:
        loaded["model"] = instrument(orig_load(*a, **k), counter)
        return loaded["model"]

    member_names = {getattr(m, "name", "") for m in getattr(cell.attack, "members", [])}
    saved = (cell_mod.load_model, verdict_mod.Verdict.predict, verdict_mod.Verdict.judge,
             verdict_mod.Verdict.broken_counts, batch_eval.input_gradient_norms)
    cell_mod.load_model = load
    verdict_mod.Verdict.predict = phased(saved[1], counter, lambda c: "clean")
    verdict_mod.Verdict.judge = phased(saved[2], counter, lambda c: None if c.stack[-1] == "clean" else "final")
    verdict_mod.Verdict.broken_counts = phased(saved[3], counter, lambda c: f"{c.stack[-1]}:checks"
                                               if c.stack[-1] in member_names else None)
    batch_eval.input_gradient_norms = phased(saved[4], counter, lambda c: "grad-norm")
    try:
        with tempfile.TemporaryDirectory() as out, progress.reporting(counter):
            t0 = time.perf_counter()
            summary = api.run_cell(cell, out=out, force=True)
            wall = time.perf_counter() - t0
            counter.switch("after")
    finally:
        (cell_mod.load_model, verdict_mod.Verdict.predict, verdict_mod.Verdict.judge,
         verdict_mod.Verdict.broken_counts, batch_eval.input_gradient_norms) = saved
    m = loaded["model"]
    defended = cell.defense.apply(m) if cell.defense.name not in ("", "none") else m
    batch = cell.task.load_examples(list(range(min(batch_size, len(cell.task)))), m.image_size)
    batch = batch.with_pixels(batch.pixels.to(m.device))
    fb_rate, f_rate = throughput(defended, cell.task.objective(), batch, counter)
    draws = float(getattr(cell.defense, "draws_per_forward", 1) or 1)
    at_batch: dict[int, tuple[float, float]] = {}  # throughput at the batch sizes the members ran

    def rates_at(size: int) -> tuple[float, float]:
        if size not in at_batch:
            at_batch[size] = throughput(defended, cell.task.objective(), batch.take(torch.arange(size) % len(batch)),
                                        counter)
        return at_batch[size]

    phases = {}
    measured = sum(s["wall_s"] for k, s in counter.stats.items() if k not in ("setup", "throughput", "after"))
    for name, s in counter.stats.items():
        if name in ("setup", "throughput", "after"):
            continue
        row = {k: round(v, 3) for k, v in s.items()}
        row["share"] = round(s["wall_s"] / measured, 4) if measured else 0.0
        member = next((a for a in getattr(cell.attack, "members", []) if getattr(a, "name", "") == name), None)
        if member is not None:
            fb, fo = budget(member)
            row["floor_s"] = round(s["alive"] * draws * (fb / fb_rate + fo / f_rate), 2)
            row["wall_over_floor"] = round(s["wall_s"] / row["floor_s"], 2) if row["floor_s"] else None
            size = max(1, round(s["encoder_fwd"] / s["encoder_calls"])) if s.get("encoder_calls") else 0
            if size:  # the same passes at the throughput of the batch size the member actually ran
                fb_b, f_b = rates_at(size)
                row["mean_batch"] = size
                row["floor_at_batch_s"] = round(s["alive"] * draws * (fb / fb_b + fo / f_b), 2)
                row["wall_over_floor_at_batch"] = (round(s["wall_s"] / row["floor_at_batch_s"], 2)
                                                   if row["floor_at_batch_s"] else None)
        phases[name] = row
    top = sorted(phases.items(), key=lambda kv: -kv[1]["wall_s"])
    return {"model": model, "defense": defense, "task": task, "protocol": protocol.id, "version": version, "n": n,
            "norm": cell.attack.norm, "eps": cell.attack.eps, "batch_size": batch_size,
            "wall_s": round(wall, 2), "robust_accuracy": float(summary.row["robust_accuracy"]),
            "encoder_images_per_s": {"fwd_bwd": round(fb_rate, 1), "fwd": round(f_rate, 1)},
            "draws_per_forward": draws, "phases": phases, "top_costs": [k for k, _ in top[:5]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", default=ENTRIES, help="model:defense:task[:version], comma-separated")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--name", default="profile", help="file name stem: <name>-<date>-<device>.json")
    args = ap.parse_args()
    commit, started = provenance.git_commit(), provenance.now()
    rows = []
    for entry in filter(None, args.entries.split(",")):
        model, defense, task, *version = entry.split(":")  # an optional 4th field pins a protocol version
        rows.append(profile_entry(model, defense, task, args.n, args.device, args.batch_size, *version))
        r = rows[-1]
        print(f"{r['model']} / {r['defense']} / {r['protocol']}: {r['wall_s']} s, top {r['top_costs']}")
        for name, p in sorted(r["phases"].items(), key=lambda kv: -kv[1]["wall_s"]):
            print(f"  {name:28s} {p['wall_s']:8.1f}s {100 * p['share']:5.1f}%  fwd {p.get('encoder_fwd', 0):>9.0f} "
                  f"bwd {p.get('encoder_bwd', 0):>9.0f}  alive {p.get('alive', 0):>5.0f}  floor {p.get('floor_s', '')}")
    doc = {"device": provenance.device_name(torch.device(args.device)), "created_at": started, "git_commit": commit,
           "versions": provenance.versions(), "threads": torch.get_num_threads(),
           "command": "python scripts/profile_protocol.py " + " ".join(
               f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"), "rows": rows}
    provenance.write_bench_json(args.out, args.name, "cpu" if args.device == "cpu" else "gpu", doc)


if __name__ == "__main__":
    main()
