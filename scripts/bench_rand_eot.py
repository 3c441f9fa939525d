"""Is the rand protocol's EOT budget in draws as strong as AutoAttack's 20 forwards per step?

The rand protocol (tasks/protocols/rand-v1.yaml) averages at least ``eot_draws`` = 20 random draws per
gradient step. Feature-space smoothing averages ``n_inf`` = 16 noise draws in every forward, so the
protocol runs ceil(20/16) = 2 forwards (32 draws) per step; AutoAttack's rand version, read literally,
would run 20 forwards (320 draws). This script attacks the same samples both ways, with the
protocol's first member (APGD-CE, 100 steps) alone, and reports robust accuracy under the protocol's
verdict (majority of 16 fresh draws) and the wall time of each.

    python scripts/bench_rand_eot.py                        # clip-tiny + fs, linf 8/255, n=32, CPU
    python scripts/bench_rand_eot.py --defense fs-psm --n 64 --device cuda

Writes ``results/bench/rand-eot-<date>-<device>.json``: provenance and one row per EOT budget
``{eot_draws, forwards_per_step, n, clean_accuracy, robust_accuracy, robust_low, robust_high, seconds}``
plus ``same_verdict``: the fraction of samples on which both budgets agree.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import yaml

from robustbench_mm.runner import provenance


def protocol_file(folder: Path, eot_draws: int) -> Path:
    """A one-member copy of rand-v1 with the given EOT budget (members and verdict as shipped)."""
    from robustbench_mm.runner.protocol import load_protocol

    shipped = yaml.safe_load(Path(load_protocol("rand-v1").path).read_text())
    doc = {"name": f"rand-eot{eot_draws}", "id": f"bench/rand-eot{eot_draws}", "version": 1,
           "verdict_draws": shipped["verdict_draws"], "eot_draws": eot_draws,
           "classification": {"members": shipped["classification"]["members"][:1],
                              "threat_models": shipped["classification"]["threat_models"]}}
    path = folder / f"rand-eot{eot_draws}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="clip-tiny")
    ap.add_argument("--defense", default="fs")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budgets", default="20,320", help="eot_draws values to compare (comma-separated)")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()

    from robustbench_mm import benchmarking

    rows, adv = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for draws in (int(b) for b in args.budgets.split(",")):
            proto = protocol_file(Path(tmp), draws)
            protocol, label, specs = benchmarking.plan(args.model, defense=args.defense, version=str(proto),
                                                       norm="linf", n=args.n, device=args.device)
            forwards = protocol.eot_for(benchmarking_defense(args.defense))
            start = time.perf_counter()
            res = benchmarking.run(specs, protocol, label, out=Path(tmp) / f"store-{draws}")[0]
            seconds = time.perf_counter() - start
            adv[draws] = res.samples.sort_values("index")["adv_correct"].astype(bool).tolist()
            rows.append({"eot_draws": draws, "forwards_per_step": forwards, "n": res.n,
                         "clean_accuracy": res.clean_accuracy, "robust_accuracy": res.robust_accuracy,
                         "robust_low": res.robust_low, "robust_high": res.robust_high,
                         "seconds": round(seconds, 1)})
            print(f"eot_draws {draws} ({forwards} forwards/step): robust {res.robust_accuracy:.3f} "
                  f"[{res.robust_low:.3f}, {res.robust_high:.3f}] in {seconds:.0f}s", flush=True)
    first, *others = adv.values()
    agree = [sum(a == b for a, b in zip(first, o)) / len(first) for o in others]
    doc = {"device": provenance.device_name(torch.device(args.device)), "created_at": provenance.now(),
           "git_commit": provenance.git_commit(), "versions": provenance.versions(),
           "command": "python scripts/bench_rand_eot.py " + " ".join(
               f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
           "model": args.model, "defense": args.defense, "norm": "linf", "eps": "8/255",
           "member": "rand-apgd-ce (APGD-CE, 100 steps)", "rows": rows, "same_verdict": agree}
    provenance.write_bench_json(args.out, "rand-eot", args.device, doc)


def benchmarking_defense(name: str) -> object:
    """The defense object, for its draws per forward."""
    from robustbench_mm.defenses.base import DEFENSES
    from robustbench_mm.presets import load_preset
    from robustbench_mm.presets import build
    from robustbench_mm.runner.registration import register_all

    register_all()
    preset = load_preset("defense", name, DEFENSES)
    return build(DEFENSES.get(preset.impl), preset)


if __name__ == "__main__":
    main()
