"""Write the bundled evaluation slice robustbench_mm/tasks/data/fmnist_eval.parquet.

2,000 images of the Fashion-MNIST TEST set (t10k), 200 per class, chosen with numpy seed 0
(per class: a seeded permutation of that class's indices, first 200, then all rows sorted by
source index). Needs the Debian package dataset-fashion-mnist; the package at runtime does not.

    python scripts/make_fmnist_slice.py [--seed 0] [--per-class 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from robustbench_mm.tasks.bundled import FMNIST_EVAL_PATH, read_raw_fmnist  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-class", type=int, default=200)
    ap.add_argument("--out", default=str(FMNIST_EVAL_PATH))
    args = ap.parse_args()

    images, labels = read_raw_fmnist("t10k")
    rng = np.random.default_rng(args.seed)
    chosen = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.permutation(idx)[: args.per_class])
    src = np.sort(np.concatenate(chosen))
    table = pa.table(
        {
            "image": pa.array([images[i].tobytes() for i in src], type=pa.binary()),
            "label": pa.array(labels[src], type=pa.int64()),
            "source_index": pa.array(src, type=pa.int64()),
        }
    )
    pq.write_table(table, args.out, compression="zstd")
    print(f"wrote {args.out}: {len(src)} rows, per class {np.bincount(labels[src]).tolist()}")


if __name__ == "__main__":
    main()
