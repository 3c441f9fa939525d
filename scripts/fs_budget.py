"""Measure FS / FS-PSM certificates on clip-tiny for a Monte-Carlo budget: S_hat, S_lo, FCSB and the
abstention rate per radius on a fixed set of evaluation images (the same images for every budget).

    OMP_NUM_THREADS=1 python scripts/fs_budget.py --defense fs-psm --n 4000 --n0 64 --images 32
Prints one JSON object (also written to --out if given).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from robustbench_mm.defenses.base import DEFENSES
from robustbench_mm.models.zoo import load_model
from robustbench_mm.presets import load_preset
from robustbench_mm.presets import build
from robustbench_mm.runner.registration import register_all
from robustbench_mm.tasks.bundled import FMNIST_CLASSES, fmnist_eval_arrays, to_model_pixels
from robustbench_mm.types import Batch

log = logging.getLogger("fs_budget")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--defense", default="fs-psm")
    ap.add_argument("--model", default="clip-tiny")
    ap.add_argument("--n", type=int, default=None, help="estimation samples (default: the preset's)")
    ap.add_argument("--n0", type=int, default=None)
    ap.add_argument("--bound", default=None)
    ap.add_argument("--radii", default="0.1,0.25,0.5,0.75,1.0")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    register_all()
    preset = load_preset("defense", args.defense, DEFENSES)
    defense = build(DEFENSES.get(preset.impl), preset)
    for k in ("n", "n0", "bound"):
        if getattr(args, k) is not None:
            setattr(defense, k, getattr(args, k))
    if hasattr(defense, "train_if_missing"):
        defense.train_if_missing = False
    model = load_model(args.model)
    images, labels, _ = fmnist_eval_arrays()
    idx = [(67 * k) % len(labels) for k in range(args.images)]  # spread over the evaluation slice
    batch = Batch(pixels=to_model_pixels(images[idx], model.image_size), labels=torch.as_tensor(labels[idx]),
                  index=torch.as_tensor(idx),
                  extra={"class_prompts": tuple(f"a photo of a {c}" for c in FMNIST_CLASSES)})
    radii = tuple(float(r) for r in args.radii.split(","))
    defended = defense.apply(model)
    t0 = time.time()
    with torch.no_grad():
        frame = defense.certify(defended, batch, radii)
    wall = time.time() - t0
    out: dict = {"defense": args.defense, "model": args.model, "sigma": defense.sigma, "n": defense.n,
                 "n0": defense.n0, "alpha": defense.alpha, "bound": defense.bound, "images": len(idx),
                 "certify_s": wall}
    for q in ("s_hat", "s_lo"):
        out[f"{q}_mean"] = float(frame[frame.quantity == q]["value"].mean())
    per_radius = {}
    for r in radii:
        f = frame[(frame.quantity == "fcsb") & ((frame.radius - r).abs() < 1e-9)]
        per_radius[str(r)] = {"fcsb_mean_certified": float(f["value"].mean()) if (~f.abstain).any() else None,
                              "fcsb_mean_abstain_as_-1": float(f["value"].fillna(-1.0).mean()),
                              "abstain_rate": float(f["abstain"].mean())}
        ca = frame[(frame.quantity == "certified_accuracy") & ((frame.radius - r).abs() < 1e-9)]
        if len(ca):
            per_radius[str(r)]["certified_accuracy"] = float(ca["value"].fillna(0.0).clip(lower=0).mean())
    out["per_radius"] = per_radius
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
