"""Images/s of our PGD-10 and APGD-100 vs torchattacks' on the same model, data and budget.

    python scripts/bench_attacks.py                       # clip-tiny + random-init open_clip ViT-B-32
    python scripts/bench_attacks.py --models clip-tiny --batch 64 --device cuda --dtype bf16
    python scripts/bench_attacks.py --device cuda --dtype bf16 --compile \
        --models open_clip-ViT-B-32-random,open_clip-ViT-L-14-random,llava-1.5-7b-shape \
        --batch 256,256,8 --apgd-steps 100,100,100          # the GPU figures of issue 5

Both sides attack the same zero-shot classifier (VLM adapter + class prompts): ours through the
Objective, torchattacks through an ``nn.Module`` returning the same logits. ``--dtype bf16`` runs
our search under bf16 autocast (torchattacks has no such option and stays fp32); robust accuracy is
always judged in fp32. Writes ``results/bench/<date>-<device>.json`` (design.md "Stable names") and
prints a table. Images: the first clean-correct bundled Fashion-MNIST images (labels: the true ones for
clip-tiny, the model's own predictions for random-weight models), so both sides do the same work.
On CPU our attacks drop a sample from the batch once it is broken (torchattacks keeps attacking it),
so with random weights, where nearly every sample breaks at the first step, the CPU ratio mostly
measures that; the trained clip-tiny is the like-for-like CPU figure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from robustbench_mm.attacks import build
from robustbench_mm.attacks.evaluation import syncs_are_free
from robustbench_mm.attacks.objectives import ClassifierObjective
from robustbench_mm.attacks.torchattacks_bridge import LogitsModule
from robustbench_mm.runner import provenance
from robustbench_mm.tasks.bundled import FMNIST_CLASSES, fmnist_eval_arrays, to_model_pixels
from robustbench_mm.types import Batch

log = logging.getLogger("bench_attacks")
PROMPTS = [f"a photo of a {c}" for c in FMNIST_CLASSES]


# dense bf16 tensor-core peaks (FLOP/s) by device-name fragment, for the fraction-of-peak column
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def load(name: str, device: torch.device) -> Any:
    """A bundled model, ``open_clip-<ARCH>-random`` (open_clip architecture, random weights at its own
    resolution), or ``llava-1.5-7b-shape`` (LlavaForConditionalGeneration with LLaVA-1.5-7B's
    dimensions, random weights: ViT-L/14 at 336 px + 2-layer projector + a 32-layer 4096-wide Llama;
    vocabulary and tokenizer of llava-tiny, which changes only the LM head's share of the cost)."""
    if name.startswith("open_clip-") and name.endswith("-random"):
        import open_clip

        from robustbench_mm.models.clip import OPENAI_MEAN, OPENAI_STD, OpenClip

        arch = name[len("open_clip-"):-len("-random")]
        torch.manual_seed(0)
        model = open_clip.create_model(arch, pretrained=None)
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        return OpenClip(model.to(device), open_clip.get_tokenizer(arch), OPENAI_MEAN, OPENAI_STD, int(size)).freeze()
    if name == "llava-1.5-7b-shape":
        return llava_7b_shape(device)
    from robustbench_mm.models.zoo import LoadOptions, load_model

    return load_model(name, LoadOptions(device=device.type))


def llava_7b_shape(device: torch.device) -> Any:
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from robustbench_mm.models.llava import LlavaAdapter
    from robustbench_mm.models.zoo import load_model

    tiny = load_model("llava-tiny")
    cfg = LlavaConfig.from_dict(tiny.model.config.to_dict())
    cfg.vision_config.update(dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, patch_size=14, image_size=336, projection_dim=768))
    cfg.text_config.update(dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=32, head_dim=128))
    cfg.vision_feature_layer, cfg.vision_feature_select_strategy = -2, "default"  # 576 image tokens
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration(cfg).eval()
    return LlavaAdapter(model, tiny.tokenizer, image_size=336, mean=tiny.mean, std=tiny.std,
                        chat_template=tiny.chat_template, image_token=tiny.image_token,
                        name="llava-1.5-7b-shape").freeze()


def objective_for(model: Any) -> Any:
    """Zero-shot logits for CLIP; for LLaVA / BLIP-2 the first-token answer logits of "What is this?"
    over the class names (one forward, so torchattacks can attack the same classifier)."""
    if model.family == "clip":
        return ClassifierObjective(PROMPTS)
    from robustbench_mm.attacks.objectives import AnswerLogitsObjective

    return AnswerLogitsObjective("What is this?", list(FMNIST_CLASSES))


@contextlib.contextmanager
def eager(model: Any) -> Iterator[None]:
    """Run ``model`` uncompiled inside the block (torchattacks' side of a ``--compile`` run)."""
    saved = model.__dict__.pop("raw_vision_features", None)
    lm = model.language_model()
    impl = getattr(lm, "_compiled_call_impl", None) if lm is not None else None
    if impl is not None:
        lm._compiled_call_impl = None
    try:
        yield
    finally:
        if saved is not None:
            model.raw_vision_features = saved
        if impl is not None:
            lm._compiled_call_impl = impl


def step_flops(model: Any, objective: Any, b: Batch) -> float:
    """FLOPs of one attack step on the batch: objective forward + input gradient (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = b.pixels.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        loss = objective(model, x, b).float().sum()
        torch.autograd.grad(loss, x)
    return float(counter.get_total_flops())


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


def bench_model(name: str, batch: int, device: torch.device, dtype: str, apgd_steps: int,
                compile_ours: bool = False, repeats: int = 3) -> list[dict[str, Any]]:
    import torchattacks

    model = load(name, device)
    images, labels, _ = fmnist_eval_arrays()
    objective = objective_for(model)
    module = LogitsModule(model, objective).eval()
    pool = to_model_pixels(images[: 16 * batch], model.image_size).to(device)
    with torch.no_grad():
        pool_pred = torch.cat([module(pool[i:i + batch]).argmax(1) for i in range(0, len(pool), batch)])
    trained = not name.endswith(("-random", "-shape"))
    pool_y = torch.as_tensor(labels[: 16 * batch], device=device) if trained else pool_pred
    # only clean-correct images, so both sides do the same work (torchattacks' APGD skips wrong ones)
    keep = (pool_pred == pool_y).nonzero().flatten()[:batch]
    x, y, clean = pool[keep], pool_y[keep], pool_pred[keep]
    batch = len(keep)
    b = Batch(pixels=x, labels=y, index=torch.arange(batch), seeds=torch.arange(batch))
    flops = step_flops(model, objective, b)
    if compile_ours:
        model.compile_for_attacks()
    peak = next((v for k, v in BF16_PEAK.items() if k in provenance.device_name(device)), None)
    eps = 4 / 255
    rows = []
    for label, steps, ours_attack, ta_attack in (
        ("pgd-10", 10, build("pgd", eps=eps, steps=10, step_size=eps / 4, search_dtype=dtype),
         torchattacks.PGD(module, eps=eps, alpha=eps / 4, steps=10)),
        (f"apgd-{apgd_steps}", apgd_steps, build("apgd-ce", eps=eps, steps=apgd_steps, search_dtype=dtype),
         torchattacks.APGD(module, eps=eps, steps=apgd_steps, loss="ce")),
    ):
        with torch.no_grad():
            module(x[:2])  # warm-up (text cache, kernels; compiles the forward when --compile)
        if compile_ours:  # compile the backward too, outside the timed region
            attack_correct(build("pgd", eps=eps, steps=1, search_dtype=dtype), model, b, objective, clean == y)
        # alternate the two sides and keep each one's fastest of ``repeats`` runs, so neither pays
        # for warming the allocator and caches on the other's behalf
        t_ours = t_ta = float("inf")
        for _ in range(repeats):
            ours_x, t = timed(lambda: attack_correct(ours_attack, model, b, objective, clean == y), device)
            t_ours = min(t_ours, t)
            with eager(model):
                ta_x, t = timed(lambda: ta_attack(x, y), device)
            t_ta = min(t_ta, t)
        with torch.no_grad():
            ra_ours = float((module(ours_x).argmax(1) == y).float().mean())
            ra_ta = float((module(ta_x).argmax(1) == y).float().mean())
        # FLOP/s only where every row runs every step: PGD on an accelerator. APGD stops once every
        # sample is broken, and on CPU both drop broken samples, so there it would be an upper bound.
        achieved = flops * steps / t_ours if label.startswith("pgd") and not syncs_are_free(device) else None
        rows.append({"model": name, "attack": label, "batch": batch, "dtype": dtype, "compiled": compile_ours,
                     "repeats": repeats,
                     "ours_img_s": batch / t_ours, "torchattacks_img_s": batch / t_ta, "ratio": t_ta / t_ours,
                     "robust_acc_ours": ra_ours, "robust_acc_torchattacks": ra_ta,
                     "clean_acc": float((clean == y).float().mean()), "eps": eps, "norm": "linf",
                     "step_gflops": flops / 1e9, "achieved_tflop_s": achieved / 1e12 if achieved else None,
                     "fraction_of_bf16_peak": achieved / peak if achieved and peak else None})
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
    p.add_argument("--compile", action="store_true", help="torch.compile our side (torchattacks stays eager)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side (alternating); the fastest counts")
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
        results += bench_model(name, batch, device, a.dtype, steps, a.compile, a.repeats)
    dev = provenance.device_name(device)
    doc = {"device": dev, "created_at": provenance.now(), "versions": provenance.versions(),
           "threads": torch.get_num_threads(), "results": results}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = "".join(ch if ch.isalnum() else "-" for ch in dev).strip("-").lower()
    path = out / f"{dt.date.today().isoformat()}-{slug}.json"
    path.write_text(json.dumps(doc, indent=2))
    print(f"{'model':28s} {'attack':9s} {'batch':>5s} {'ours img/s':>11s} {'ta img/s':>9s} {'ratio':>6s} "
          f"{'RA ours':>8s} {'RA ta':>6s} {'TFLOP/s':>8s} {'of peak':>8s}")
    for r in results:
        print(f"{r['model']:28s} {r['attack']:9s} {r['batch']:5d} {r['ours_img_s']:11.2f} "
              f"{r['torchattacks_img_s']:9.2f} {r['ratio']:6.2f} {r['robust_acc_ours']:8.3f} "
              f"{r['robust_acc_torchattacks']:6.3f} {_num(r['achieved_tflop_s'], '.4f'):>8s} "
              f"{_num(r['fraction_of_bf16_peak'], '.1%'):>8s}")
    print(f"-> {path}")


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


if __name__ == "__main__":
    main()
