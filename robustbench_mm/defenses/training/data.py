"""Training data: the Fashion-MNIST train split, seeded per-step batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from robustbench_mm.errors import WeightsError


@dataclass
class TrainData:
    """uint8 images ``[N,28,28]`` and int64 labels ``[N]`` (Fashion-MNIST train split)."""

    images: Tensor
    labels: Tensor
    record: dict[str, Any] = field(default_factory=dict)  # split, size, sha256: what the card records


_DATA: dict[str, TrainData] = {}


def training_data() -> TrainData:
    """The Fashion-MNIST train split, cached per process; one clear error when it is absent."""
    if "fmnist" not in _DATA:
        from robustbench_mm.tasks.bundled import RAW_FMNIST_DIR, read_raw_fmnist

        try:
            images, labels = read_raw_fmnist("train")
        except OSError:
            raise WeightsError(
                f"training a defense needs the Fashion-MNIST train split ({RAW_FMNIST_DIR}, Debian package "
                f"dataset-fashion-mnist), which is missing; install it with `apt-get install dataset-fashion-mnist`, or use a defense preset that ships "
                f"weights (robustbench_mm/defenses/weights/)"
            ) from None
        from robustbench_mm.defenses.fs_psm.data import images_sha256

        record = {"dataset": "fashion-mnist", "split": "train", "source": str(RAW_FMNIST_DIR),
                  "images": int(len(images)), "sha256": images_sha256(images)}
        _DATA["fmnist"] = TrainData(torch.from_numpy(images), torch.from_numpy(labels), record)
    return _DATA["fmnist"]


def step_generator(seed: int, step: int) -> torch.Generator:
    """CPU generator of training step ``step``: what makes resuming exact."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))


def sample_batch(data: TrainData, batch_size: int, image_size: int, gen: torch.Generator,
                 device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``(pixels [B,3,S,S] in [0,1], labels [B], indices [B])`` drawn with replacement."""
    from robustbench_mm.tasks.bundled import to_model_pixels

    idx = torch.randint(len(data.labels), (batch_size,), generator=gen)
    x = to_model_pixels(data.images[idx], image_size).to(device)
    return x, data.labels[idx].to(device), idx
