"""Dataset sources behind tasks: bundled data, ``save_to_disk`` dirs, image folders, HF hub ids.

A source string picks the loader: ``bundled:fmnist``, ``disk:/path`` (``datasets.load_from_disk``),
``imagefolder:/path`` (class sub-folders), or ``hf:<id>`` (hub; fails clearly when offline).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_mm.errors import ConfigError


@lru_cache(maxsize=8)
def load_source(source: str, split: str = "test") -> Any:
    """Load a ``datasets.Dataset`` for a source string (cached per process)."""
    scheme, _, rest = source.partition(":")
    if scheme == "bundled":
        if rest != "fmnist":
            raise ConfigError(f"dataset {source!r}: the only bundled data set is bundled:fmnist")
        from robustbench_mm.tasks.bundled import load_fmnist_eval

        return load_fmnist_eval()
    import datasets

    if scheme == "disk":
        if not Path(rest).exists():
            raise ConfigError(f"dataset {source!r}: directory {rest} does not exist (save it with save_to_disk)")
        ds = datasets.load_from_disk(rest)
        return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    if scheme == "imagefolder":
        if not Path(rest).is_dir():
            raise ConfigError(f"dataset {source!r}: image folder {rest} does not exist")
        return datasets.load_dataset("imagefolder", data_dir=rest, split="train")
    if scheme == "hf":
        try:
            return datasets.load_dataset(rest, split=split)
        except Exception as exc:  # noqa: BLE001 - offline hub errors come in many types
            raise ConfigError(
                f"dataset {rest!r} could not be loaded from the Hugging Face hub or cache "
                f"({type(exc).__name__}); offline, use a bundled task such as fmnist-zeroshot, or "
                f"save the data with save_to_disk and pass dataset: disk:/path"
            ) from None
    raise ConfigError(f"dataset {source!r} must start with bundled:, disk:, imagefolder: or hf:")


def image_to_tensor(image: Any, size: int) -> Tensor:
    """One image (PIL, uint8 array HxW or HxWxC) -> ``[3,size,size]`` float in [0,1].

    Resize the shorter side to ``size`` (bilinear), then centre-crop: the usual CLIP recipe.
    """
    if hasattr(image, "convert"):
        arr = np.asarray(image.convert("RGB"))
    else:
        arr = np.asarray(image)
    t = torch.from_numpy(np.array(arr, dtype=np.uint8)).float() / 255.0
    t = t.unsqueeze(-1).expand(*t.shape, 3) if t.dim() == 2 else t[..., :3]
    t = t.permute(2, 0, 1).unsqueeze(0)
    h, w = t.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return t[0, :, top : top + size, left : left + size].clamp(0, 1).contiguous()


def class_names(ds: Any, label_column: str, given: tuple[str, ...] | None) -> list[str]:
    """Class names from the task preset, else from the dataset's ClassLabel feature."""
    if given:
        return list(given)
    feature = ds.features.get(label_column) if hasattr(ds, "features") else None
    names = getattr(feature, "names", None)
    if not names:
        raise ConfigError(f"dataset has no ClassLabel names in column {label_column!r}; list them in params.classes")
    return [n.replace("_", " ") for n in names]


def load_checked(source: str, split: str, columns: list[str], task: str) -> Any:
    """``load_source`` plus a check that the task's columns exist (one clear error otherwise)."""
    ds = load_source(source, split)
    for col in columns:
        if col not in ds.column_names:
            raise ConfigError(f"task {task}: dataset has no column {col!r} (columns: {', '.join(ds.column_names)})")
    return ds


def images_to_pixels(source: str, images: list[Any], size: int) -> Tensor:
    """A column of images -> ``[N,3,size,size]``; the bundled Fashion-MNIST uses the exact
    preprocessing the bundled models were trained with."""
    if source == "bundled:fmnist":
        from robustbench_mm.tasks.bundled import to_model_pixels

        arr = np.stack([np.asarray(im, dtype=np.uint8).reshape(28, 28) for im in images])
        return to_model_pixels(arr, size)
    return torch.stack([image_to_tensor(im, size) for im in images])
