"""Train the bundled tiny zoo on Fashion-MNIST and save it in the real Hugging Face / open_clip formats.

    python scripts/train_zoo.py                       # all four, the shipped weights' recipe (~30 min on 2 idle cores)
    python scripts/train_zoo.py --profile quick       # a ~12 min smoke run, below the accuracy targets
    python scripts/train_zoo.py --only clip-tiny      # one model (comma-separated list allowed)
    python scripts/train_zoo.py --only llava-tiny --epochs 2 --out /tmp/zoo

Models (written to ``<out>/<name>/``, default ``robustbench_mm/models/zoo``):

- ``clip-tiny``      transformers ``CLIPModel`` (ViT 32px/patch 4) + word-level tokenizer, contrastive.
- ``openclip-tiny``  open_clip custom ViT + HF word-level tokenizer, contrastive.
- ``llava-tiny``     ``LlavaForConditionalGeneration``: clip-tiny's vision tower (frozen) + projector
                     + a small ``LlamaForCausalLM``; captioning + VQA prompts.
- ``blip2-tiny``     ``Blip2ForConditionalGeneration``: small Blip2 vision encoder + Q-Former + small OPT.

Everything is seeded (``--seed``), uses the raw Fashion-MNIST train set from the Debian package
``dataset-fashion-mnist`` and the package's own preprocessing
(``robustbench_mm.tasks.bundled.to_model_pixels``), and evaluates on the bundled 2,000-image test
slice; each model directory gets a ``MODEL_CARD.md`` with the measured numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import zoo_clip  # noqa: E402
import zoo_common  # noqa: E402

MODELS = ["clip-tiny", "openclip-tiny", "llava-tiny", "blip2-tiny"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    ap.add_argument("--epochs", type=float, default=None, help="override every model's epoch count")
    ap.add_argument("--out", default=str(zoo_common.ZOO_DIR), help="zoo root directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--profile", choices=["quick", "full"], default="full",
                    help="full: the settings of the shipped weights (clip-tiny 10 epochs, openclip-tiny 2, "
                         "LLaVA 1 and BLIP-2 1.5 epochs on all 60k images; ~30 min on 2 idle cores); "
                         "quick: a smoke run below the accuracy targets (clip-tiny 2 epochs, openclip-tiny "
                         "0.75, LLaVA/BLIP-2 1 epoch on 20k images; ~12 min)")
    ap.add_argument("--lit-only", action="store_true",
                    help="clip-tiny: only run stage 2 (locked-image text tuning) on the existing <out>/clip-tiny")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if args.profile == "quick":
        import zoo_vlm

        zoo_clip.CLIP_TINY["epochs"] = 2
        zoo_clip.OPENCLIP_TINY["epochs"] = 0.75
        zoo_vlm.TRAIN_SUBSET = 20_000
        zoo_vlm.BLIP2_EPOCHS = 1.0
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    for n in names:
        if n not in MODELS:
            ap.error(f"unknown model {n!r}; choose from {', '.join(MODELS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        if name not in names:
            continue
        t0 = time.time()
        print(f"=== {name} ===", flush=True)
        if name == "clip-tiny":
            if not args.lit_only:
                zoo_clip.train_clip_tiny(out / name, epochs=args.epochs, seed=args.seed)
            zoo_clip.lit_polish_clip_tiny(out / name, seed=args.seed)
        elif name == "openclip-tiny":
            zoo_clip.train_openclip_tiny(out / name, epochs=args.epochs, seed=args.seed)
        elif name == "llava-tiny":
            import zoo_vlm

            zoo_vlm.train_llava_tiny(out / name, clip_dir=out / "clip-tiny", epochs=args.epochs, seed=args.seed)
        elif name == "blip2-tiny":
            import zoo_vlm

            zoo_vlm.train_blip2_tiny(out / name, clip_dir=out / "clip-tiny", epochs=args.epochs, seed=args.seed)
        print(f"=== {name} done in {time.time() - t0:.0f}s ===", flush=True)


if __name__ == "__main__":
    main()
