"""Clean and PGD-robust accuracy of the zoo's robust CLIP encoders (issue 33), zero-shot and inside
llava-tiny / blip2-tiny through ``--vision-encoder``.

    python scripts/robust_encoders.py                    # measure everything (one core)
    python scripts/robust_encoders.py --skip-vlm         # only the zero-shot table

It measures the shipped weights in ``robustbench_mm/defenses/weights/``; they are trained by
``python scripts/train_defenses.py --only fare,fare2,sim-clip,sim-clip2 --models clip-tiny,openclip-tiny
--skip-eval`` (a cell whose defense has no weights would train them first). Every number is
a real cell of ``api.run_cell`` (PGD linf, 10 steps, step eps/4, seed 0) stored under ``--store``; the
table goes to ``results/robust_encoders.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

BUDGETS = {"2/255": 2 / 255, "4/255": 4 / 255}
CLIP_MODELS = ("clip-tiny", "openclip-tiny")
# tecoa2 / tecoa4 / tecoa trained at 2 / 4 / 8 (its preset) /255, fare2 / fare and sim-clip2 / sim-clip at 2 / 4 /255
DEFENSES = ("none", "tecoa2", "tecoa4", "tecoa", "fare2", "fare", "sim-clip2", "sim-clip")
ENCODERS = (None, "clip-tiny", "tecoa2-clip-tiny", "tecoa4-clip-tiny", "tecoa-clip-tiny", "fare2-clip-tiny",
            "fare-clip-tiny", "sim-clip2-clip-tiny", "sim-clip-clip-tiny")
# None: the VLM's own tower (llava-tiny's is clip-tiny's, bit for bit; blip2-tiny's was fine-tuned)
VLM_TASKS = {"llava-tiny": ("fmnist-caption", "fmnist-vqa"), "blip2-tiny": ("fmnist-caption",)}
log = logging.getLogger("robust_encoders")


def cell(store: str, n: int, **spec_kw: object) -> dict:
    from robustbench_mm import api
    from robustbench_mm.runner.resolve import CellSpec

    spec = CellSpec(attack="pgd", batch_size=100, device="cpu", n=n, steps=10, **spec_kw)  # type: ignore[arg-type]
    r = api.run_cell(spec, out=store).row
    log.info("%s", {k: spec_kw[k] for k in spec_kw} | {"clean": r["clean_accuracy"], "robust": r["robust_accuracy"]})
    return {"clean": float(r["clean_accuracy"]), "robust": float(r["robust_accuracy"]), "n": int(r["n"]),
            "cell_id": r["cell_id"]}


def zero_shot(args: argparse.Namespace) -> dict:
    from robustbench_mm.defenses.training import SHIPPED_DIR

    rows = {}
    for model in CLIP_MODELS:
        for d in DEFENSES:
            if d != "none" and not (SHIPPED_DIR / f"{d}-{model}").is_dir():
                continue  # tecoa ships for clip-tiny only
            rows[f"{model}/{d}"] = {b: cell(args.store, args.n, model=model, defense=d, task="fmnist-zeroshot", eps=e)
                                    for b, e in BUDGETS.items()}
    return rows


def in_vlms(args: argparse.Namespace) -> dict:
    rows = {}
    for vlm, tasks in VLM_TASKS.items():
        for enc in ENCODERS:
            for task in tasks:
                rows[f"{vlm}/{enc or 'own tower'}/{task}"] = {
                    b: cell(args.store, args.n_vlm, model=vlm, task=task, eps=e, vision_encoder=enc)
                    for b, e in BUDGETS.items()}
    return rows


def markdown(table: dict) -> str:
    def fmt(v: dict) -> str:
        return f"{v['clean'] * 100:.1f} | {v['robust'] * 100:.1f}"

    lines = ["# Robust CLIP encoders on the zoo (FARE, Sim-CLIP, TeCoA)", "",
             f"Measured by `{table.get('command', 'python scripts/robust_encoders.py')}` at commit "
             f"{table.get('git_commit', 'unrecorded')} (PGD linf, 10 steps, seed 0; every figure a stored "
             "cell). Clean accuracy is the same cell's unattacked accuracy, so it repeats across the two budgets.",
             "", f"## Zero-shot (fmnist-zeroshot, n={table['n']})", "",
             "| model / defense | clean @2/255 | robust @2/255 | clean @4/255 | robust @4/255 |",
             "|---|---|---|---|---|"]
    lines += [f"| {k} | {fmt(v['2/255'])} | {fmt(v['4/255'])} |" for k, v in table["zero_shot"].items()]
    if table.get("vlm"):
        lines += ["", f"## Inside the VLMs (`--vision-encoder`, n={table['n_vlm']})", "",
                  "| VLM / encoder / task | clean @2/255 | robust @2/255 | clean @4/255 | robust @4/255 |",
                  "|---|---|---|---|---|"]
        lines += [f"| {k} | {fmt(v['2/255'])} | {fmt(v['4/255'])} |" for k, v in table["vlm"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300, help="zero-shot images per cell")
    ap.add_argument("--n-vlm", type=int, default=100, help="captioning / VQA images per VLM cell")
    ap.add_argument("--skip-vlm", action="store_true")
    ap.add_argument("--store", default="results/runs/robust_encoders")
    ap.add_argument("--report", default="results/robust_encoders")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    from robustbench_mm.runner import provenance

    # the commit the numbers come from (a -dirty commit is not one to publish) and how to rerun them
    table = {"command": "python " + " ".join(sys.argv), "git_commit": provenance.git_commit(),
             "created_at": provenance.now(), "n": args.n, "n_vlm": args.n_vlm, "zero_shot": zero_shot(args)}
    if not args.skip_vlm:
        table["vlm"] = in_vlms(args)
    Path(args.report + ".json").parent.mkdir(parents=True, exist_ok=True)
    Path(args.report + ".json").write_text(json.dumps(table, indent=2))
    Path(args.report + ".md").write_text(markdown(table))
    log.info("wrote %s.md and .json", args.report)


if __name__ == "__main__":
    main()
