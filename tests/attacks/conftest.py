"""Fixtures for attack tests: a small network trained in a few seconds on the bundled Fashion-MNIST
slice (first 1,600 images), evaluated on held-out images of the same slice."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn



@pytest.fixture(autouse=True)
def one_thread() -> object:
    """Tiny models run far faster on one thread on a shared CPU (no spin-wait oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

TRAIN = 1600  # images of the 2,000-image slice used for training; the rest are held out


class Data(NamedTuple):
    x: Tensor  # [N,3,32,32] in [0,1]
    y: Tensor  # [N]


def small_net() -> nn.Module:
    """Pool to 8x8, then a 2-layer MLP: ~13k weights, so a 100-step attack on 128 images takes ~1 s."""
    return nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(3 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10))


def fmnist_pixels() -> Data:
    from robustbench_mm.tasks.bundled import fmnist_eval_arrays, to_model_pixels

    images, labels, _ = fmnist_eval_arrays()
    return Data(to_model_pixels(images, 32), torch.as_tensor(labels, dtype=torch.long))


@pytest.fixture(scope="session")
def fmnist_model() -> tuple[nn.Module, Data]:
    """(trained network in eval mode with frozen weights, held-out data); clean accuracy ~75%."""
    torch.set_num_threads(1)
    data = fmnist_pixels()
    torch.manual_seed(0)
    model = small_net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = data.x[:TRAIN], data.y[:TRAIN]
    for _epoch in range(15):
        perm = torch.randperm(TRAIN)
        for i in range(0, TRAIN, 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, Data(data.x[TRAIN:], data.y[TRAIN:])


@pytest.fixture(scope="session")
def eval_set(fmnist_model: tuple[nn.Module, Data]) -> Data:
    """128 held-out images the model classifies correctly (so robust accuracy = 1 - ASR)."""
    model, data = fmnist_model
    with torch.no_grad():
        ok = model(data.x).argmax(1) == data.y
    return Data(data.x[ok][:128], data.y[ok][:128])
