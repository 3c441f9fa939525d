"""The bundled Fashion-MNIST slice and the zoo's preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robustbench_mm.tasks import bundled
from robustbench_mm.tasks.bundled import FMNIST_CLASSES, find_class, load_fmnist_eval, to_model_pixels


@pytest.fixture(scope="module")
def ds():
    return load_fmnist_eval()


def test_slice_shape_balance_dtype(ds):
    assert len(ds) == 2000
    assert set(ds.column_names) >= {"image", "label", "source_index"}
    batch = ds[:]
    images = batch["image"]
    assert isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape == (2000, 28, 28)
    assert ds[0]["image"].dtype == np.uint8
    labels = np.asarray(batch["label"])
    assert np.bincount(labels, minlength=10).tolist() == [200] * 10
    src = np.asarray(batch["source_index"])
    assert len(np.unique(src)) == 2000 and src.min() >= 0 and src.max() < 10_000
    assert images.reshape(2000, -1).std(1).min() > 0  # real images, not blanks


def test_arrays_match_dataset(ds):
    images, labels, src = bundled.fmnist_eval_arrays()
    assert (images[:50] == ds[:50]["image"]).all()
    assert labels[:50].tolist() == list(ds[:50]["label"])


def test_no_raw_files_needed_at_runtime(monkeypatch, tmp_path):
    monkeypatch.setattr(bundled, "RAW_FMNIST_DIR", tmp_path / "absent")
    assert len(bundled.load_fmnist_eval()) == 2000


@pytest.mark.skipif(not (bundled.RAW_FMNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="Debian dataset-fashion-mnist not installed")
def test_slice_is_the_test_set():
    raw_images, raw_labels = bundled.read_raw_fmnist("t10k")
    images, labels, src = bundled.fmnist_eval_arrays()
    assert (raw_images[src] == images).all() and (raw_labels[src] == labels).all()


def test_to_model_pixels():
    imgs = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    x = to_model_pixels(imgs, 32)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    ref = F.interpolate(torch.from_numpy(imgs).float().div(255).unsqueeze(1), size=(32, 32), mode="bilinear",
                        align_corners=False, antialias=False)
    assert torch.allclose(x[:, :1], ref)
    assert torch.equal(to_model_pixels(torch.from_numpy(imgs), 28)[:, 0], torch.from_numpy(imgs).float() / 255)


@pytest.mark.parametrize(
    "text,expected",
    [("a photo of a t-shirt", 0), ("shirt", 6), ("A T-Shirt.", 0), ("ankle boot", 9), ("ankle boots", 9),
     ("sneaker", 7), ("a photo of a bag", 8), ("bagel", None), ("", None), ("coat or shirt", 4)],
)
def test_find_class(text, expected):
    assert find_class(text) == expected


def test_every_class_name_is_found():
    assert [find_class(f"a photo of a {c}") for c in FMNIST_CLASSES] == list(range(10))
