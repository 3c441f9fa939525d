"""The bundled Fashion-MNIST evaluation slice and the one preprocessing function of the tiny zoo.

The slice (``data/fmnist_eval.parquet``) is 2,000 images of the Fashion-MNIST *test* set, 200 per
class, drawn once with a fixed seed by ``scripts/make_fmnist_slice.py``; it ships inside the
package, so nothing here needs the network or the Debian ``dataset-fashion-mnist`` package.

``to_model_pixels`` is the exact preprocessing the zoo was trained with (``scripts/train_zoo.py``
imports it), so train and eval pixels match bit for bit.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_mm.attacks.embedding import TARGET_IMAGES

FMNIST_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
FMNIST_EVAL_PATH = DATA_DIR / "fmnist_eval.parquet"
# Where the Debian package dataset-fashion-mnist puts the raw files (scripts only).
RAW_FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def load_fmnist_eval():  # -> datasets.Dataset
    """The bundled 2,000-image slice as a ``datasets.Dataset``.

    Columns: ``image`` (uint8 ``[28,28]`` via the numpy format), ``label`` (int64, index into
    ``FMNIST_CLASSES``), ``source_index`` (row in the original ``t10k`` files). The dataset is
    formatted so ``ds[i:j]["image"]`` is a uint8 numpy array ``[n,28,28]`` (``label`` and
    ``source_index`` are Python ints).
    """
    import datasets

    images, labels, src = fmnist_eval_arrays()
    features = datasets.Features(
        {
            "image": datasets.Array2D(shape=(28, 28), dtype="uint8"),
            "label": datasets.Value("int64"),
            "source_index": datasets.Value("int64"),
        }
    )
    ds = datasets.Dataset.from_dict(
        {"image": images, "label": labels, "source_index": src}, features=features
    )
    # The numpy formatter upcasts integers to int64 unless told otherwise: keep the image uint8,
    # labels and indices come back as plain Python ints.
    ds.set_format("numpy", columns=["image"], output_all_columns=True, dtype=np.uint8)
    return ds


def fmnist_eval_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images uint8 [2000,28,28], labels int64 [2000], source_index int64 [2000])``, fast path."""
    import pyarrow.parquet as pq

    if not FMNIST_EVAL_PATH.exists():
        raise FileNotFoundError(
            f"{FMNIST_EVAL_PATH} is missing; the package install is incomplete "
            "(regenerate with `python scripts/make_fmnist_slice.py`)"
        )
    # Stored as 784 raw bytes per row (compact and exact).
    table = pq.read_table(FMNIST_EVAL_PATH)
    raw = table.column("image").to_pylist()
    images = np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(-1, 28, 28).copy()
    labels = np.asarray(table.column("label").to_pylist(), dtype=np.int64)
    src = np.asarray(table.column("source_index").to_pylist(), dtype=np.int64)
    return images, labels, src


def to_model_pixels(images_uint8: np.ndarray | Tensor, size: int) -> Tensor:
    """Fashion-MNIST uint8 ``[N,28,28]`` -> float32 ``[N,3,size,size]`` in [0,1].

    Gray is repeated to three channels; resizing is bilinear with ``align_corners=False`` and no
    antialiasing. The zoo was trained through this function, so use it for every evaluation.
    """
    x = torch.as_tensor(np.asarray(images_uint8) if not isinstance(images_uint8, Tensor) else images_uint8)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    x = x.to(torch.float32).div_(255.0).unsqueeze(1)  # [N,1,28,28]
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return x.clamp_(0.0, 1.0).expand(-1, 3, -1, -1).contiguous()


def read_idx_gz(path: str | Path) -> np.ndarray:
    """Parse one gzipped IDX file (images ``[N,28,28]`` or labels ``[N]``, uint8)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    if (magic >> 8) != 0x08:  # 0x08 = unsigned byte
        raise ValueError(f"{path}: not a uint8 IDX file (magic {magic:#x})")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def read_raw_fmnist(split: str = "train", root: str | Path = RAW_FMNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Raw Fashion-MNIST ``(images uint8 [N,28,28], labels int64 [N])``; ``split`` is train|t10k.

    Scripts only (needs the Debian ``dataset-fashion-mnist`` package); the package itself uses
    the bundled slice.
    """
    if split not in ("train", "t10k", "test"):
        raise ValueError(f"split must be train or t10k, not {split!r}")
    split = "t10k" if split == "test" else split
    root = Path(root)
    images = read_idx_gz(root / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx_gz(root / f"{split}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


_CLASS_PATTERNS: list[tuple[int, "object"]] | None = None


def find_class(text: str) -> int | None:
    """Index of the Fashion-MNIST class named in ``text`` (first mention), or None.

    Whole words only, case-insensitive, hyphen-aware: ``"a photo of a t-shirt"`` is class 0 and
    not ``shirt``; ``"ankle boot"`` and ``"ankle-boot"`` both match. This is the answer check of
    the bundled captioning and VQA tasks ("the output states the correct class").
    """
    import re

    global _CLASS_PATTERNS
    if _CLASS_PATTERNS is None:
        pats = []
        for idx, name in enumerate(FMNIST_CLASSES):
            words = [re.escape(w) for w in re.split(r"[\s\-]+", name)]
            body = r"[\s\-]*".join(words) + r"s?"  # "t-shirt", "t shirt", "tshirt", plural
            pats.append((idx, re.compile(r"(?<![\w\-])" + body + r"(?![\w\-])", re.IGNORECASE)))
        _CLASS_PATTERNS = pats
    best: tuple[int, int, int] | None = None  # (start, -length, class)
    for idx, pat in _CLASS_PATTERNS:
        m = pat.search(text)
        if m:
            key = (m.start(), -(m.end() - m.start()), idx)
            if best is None or key < best:
                best = key
    return None if best is None else best[2]


@TARGET_IMAGES.register("bundled")
def bundled_target_images(labels: Tensor, size: int) -> Tensor:
    """First image of class ``(y + 1) mod 10`` in the bundled slice, ``[B,3,size,size]``: the MF-ii
    attack's target when its batch has no other-class sample (``attacks/embedding.py``)."""
    images, classes, _ = fmnist_eval_arrays()
    classes = np.asarray(classes)
    first = {c: int(np.nonzero(classes == c)[0][0]) for c in range(10)}
    picks = np.stack([np.asarray(images[first[(int(y) + 1) % 10]], dtype=np.uint8).reshape(28, 28) for y in labels])
    return to_model_pixels(picks, size)
