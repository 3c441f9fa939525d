"""Per-image attribute words of a Fashion-MNIST image, for captions that differ between images of
the same class: how light the garment is, how much of the frame it fills, how much its gray levels
vary. Each attribute is split at the per-class median of the Fashion-MNIST *train* split, so within
every class half the images are on each side and the words carry information beyond the class name.

The same function labels the training captions of ``clip-tiny-captions``
(``scripts/train_caption_clip.py``) and the bundled ``fmnist-captions-retrieval`` gallery (the test
slice), so the words a caption uses are the words the model was trained to read.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# A pixel above this (of 255) belongs to the garment; the Fashion-MNIST background is 0.
FOREGROUND_LEVEL = 25

# (low word, high word) per attribute, in the order of ``attribute_values``' columns.
ATTRIBUTE_WORDS: tuple[tuple[str, str], ...] = (("dark", "light"), ("small", "large"), ("plain", "textured"))
ATTRIBUTE_NAMES = ("brightness", "size", "texture")

# Per-class medians (classes in FMNIST_CLASSES order) of brightness (mean foreground level / 255),
# size (foreground share of the 28x28 frame) and texture (std of foreground levels / 255), measured
# on the 60,000 train images; scripts/train_caption_clip.py recomputes them and refuses to train on
# a mismatch, so the task and the model cannot drift apart.
CLASS_MEDIANS: tuple[tuple[float, float, float], ...] = (
    (0.6392, 0.5434, 0.1568), (0.6953, 0.3176, 0.2018), (0.6559, 0.611, 0.1655), (0.6878, 0.3903, 0.1823),
    (0.7244, 0.5746, 0.1649), (0.5168, 0.2449, 0.2194), (0.5808, 0.5906, 0.1572), (0.585, 0.2832, 0.2267),
    (0.6869, 0.537, 0.1811), (0.7024, 0.4298, 0.1932),
)


def attribute_values(images: np.ndarray) -> np.ndarray:
    """``[N,3]`` float brightness, size and texture of uint8 images ``[N,28,28]`` (see module docstring)."""
    x = np.asarray(images, dtype=np.float64).reshape(len(images), -1) / 255.0
    fg = x > FOREGROUND_LEVEL / 255.0
    count = np.maximum(fg.sum(axis=1), 1)
    mean = (x * fg).sum(axis=1) / count
    var = (((x - mean[:, None]) ** 2) * fg).sum(axis=1) / count
    return np.stack([mean, fg.mean(axis=1), np.sqrt(var)], axis=1)


def class_medians(images: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``[C,3]`` per-class medians of ``attribute_values`` (how ``CLASS_MEDIANS`` was measured)."""
    values = attribute_values(images)
    return np.stack([np.median(values[labels == c], axis=0) for c in range(n_classes)])


def attribute_bits(images: np.ndarray, labels: np.ndarray, medians: np.ndarray | None = None) -> np.ndarray:
    """``[N,3]`` int 0/1 per attribute: 1 when the image is above its class's median."""
    table = np.asarray(CLASS_MEDIANS if medians is None else medians, dtype=np.float64)
    return (attribute_values(images) > table[np.asarray(labels)]).astype(np.int64)


def attribute_group(labels: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """One ground-truth group per (class, attribute words): ``label * 8 + bits as a binary number``."""
    weights = 2 ** np.arange(bits.shape[1] - 1, -1, -1)
    return np.asarray(labels) * 2 ** bits.shape[1] + bits @ weights


def attribute_words(bits: np.ndarray) -> list[dict[str, str]]:
    """Per image the template fields ``{b}``, ``{s}``, ``{t}`` (brightness, size, texture words)."""
    keys = ("b", "s", "t")
    return [{k: ATTRIBUTE_WORDS[j][int(v)] for j, (k, v) in enumerate(zip(keys, row))} for row in bits]


def group_fields(group: int, classes: Sequence[str]) -> dict[str, str]:
    """The template fields (``{c}`` and the attribute words) of a group id, ``attribute_group``'s inverse."""
    n_bits = len(ATTRIBUTE_WORDS)
    bits = np.array([[(group >> (n_bits - 1 - j)) & 1 for j in range(n_bits)]])
    return {"c": classes[group >> n_bits], **attribute_words(bits)[0]}


def every_caption(templates: Sequence[str], classes: Sequence[str]) -> list[str]:
    """Every caption the templates can make: (template t, group g) at index ``t * n_groups + g``."""
    n_groups = len(classes) * 2 ** len(ATTRIBUTE_WORDS)
    return [t.format(**group_fields(g, classes)) for t in templates for g in range(n_groups)]
