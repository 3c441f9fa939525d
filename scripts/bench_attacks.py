"""Images/s of our PGD-10 and APGD-100 vs torchattacks' on the same model, data and budget.

    python scripts/bench_attacks.py                       # clip-tiny + random-init open_clip ViT-B-32
    python scripts/bench_attacks.py --models clip-tiny --batch 64 --device cuda --dtype bf16

Both sides attack the same zero-shot classifier (VLM adapter + class prompts): ours through the
Objective, torchattacks through an ``nn.Module`` returning the same logits. ``--dtype bf16`` runs
our search under bf16 autocast (torchattacks has no such option and stays fp32); robust accuracy is
always judged in fp32. Writes ``results/bench/<date>-<device>.json`` (design.md "Stable names") and
prints a table. Images: the first clean-correct bundled Fashion-MNIST images (labels: the true ones for
clip-tiny, the model's own predictions for random-weight models), so both sides do the same work.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch

from robustbench_mm.attacks import build
from robustbench_mm.attacks.objectives import ClassifierObjective
from robustbench_mm.attacks.torchattacks_bridge import LogitsModule
from robustbench_mm.runner import provenance
from robustbench_mm.tasks.bundled import FMNIST_CLASSES, fmnist_eval_arrays, to_model_pixels
from robustbench_mm.types import Batch

log = logging.getLogger("bench_attacks")
PROMPTS = [f"a photo of a {c}" for c in FMNIST_CLASSES]


def load(name: str, device: torch.device) -> Any:
    if name == "open_clip-ViT-B-32-random":
        import open_clip

        from robustbench_mm.models.clip import OPENAI_MEAN, OPENAI_STD, OpenClip

        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32", pretrained=None)
        return OpenClip(model.to(device), open_clip.get_tokenizer("ViT-B-32"), OPENAI_MEAN, OPENAI_STD, 224).freeze()
    from robustbench_mm.models.zoo import LoadOptions, load_model

    return load_model(name, LoadOptions(device=device.type))


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def attack_correct(attack: Any, model: Any, batch: Batch, objective: Any, ok: torch.Tensor) -> torch.Tensor:
    """As the runner and torchattacks' APGD do: attack only the clean-correct samples."""
    out = batch.pixels.clone()
    if bool(ok.any()):
        sub = batch.select(ok)
        out[ok] = attack.perturb(model, sub, objective, generator=torch.Generator().manual_seed(0)).pixels
    return out


def bench_model(name: str, batch: int, device: torch.device, dtype: str, apgd_steps: int) -> list[dict[str, Any]]:
    import torchattacks

    model = load(name, device)
    images, labels, _ = fmnist_eval_arrays()
    objective = ClassifierObjective(PROMPTS)
    module = LogitsModule(model, objective).eval()
    pool = to_model_pixels(images[: 16 * batch], model.image_size).to(device)
    with torch.no_grad():
        pool_pred = module(pool).argmax(1)
    pool_y = torch.as_tensor(labels[: 16 * batch], device=device) if name == "clip-tiny" else pool_pred
    # only clean-correct images, so both sides do the same work (torchattacks' APGD skips wrong ones)
    keep = (pool_pred == pool_y).nonzero().flatten()[:batch]
    x, y, clean = pool[keep], pool_y[keep], pool_pred[keep]
    batch = len(keep)
    b = Batch(pixels=x, labels=y, index=torch.arange(batch), seeds=torch.arange(batch))
    eps = 4 / 255
    rows = []
    for label, ours_attack, ta_attack in (
        ("pgd-10", build("pgd", eps=eps, steps=10, step_size=eps / 4, search_dtype=dtype),
         torchattacks.PGD(module, eps=eps, alpha=eps / 4, steps=10)),
        (f"apgd-{apgd_steps}", build("apgd-ce", eps=eps, steps=apgd_steps, search_dtype=dtype),
         torchattacks.APGD(module, eps=eps, steps=apgd_steps, loss="ce")),
    ):
        module(x[:2])  # warm-up (text cache, kernels)
        ours_x, t_ours = timed(lambda: attack_correct(ours_attack, model, b, objective, clean == y), device)
        ta_x, t_ta = timed(lambda: ta_attack(x, y), device)
        with torch.no_grad():
            ra_ours = float((module(ours_x).argmax(1) == y).float().mean())
            ra_ta = float((module(ta_x).argmax(1) == y).float().mean())
        rows.append({"model": name, "attack": label, "batch": batch, "dtype": dtype,
                     "ours_img_s": batch / t_ours, "torchattacks_img_s": batch / t_ta, "ratio": t_ta / t_ours,
                     "robust_acc_ours": ra_ours, "robust_acc_torchattacks": ra_ta,
                     "clean_acc": float((clean == y).float().mean()), "eps": eps, "norm": "linf"})
        log.info("%s", rows[-1])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="clip-tiny,open_clip-ViT-B-32-random")
    p.add_argument("--batch", default="32,4", help="batch per model (comma list, or one for all)")
    p.add_argument("--apgd-steps", default="100,20", help="APGD steps per model (100 = APGD-100)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--out", default="results/bench")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    models = a.models.split(",")
    per = lambda s: [int(v) for v in s.split(",")] * (len(models) if "," not in s else 1)  # noqa: E731
    results = []
    for name, batch, steps in zip(models, per(a.batch), per(a.apgd_steps)):
        results += bench_model(name, batch, device, a.dtype, steps)
    dev = provenance.device_name(device)
    doc = {"device": dev, "created_at": provenance.now(), "versions": provenance.versions(),
           "threads": torch.get_num_threads(), "results": results}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = "".join(ch if ch.isalnum() else "-" for ch in dev).strip("-").lower()
    path = out / f"{dt.date.today().isoformat()}-{slug}.json"
    path.write_text(json.dumps(doc, indent=2))
    print(f"{'model':28s} {'attack':9s} {'batch':>5s} {'ours img/s':>11s} {'ta img/s':>9s} {'ratio':>6s} "
          f"{'RA ours':>8s} {'RA ta':>6s}")
    for r in results:
        print(f"{r['model']:28s} {r['attack']:9s} {r['batch']:5d} {r['ours_img_s']:11.2f} "
              f"{r['torchattacks_img_s']:9.2f} {r['ratio']:6.2f} {r['robust_acc_ours']:8.3f} "
              f"{r['robust_acc_torchattacks']:6.3f}")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
