"""Train the shipped defended bundled models and measure them (issue 7).

    python scripts/train_defenses.py                          # train + evaluate all four on clip-tiny
    python scripts/train_defenses.py --only mmcoa,tecoa       # a subset
    python scripts/train_defenses.py --skip-train --n 500     # only the evaluation table
    python scripts/train_defenses.py --models llava-tiny,blip2-tiny --only topk-rs   # token-level top-K RS

Weights go to ``robustbench_mm/defenses/weights/<defense>-<model>/`` (the shipped directory that
``Defense.apply`` finds by recipe hash), in the model's own format with ``defense.json`` and
``DEFENSE_CARD.md``. Training needs the Debian ``dataset-fashion-mnist`` train split. The
evaluation runs real cells through ``api.run_cell`` (PGD and APGD, linf, on ``fmnist-zeroshot``;
PGD-l2 with ``--certify`` on ``fmnist-multimodal`` for CRMT) plus the joint image+text attack,
and writes ``results/defenses/<model>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

DEFENSES = ["topk-rs", "tecoa", "mmcoa", "crmt"]  # the default set; fare, fare2, sim-clip, sim-clip2 via --only
log = logging.getLogger("train_defenses")


def train(name: str, model_name: str, resume: bool) -> dict:
    from robustbench_mm.defenses.base import DEFENSES as REG
    from robustbench_mm.models.zoo import load_model
    from robustbench_mm.presets import load_preset
    from robustbench_mm.presets import build
    from robustbench_mm.runner.registration import register_all

    register_all()
    preset = load_preset("defense", name, REG)
    defense = build(REG.get(preset.impl), preset)
    model = load_model(model_name)
    out = defense.shipped_dir(model)
    t0 = time.time()
    record = defense.train(model, out=out, resume=resume)
    log.info("%s: %s in %.1f min -> %s", name, "reused" if record.get("reused") else "trained",
             (time.time() - t0) / 60, out)
    return record


def cell(model: str, attack: str, defense: str, task: str, n: int, out: str, **kw) -> dict:
    from robustbench_mm import api
    from robustbench_mm.runner.resolve import CellSpec

    spec = CellSpec(model=model, attack=attack, defense=defense, task=task, n=n, batch_size=100, device="cpu", **kw)
    s = api.run_cell(spec, out=out)
    r = s.row
    log.info("%-8s %-8s %-18s clean %.3f robust %.3f (%s, %.0fs)", defense, attack, task, r["clean_accuracy"],
             r["robust_accuracy"], s.status, r["wall_s"])
    return {k: r[k] for k in ("clean_accuracy", "robust_accuracy", "asr", "n", "eps", "steps", "norm", "wall_s")}


def joint(model_name: str, defense: str, n: int, eps: float, text_eps: float, steps: int) -> dict:
    from robustbench_mm.defenses.base import DEFENSES as REG
    from robustbench_mm.defenses.mmcoa import joint_eval
    from robustbench_mm.models.zoo import load_model
    from robustbench_mm.presets import load_preset
    from robustbench_mm.presets import build

    model = load_model(model_name)
    if defense != "none":
        preset = load_preset("defense", defense, REG)
        model = build(REG.get(preset.impl), preset).apply(model)
    return joint_eval(model, n=n, eps_img=eps, text_eps=text_eps, steps=steps)


def evaluate(models: list[str], defenses: list[str], args: argparse.Namespace) -> dict:
    eps = 8 / 255  # the training budget of the presets
    out = args.store
    table: dict = {"budgets": {"linf_eps": "8/255", "pgd_steps": args.pgd_steps, "apgd_steps": args.apgd_steps,
                               "text_eps": args.text_eps, "joint_steps": 10, "n": args.n, "n_apgd": args.n_apgd,
                               "n_joint": args.n_joint, "n_vlm": args.n_vlm}, "rows": {}}
    zs = [d for d in ["none", *defenses] if d != "crmt"]
    for model in models:
        if family(model) != "clip":  # LLaVA / BLIP-2: the token-level defenses on the VQA task
            for d in [d for d in zs if d == "none" or family(model) in defense_families(d)]:
                table["rows"][f"{model}/{d}"] = {
                    "pgd": cell(model, "pgd", d, "fmnist-vqa", args.n_vlm, out, eps=eps, steps=args.pgd_steps),
                    "apgd": cell(model, "apgd-ce", d, "fmnist-vqa", args.n_vlm, out, eps=eps, steps=args.apgd_steps)}
            continue
        for d in zs:
            row = {"pgd": cell(model, "pgd", d, "fmnist-zeroshot", args.n, out, eps=eps, steps=args.pgd_steps)}
            row["apgd"] = cell(model, "apgd-ce", d, "fmnist-zeroshot", args.n_apgd, out, eps=eps, steps=args.apgd_steps)
            row["text_embed"] = cell(model, "text-embed", d, "fmnist-zeroshot", args.n, out)
            row["joint"] = joint(model, d, args.n_joint, eps, args.text_eps, 10)
            table["rows"][f"{model}/{d}"] = row
        if "crmt" in defenses:
            for d in ("none", "crmt"):
                row = {}
                for task in ("fmnist-multimodal", "fmnist-multimodal-missing"):
                    row[task] = cell(model, "pgd-l2", d, task, args.n, out, eps=args.l2_eps, steps=10,
                                     certify=(d == "crmt"))
                table["rows"][f"{model}/{d}/multimodal"] = row
            table["certified"] = certified_table(out)
    return table


def family(model_name: str) -> str:
    from robustbench_mm.models.zoo import entry_for

    return entry_for(model_name).family


def defense_families(name: str) -> frozenset[str]:
    from robustbench_mm.defenses.base import DEFENSES as REG
    from robustbench_mm.presets import load_preset
    from robustbench_mm.runner.registration import register_all

    register_all()
    return REG.get(load_preset("defense", name, REG).impl).families


def certified_table(out: str) -> list[dict]:
    import pandas as pd

    path = Path(out) / "certified.parquet"
    if not path.exists():
        return []
    df = pd.read_parquet(path)
    return df[["defense", "task", "radius", "quantity", "mean", "n"]].to_dict("records")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(DEFENSES))
    ap.add_argument("--models", default="clip-tiny")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy 2-core box)")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--n-apgd", type=int, default=100)
    ap.add_argument("--n-joint", type=int, default=100)
    ap.add_argument("--n-vlm", type=int, default=100, help="VQA images per LLaVA / BLIP-2 cell")
    ap.add_argument("--pgd-steps", type=int, default=10)
    ap.add_argument("--apgd-steps", type=int, default=25)
    ap.add_argument("--text-eps", type=float, default=0.25)
    ap.add_argument("--l2-eps", type=float, default=0.25)
    ap.add_argument("--store", default="results/runs/defenses")
    ap.add_argument("--report", default="results/defenses")
    args = ap.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    defenses = [d.strip() for d in args.only.split(",") if d.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    records = {}
    if not args.skip_train:
        for m in models:
            for d in defenses:
                if family(m) in defense_families(d):
                    records[f"{m}/{d}"] = train(d, m, resume=not args.no_resume)
    if args.skip_eval:
        return
    table = evaluate(models, defenses, args)
    table["training"] = {k: {"train_seconds": v.get("train_seconds"), "metrics": v.get("metrics")}
                         for k, v in records.items()}
    rep = Path(args.report)
    rep.mkdir(parents=True, exist_ok=True)
    (rep / f"{'_'.join(models)}.json").write_text(json.dumps(table, indent=2, default=float))
    log.info("wrote %s", rep / f"{'_'.join(models)}.json")


if __name__ == "__main__":
    main()
