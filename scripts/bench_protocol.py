"""Our `standard` protocol vs torchattacks' ``AutoAttack(version="standard")``: wall time and robust
accuracy on the same classifiers, images and budget, in one run, alternating which side goes first.

    python scripts/bench_protocol.py                     # clip-tiny zero-shot + a Fashion-MNIST CNN, CPU
    python scripts/bench_protocol.py --n 64 --device cuda

Models: clip-tiny's zero-shot classifier (bundled Fashion-MNIST test slice, class prompts "a photo of
a {c}", linf 8/255) and a small CNN trained here, in seconds, on the Fashion-MNIST train split
(Debian ``dataset-fashion-mnist``) with FGSM+random-start adversarial training at linf 0.1 (so robust
accuracy is not trivially zero), evaluated on the bundled test slice at linf 0.1. Both sides see
the same ``nn.Module`` (logits on [0,1] images); robust accuracy is each side's adversarial images
judged by one fp32 forward (clean-wrong samples count as not robust on both sides).

Two references, each its own row: torchattacks' ``AutoAttack`` class as shipped (its APGD, APGD-T
and FAB keep their 10-step class default) and the same four members at AutoAttack's official
budgets (100 steps, as our protocol runs them), so speed is also compared like for like.

Writes ``results/bench/protocol-<date>-<device>.json``: provenance plus ``rows`` of
``{model, n, eps, ours_s, reference_s, reference, ours_robust_accuracy, reference_robust_accuracy}``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from robustbench_mm.runner import provenance
from robustbench_mm.runner.protocol import LATEST, load_protocol

log = logging.getLogger("bench_protocol")


class SmallCNN(nn.Module):
    """Two conv layers and a linear head on 3x28x28 Fashion-MNIST pixels in [0,1]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def train_cnn(device: torch.device, eps: float, n_train: int, epochs: int, seed: int = 0) -> nn.Module:
    """FGSM with a random start (Wong et al. 2020, "Fast is better than free") on the train split."""
    from robustbench_mm.tasks.bundled import read_raw_fmnist, to_model_pixels

    images, labels = read_raw_fmnist("train")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(images), generator=g)[:n_train]
    x_all = to_model_pixels(images[pick.numpy()], 28)
    y_all = torch.as_tensor(labels[pick.numpy()])
    torch.manual_seed(seed)
    model = SmallCNN().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    start = time.time()
    for _ in range(epochs):
        order = torch.randperm(n_train, generator=g)
        for i in range(0, n_train, 128):
            idx = order[i:i + 128]
            x, y = x_all[idx].to(device), y_all[idx].to(device)
            delta = ((torch.rand(x.shape, generator=g) * 2 - 1) * eps).to(device).requires_grad_(True)
            loss = nn.functional.cross_entropy(model((x + delta).clamp(0, 1)), y)
            grad, = torch.autograd.grad(loss, delta)
            delta = (delta + 1.25 * eps * grad.sign()).clamp(-eps, eps).detach()
            loss = nn.functional.cross_entropy(model((x + delta).clamp(0, 1)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    log.info("trained the CNN on %d images x %d epochs in %.1f s", n_train, epochs, time.time() - start)
    return model.eval()


def clip_classifier(device: torch.device) -> nn.Module:
    from robustbench_mm.attacks.objectives import ClassifierObjective
    from robustbench_mm.attacks.torchattacks_bridge import LogitsModule
    from robustbench_mm.models.zoo import LoadOptions, load_model
    from robustbench_mm.tasks.bundled import FMNIST_CLASSES

    model = load_model("clip-tiny", LoadOptions(device=device.type, dtype="fp32"))
    return LogitsModule(model, ClassifierObjective([f"a photo of a {c}" for c in FMNIST_CLASSES])).eval()


def eval_data(n: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of the bundled Fashion-MNIST test slice at ``size`` px, true labels."""
    from robustbench_mm.tasks.bundled import fmnist_eval_arrays, to_model_pixels

    images, labels, _ = fmnist_eval_arrays()
    return to_model_pixels(images[:n], size).to(device), torch.as_tensor(labels[:n]).to(device)


def robust_accuracy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


def ours(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[float, float]:
    from robustbench_mm.benchmarking import benchmark_module

    start = time.time()
    res = benchmark_module(model, x, y, norm="linf", eps=eps, version="standard", return_adversarial=True)
    wall = time.time() - start
    assert res.adversarial is not None
    return wall, robust_accuracy(model, res.adversarial.to(x.device), y)


def reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[float, float]:
    import torchattacks

    start = time.time()
    atk = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=0)
    x_adv = atk(x, y)
    wall = time.time() - start
    return wall, robust_accuracy(model, x_adv, y)


def reference_official_budgets(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[float, float]:
    """torchattacks' standard members at AutoAttack's official budgets: its ``AutoAttack`` class leaves
    APGD, APGD-T and FAB at their 10-step class default, while AutoAttack (and our protocol) run 100."""
    import torchattacks as ta

    start = time.time()
    members = [ta.APGD(model, norm="Linf", eps=eps, steps=100, loss="ce", n_restarts=1, seed=0),
               ta.APGDT(model, norm="Linf", eps=eps, steps=100, n_classes=10, n_restarts=1, seed=0),
               ta.FAB(model, norm="Linf", eps=eps, steps=100, multi_targeted=True, n_classes=10, n_restarts=1, seed=0),
               ta.Square(model, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, seed=0)]
    x_adv = ta.MultiAttack(members)(x, y)
    wall = time.time() - start
    return wall, robust_accuracy(model, x_adv, y)


REFERENCES = {
    "reference": (reference, "torchattacks.AutoAttack(version=standard)"),
    "reference_100": (reference_official_budgets, "torchattacks standard members at 100 steps (AutoAttack's budgets)"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=64, help="evaluation images per model (default 64)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--models", default="clip-tiny,fmnist-cnn", help="comma list (default clip-tiny,fmnist-cnn)")
    p.add_argument("--train-n", type=int, default=20000, help="CNN training images (default 20000)")
    p.add_argument("--epochs", type=int, default=2, help="CNN training epochs (default 2)")
    p.add_argument("--out", default="results/bench", help="output folder (default results/bench)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    builders: dict[str, tuple[Callable[[], nn.Module], int, float]] = {
        "clip-tiny": (lambda: clip_classifier(device), 32, 8 / 255),
        "fmnist-cnn": (lambda: train_cnn(device, 0.1, args.train_n, args.epochs), 28, 0.1),
    }
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(m.strip() for m in args.models.split(",") if m.strip()):
        build, size, eps = builders[name]
        model = build()
        x, y = eval_data(args.n, size, device)
        sides = [("ours", ours)] + [(k, fn) for k, (fn, _) in REFERENCES.items()]
        if i % 2:
            sides.reverse()  # alternate which side runs first (cache and clock effects)
        got = {side: fn(model, x, y, eps) for side, fn in sides}
        for key, (_, label) in REFERENCES.items():  # one row per reference, ours measured once in the same run
            row = {"model": name, "n": args.n, "eps": eps, "ours_s": round(got["ours"][0], 2),
                   "reference_s": round(got[key][0], 2), "reference": label,
                   "ours_robust_accuracy": got["ours"][1], "reference_robust_accuracy": got[key][1],
                   "speedup": round(got[key][0] / got["ours"][0], 2), "first": sides[0][0]}
            log.info("%s", row)
            rows.append(row)
    dev = provenance.device_name(device)
    doc = {"device": dev, "created_at": provenance.now(), "git_commit": provenance.git_commit(),
           "versions": provenance.versions(), "protocol": load_protocol(LATEST["standard"]).id,
           "command": "python scripts/bench_protocol.py " + " ".join(
               f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()), "rows": rows}
    provenance.write_bench_json(args.out, "protocol", "cpu" if device.type == "cpu" else "gpu", doc)
    for r in rows:
        print(f"{r['model']:11s} n={r['n']} eps={r['eps']:.4f}  ours {r['ours_s']:8.1f}s robust "
              f"{r['ours_robust_accuracy']:.3f} | {r['reference']}: {r['reference_s']:8.1f}s robust "
              f"{r['reference_robust_accuracy']:.3f} | {r['speedup']:.2f}x")


if __name__ == "__main__":
    main()
