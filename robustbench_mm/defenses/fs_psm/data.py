"""PSM training data: the Fashion-MNIST *train* split only, never the evaluation slice.

The bundled evaluation slice comes from the Fashion-MNIST test split, so training on the train
split keeps every evaluated image unseen. Without the split, training stops with one line naming
the Debian package; it never falls back to evaluation images. What was used (split, file, count,
sha256 of the pixels) is returned so the weights' record can carry it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from robustbench_mm.errors import WeightsError

HELDOUT = 256  # train-split images kept out of training to measure S before / after


@dataclass
class PSMData:
    """``train`` / ``heldout`` pixels ``[N,3,S,S]`` in [0,1]; ``record`` describes their source."""

    train: Tensor
    heldout: Tensor
    record: dict[str, Any]


def train_split_dir() -> Path:
    from robustbench_mm.tasks import bundled

    return Path(bundled.RAW_FMNIST_DIR)


def missing_message() -> str:
    return (f"training PSM needs the Fashion-MNIST train split in {train_split_dir()}, which is missing; "
            f"install it with `apt-get install dataset-fashion-mnist` (it never trains on the evaluation slice)")


def require_train_split() -> None:
    """Raise ``WeightsError`` (exit 2, one line) unless the train split can be read."""
    root = train_split_dir()
    if not all((root / f).is_file() for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")):
        raise WeightsError(missing_message())


def images_sha256(images: np.ndarray) -> str:
    """sha256 of the uint8 pixels, in order (shape included): names the exact training set."""
    h = hashlib.sha256(repr(tuple(images.shape)).encode())
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    return h.hexdigest()


def psm_training_data(size: int, limit: int, seed: int) -> PSMData:
    """``limit`` training images and ``HELDOUT`` held-out ones, drawn (seeded) from the train split."""
    from robustbench_mm.tasks.bundled import read_raw_fmnist, to_model_pixels

    require_train_split()
    try:
        images, _ = read_raw_fmnist("train", root=train_split_dir())
    except OSError:
        raise WeightsError(missing_message()) from None
    order = np.random.RandomState(seed).permutation(len(images))
    held, train = order[:HELDOUT], order[HELDOUT:HELDOUT + limit]
    record = {"dataset": "fashion-mnist", "split": "train", "source": str(train_split_dir()),
              "images": int(len(train)), "heldout_images": int(len(held)), "split_size": int(len(images)),
              "sha256": images_sha256(images[train]), "heldout_sha256": images_sha256(images[held])}
    return PSMData(to_model_pixels(images[train], size), to_model_pixels(images[held], size), record)
