"""Which images were the shipped PSM weights trained on? Recompute their recorded ``s_hat_before``.

``train_psm`` measures ``S_hat`` of the bare encoder on the first 64 held-out images before training;
the held-out images are the first 256 of a seeded permutation of the training pool. That number
therefore identifies the pool: recomputed on the Fashion-MNIST train split it matches the record
to float precision only if the weights were trained on the train split; on the evaluation slice
it gives another value. With ``--write``, a verified record gains ``training_data`` (split, size,
sha256) in ``psm.json``; a mismatch exits 1 (retrain with ``mmrobust train --defense fs-psm``).

    OMP_NUM_THREADS=1 python scripts/psm_provenance.py [--models clip-tiny,llava-tiny,blip2-tiny] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from robustbench_mm.defenses.fs_psm import psm as P
from robustbench_mm.defenses.fs_psm.data import psm_training_data
from robustbench_mm.models.zoo import load_model
from robustbench_mm.tasks.bundled import fmnist_eval_arrays, to_model_pixels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="clip-tiny,llava-tiny,blip2-tiny")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    bad = False
    for name in args.models.split(","):
        path = P.WEIGHTS_DIR / name / "psm.json"
        meta = json.loads(path.read_text())
        cfg = meta["config"]
        recorded = {float(k): v for k, v in meta["metrics"]["s_hat_before"].items()}
        model = load_model(name)
        data = psm_training_data(model.image_size, int(cfg["train_images"]), int(cfg["seed"]))
        evals = fmnist_eval_arrays()[0]
        order = np.random.RandomState(int(cfg["seed"])).permutation(len(evals))
        eval_held = to_model_pixels(evals[order[:256]], model.image_size)
        row = {"model": name}
        for s, want in recorded.items():
            gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731 - as train_psm measures it
            row[f"recorded@{s}"] = want
            row[f"train_split@{s}"] = P.score(model, None, data.heldout[:64], s, 32, gen())
            row[f"eval_slice@{s}"] = P.score(model, None, eval_held[:64], s, 32, gen())
        match = all(abs(row[f"train_split@{s}"] - w) < 1e-5 for s, w in recorded.items())
        row["trained_on_train_split"] = match
        print(json.dumps(row))
        bad |= not match
        if args.write and match:
            meta["training_data"] = {**data.record, "verified_by": "s_hat_before recomputed on the train split's "
                                     "held-out images matches the record (scripts/psm_provenance.py)"}
            path.write_text(json.dumps(meta, indent=2) + "\n")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
