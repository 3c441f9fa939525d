"""clip-tiny (transformers CLIPModel) and openclip-tiny (open_clip custom model) trainers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import zoo_common as zc
from robustbench_mm.tasks.bundled import FMNIST_CLASSES

IMAGE_SIZE = 32
EVAL_TEMPLATE = "a photo of a {c}"


# ---- shared contrastive machinery ------------------------------------------------------------
def caption_ids(tokenizer, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids / attention masks of every (template, class) caption: [T,C,L]."""
    texts = [t.format(c=c) for t in zc.CAPTION_TEMPLATES for c in FMNIST_CLASSES]
    enc = tokenizer(texts, padding="max_length", max_length=max_len, return_tensors="pt")
    T, C = len(zc.CAPTION_TEMPLATES), len(FMNIST_CLASSES)
    return enc["input_ids"].view(T, C, -1), enc["attention_mask"].view(T, C, -1)


def multi_positive_loss(img: torch.Tensor, txt: torch.Tensor, y_img: torch.Tensor, y_txt: torch.Tensor,
                        scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every caption of the image's class is a positive.

    With 10 classes a batch holds many same-class pairs; treating them as negatives (plain CLIP
    loss) would fight the objective, so the target is uniform over same-class entries.
    """
    logits = scale * img @ txt.t()  # [B,U]
    pos = (y_img[:, None] == y_txt[None, :]).float()
    li = -(F.log_softmax(logits, 1) * pos / pos.sum(1, keepdim=True)).sum(1).mean()
    pos_t = pos.t()
    keep = pos_t.sum(1) > 0
    lt = -(F.log_softmax(logits.t()[keep], 1) * pos_t[keep] / pos_t[keep].sum(1, keepdim=True)).sum(1).mean()
    return 0.5 * (li + lt)


def train_contrastive(encode_image, encode_text, params, scale_fn, ids, mask, *, epochs: float, seed: int,
                      batch_size: int = 256, lr: float = 2e-3, log_every: int = 50, eval_fn=None) -> float:
    """Generic contrastive loop; returns training seconds.

    ``eval_fn()`` (if given) is called every 100 steps and logged. SIGUSR1 stops training after the
    current step (the model is then saved and evaluated as usual; the card records the steps done).
    """
    gen = torch.Generator().manual_seed(seed)
    images, labels = zc.load_train(seed)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    n = len(labels_t)
    steps_per_epoch = n // batch_size
    total = max(1, int(round(epochs * steps_per_epoch)))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05, betas=(0.9, 0.98))
    T, C, L = ids.shape
    step, t0 = 0, time.time()
    stop = zc.StopFlag()
    while step < total and not stop:
        for idx in zc.batches(n, batch_size, gen):
            if step >= total or stop:
                break
            for g in opt.param_groups:
                g["lr"] = zc.cosine_lr(step, total, lr, warmup=min(200, total // 10))
            x = zc.pixels(zc.augment(images_t[idx], gen), IMAGE_SIZE)
            y = labels_t[idx]
            tpl = torch.randint(0, T, (len(idx),), generator=gen)
            pair = tpl * C + y  # unique captions in this batch
            uniq, inv = torch.unique(pair, return_inverse=True)
            t_ids, t_mask = ids.view(T * C, L)[uniq], mask.view(T * C, L)[uniq]
            img = F.normalize(encode_image(zc.normalize(x)), dim=-1)
            txt = F.normalize(encode_text(t_ids, t_mask), dim=-1)
            loss = multi_positive_loss(img, txt, y, uniq % C, scale_fn())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            if step % log_every == 0 or step == total:
                el = time.time() - t0
                print(f"  step {step}/{total} (epoch {step / steps_per_epoch:.2f}) loss {loss.item():.4f} "
                      f"scale {scale_fn().item():.1f} {el:.0f}s eta {el / step * (total - step):.0f}s", flush=True)
            if eval_fn is not None and step % 100 == 0:
                print(f"  step {step}: quick zero-shot accuracy {eval_fn():.4f}", flush=True)
    TRAIN_LOG["steps"], TRAIN_LOG["total_steps"] = step, total
    return time.time() - t0


TRAIN_LOG: dict = {}


@torch.no_grad()
def zero_shot_accuracy(encode_image, encode_text_strings, template: str = EVAL_TEMPLATE,
                       n: int | None = None) -> tuple[float, list[float]]:
    images, labels = zc.load_eval()
    if n is not None:
        images, labels = images[:n], labels[:n]
    txt = F.normalize(encode_text_strings([template.format(c=c) for c in FMNIST_CLASSES]), dim=-1)
    preds = []
    for i in range(0, len(labels), 500):
        x = zc.pixels(images[i : i + 500], IMAGE_SIZE)
        preds.append((F.normalize(encode_image(x), dim=-1) @ txt.t()).argmax(1))
    pred = torch.cat(preds).numpy()
    per_class = [float((pred[labels == c] == c).mean()) for c in range(10)]
    return float((pred == labels).mean()), per_class


# ---- clip-tiny -----------------------------------------------------------------------------
CLIP_TINY = dict(
    # patch 8 (4x4 grid + CLS = 17 tokens): the 2 shared CPU cores could not fit patch 4 (65 tokens)
    # into the time budget; 8x8 patches of the upsampled 28px image are ~7x7 original pixels.
    vision=dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=96, intermediate_size=384, num_hidden_layers=3,
                num_attention_heads=4, hidden_act="gelu", num_channels=3),
    text=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=32, hidden_act="gelu"),
    projection_dim=64,
    epochs=10,  # shipped weights (2 epochs reached 81%, short of the 85% target); --profile quick uses 2
)


def build_clip_tokenizer(max_len: int = 32):
    s = zc.SPECIAL
    return zc.build_word_tokenizer(zc.word_vocab(), [s["pad"], s["unk"], s["bos"], s["eos"]], bos=s["bos"],
                                   eos=s["eos"], pad=s["pad"], unk=s["unk"], model_max_length=max_len)


def train_clip_tiny(out: Path, *, epochs: float | None, seed: int) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIP_TINY
    epochs = cfg["epochs"] if epochs is None else epochs
    tok = build_clip_tokenizer(cfg["text"]["max_position_embeddings"])
    text_cfg = dict(cfg["text"], vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id)
    config = CLIPConfig(text_config=text_cfg, vision_config=cfg["vision"], projection_dim=cfg["projection_dim"])
    model = CLIPModel(config)
    n_params = zc.param_count(model)
    print(f"  CLIPModel params {n_params:,}, vocab {len(tok)}", flush=True)
    ids, mask = caption_ids(tok, 16)

    def enc_img(x):
        return _img_feat(model, x)

    def enc_txt(i, m):
        return _txt_feat(model, i, m)

    model.train()
    def enc_txt_str(texts):
        e = tok(texts, padding=True, return_tensors="pt")
        return _txt_feat(model, e["input_ids"], e["attention_mask"])

    def quick_eval():
        model.eval()
        acc = zero_shot_accuracy(lambda x: _img_feat(model, zc.normalize(x)), enc_txt_str, n=500)[0]
        model.train()
        return acc

    secs = train_contrastive(enc_img, enc_txt, list(model.parameters()), lambda: model.logit_scale.exp().clamp(max=100),
                             ids, mask, epochs=epochs, seed=seed, eval_fn=quick_eval)
    model.eval()

    acc, per_class = zero_shot_accuracy(lambda x: _img_feat(model, zc.normalize(x)), enc_txt_str)
    print(f"  clip-tiny zero-shot accuracy ('{EVAL_TEMPLATE}') on bundled slice: {acc:.4f}", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    proc = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                              image_mean=zc.FMNIST_MEAN, image_std=zc.FMNIST_STD, do_convert_rgb=True,
                              resample=2)  # bilinear, as to_model_pixels
    proc.save_pretrained(out)
    # reload check: what the adapters will do
    re_model = CLIPModel.from_pretrained(out, use_safetensors=True, local_files_only=True).eval()
    from transformers import AutoTokenizer

    re_tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    assert re_tok("a photo of a t-shirt")["input_ids"] == tok("a photo of a t-shirt")["input_ids"]
    e = re_tok([EVAL_TEMPLATE.format(c=c) for c in FMNIST_CLASSES], padding=True, return_tensors="pt")
    acc2, _ = zero_shot_accuracy(lambda x: _img_feat(re_model, zc.normalize(x)),
                                 lambda t: _txt_feat(re_model, e["input_ids"], e["attention_mask"]))
    assert abs(acc2 - acc) < 1e-6, (acc, acc2)
    size = zc.dir_size_mb(out)
    zc.dump_json(out / "train_metrics.json", {"zero_shot_accuracy": acc, "per_class_accuracy": per_class,
                                               "train_seconds": secs, "params": n_params, "epochs": epochs, **TRAIN_LOG,
                                               "eval_template": EVAL_TEMPLATE, "seed": seed})
    zc.write_card(out, "clip-tiny", {
        "Architecture": f"""transformers `CLIPModel`.
- vision: ViT, image 32x32, patch {cfg['vision']['patch_size']} ({(IMAGE_SIZE // cfg['vision']['patch_size']) ** 2} patches + CLS), width {cfg['vision']['hidden_size']}, {cfg['vision']['num_hidden_layers']} layers, {cfg['vision']['num_attention_heads']} heads, MLP {cfg['vision']['intermediate_size']}
- text: width {cfg['text']['hidden_size']}, {cfg['text']['num_hidden_layers']} layers, {cfg['text']['num_attention_heads']} heads, max 32 tokens, word-level lower-casing tokenizer ({len(tok)} tokens, `PreTrainedTokenizerFast`, loads with `AutoTokenizer`)
- projection dim {cfg['projection_dim']}; parameters: {n_params:,}; directory size {size:.2f} MB (fp32 safetensors)
- preprocessing: `robustbench_mm.tasks.bundled.to_model_pixels(images, 32)` (gray to 3 channels, bilinear, no antialias), then mean {zc.FMNIST_MEAN[0]} / std {zc.FMNIST_STD[0]} per channel (`preprocessor_config.json`)""",
        "Training": f"""Contrastive on the 60,000 Fashion-MNIST train images, {epochs} epochs ({TRAIN_LOG['steps']} of {TRAIN_LOG['total_steps']} planned steps run), batch 256, AdamW (lr 2e-3, wd 0.05, cosine, warmup 10% of steps), seed {seed}.
Each image gets a caption from {len(zc.CAPTION_TEMPLATES)} templates ({', '.join(repr(t) for t in zc.CAPTION_TEMPLATES[:4])}, ...).
Loss: symmetric InfoNCE over the batch's distinct captions, with every caption of the image's class a positive.
Augmentation: horizontal flip, +-2 px shift. Measured training time: {secs / 60:.1f} min on this 2-core CPU.""",
        "Evaluation": f"""Zero-shot accuracy on the bundled 2,000-image test slice (`robustbench_mm/tasks/data/fmnist_eval.parquet`) with the prompt `"{EVAL_TEMPLATE}"`: **{acc * 100:.2f}%**.
Per class: {', '.join(f'{c} {a * 100:.0f}%' for c, a in zip(FMNIST_CLASSES, per_class))}.""",
    })
    print(f"  saved {out} ({size:.2f} MB)", flush=True)


def _img_feat(model, x):
    out = model.vision_model(pixel_values=x)
    return model.visual_projection(out.pooler_output)


def _txt_feat(model, ids, mask):
    out = model.text_model(input_ids=ids, attention_mask=mask)
    return model.text_projection(out.pooler_output)


# ---- openclip-tiny ---------------------------------------------------------------------------
OPENCLIP_TINY = dict(
    embed_dim=64,
    vision_cfg=dict(image_size=IMAGE_SIZE, patch_size=8, width=64, layers=3, head_width=16, mlp_ratio=4.0),
    text_cfg=dict(context_length=16, width=64, heads=4, layers=2, mlp_ratio=4.0,
                  # a non-empty hf_tokenizer_name makes open_clip load the HF tokenizer saved in the
                  # local-dir itself (AutoTokenizer on the directory), no download
                  hf_tokenizer_name="openclip-tiny-wordlevel", tokenizer_kwargs={"clean": "whitespace"}),
    epochs=2,  # shipped weights; --profile quick uses 0.75
)


def build_openclip_tokenizer(max_len: int):
    """Word-level tokenizer whose EOT has the largest id (open_clip pools the text at argmax(id))."""
    s = zc.SPECIAL
    words = zc.word_vocab() + [s["eos"]]
    return zc.build_word_tokenizer(words, [s["pad"], s["unk"], s["bos"]], bos=s["bos"], eos=s["eos"], pad=s["pad"],
                                   unk=s["unk"], model_max_length=max_len)


def train_openclip_tiny(out: Path, *, epochs: float | None, seed: int) -> None:
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed + 1)  # not the clip-tiny init
    cfg = json.loads(json.dumps(OPENCLIP_TINY))
    epochs = cfg.pop("epochs") if epochs is None else epochs
    cfg.pop("epochs", None)
    ctx = cfg["text_cfg"]["context_length"]
    tok = build_openclip_tokenizer(ctx)
    assert tok.eos_token_id == len(tok) - 1
    cfg["text_cfg"]["vocab_size"] = len(tok)
    model = open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=cfg["vision_cfg"], text_cfg=cfg["text_cfg"])
    n_params = zc.param_count(model)
    print(f"  open_clip CLIP params {n_params:,}, vocab {len(tok)}", flush=True)
    ids, mask = caption_ids(tok, ctx)
    model.train()
    secs = train_contrastive(lambda x: model.encode_image(x), lambda i, m: model.encode_text(i),
                             list(model.parameters()), lambda: model.logit_scale.exp().clamp(max=100), ids, mask,
                             epochs=epochs, seed=seed + 1)
    model.eval()

    out.mkdir(parents=True, exist_ok=True)
    weights = out / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    weights.chmod(0o644)
    tok.save_pretrained(out)
    preprocess = {"size": [IMAGE_SIZE, IMAGE_SIZE], "mean": zc.FMNIST_MEAN, "std": zc.FMNIST_STD,
                  "interpolation": "bilinear", "resize_mode": "squash"}
    zc.dump_json(out / "open_clip_config.json", {"model_cfg": cfg, "preprocess_cfg": preprocess})
    # evaluate through the public loading path
    loaded, _, _ = open_clip.create_model_and_transforms("local-dir:" + str(out))
    loaded.eval()
    otok = open_clip.get_tokenizer("local-dir:" + str(out))
    acc, per_class = zero_shot_accuracy(lambda x: loaded.encode_image(zc.normalize(x)),
                                        lambda t: loaded.encode_text(otok(t)))
    print(f"  openclip-tiny zero-shot accuracy ('{EVAL_TEMPLATE}') on bundled slice: {acc:.4f}", flush=True)
    size = zc.dir_size_mb(out)
    zc.dump_json(out / "train_metrics.json", {"zero_shot_accuracy": acc, "per_class_accuracy": per_class,
                                               "train_seconds": secs, "params": n_params, "epochs": epochs, **TRAIN_LOG,
                                               "eval_template": EVAL_TEMPLATE, "seed": seed + 1})
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    zc.write_card(out, "openclip-tiny", {
        "Architecture": f"""open_clip `CLIP` from a custom config (`open_clip_config.json`; load with `open_clip.create_model_and_transforms("local-dir:<dir>")` and `open_clip.get_tokenizer("local-dir:<dir>")`).
- vision: ViT, image 32, patch {v['patch_size']}, width {v['width']}, {v['layers']} layers, head width {v['head_width']}
- text: width {t['width']}, {t['layers']} layers, {t['heads']} heads, context {ctx}; word-level HF tokenizer in the directory ({len(tok)} tokens, end-of-text has the largest id for open_clip's argmax pooling)
- embed dim {cfg['embed_dim']}; parameters: {n_params:,}; directory size {size:.2f} MB (fp32 `open_clip_model.safetensors`)
- preprocessing: `to_model_pixels(images, 32)`, then mean {zc.FMNIST_MEAN[0]} / std {zc.FMNIST_STD[0]}""",
        "Training": f"""From scratch, contrastive on the 60,000 Fashion-MNIST train images, {epochs} epochs ({TRAIN_LOG['steps']} of {TRAIN_LOG['total_steps']} planned steps run), batch 256, AdamW (lr 2e-3, wd 0.05, cosine), seed {seed + 1}; same caption templates, loss and augmentation as clip-tiny. Measured training time: {secs / 60:.1f} min on this 2-core CPU.""",
        "Evaluation": f"""Zero-shot accuracy on the bundled 2,000-image slice with `"{EVAL_TEMPLATE}"`: **{acc * 100:.2f}%**.
Per class: {', '.join(f'{c} {a * 100:.0f}%' for c, a in zip(FMNIST_CLASSES, per_class))}.""",
    })
    print(f"  saved {out} ({size:.2f} MB)", flush=True)


def lit_polish_clip_tiny(out: Path, *, seed: int, steps: int = 300, n_images: int = 20_000) -> None:
    """Stage 2 of clip-tiny: locked-image tuning (LiT) of the text side on frozen vision features.

    The vision tower (and so llava-tiny's copy of it) stays bit-identical; the text tower, both
    projections and the logit scale train for ``steps`` steps of the same multi-positive loss
    against pooled vision outputs of the first ``n_images`` train images, computed once. Cheap on
    CPU, it lifts the zero-shot accuracy of the prompt closer to what the image features allow.
    """
    from transformers import AutoTokenizer, CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel.from_pretrained(out, use_safetensors=True, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model.vision_model.requires_grad_(False)
    model.eval()

    def enc_txt_str(texts):
        e = tok(texts, padding=True, return_tensors="pt")
        return _txt_feat(model, e["input_ids"], e["attention_mask"])

    before, _ = zero_shot_accuracy(lambda x: _img_feat(model, zc.normalize(x)), enc_txt_str)
    t0 = time.time()
    images, labels = zc.load_train(seed)
    images, labels = torch.from_numpy(images[:n_images]), torch.from_numpy(labels[:n_images])
    with torch.no_grad():
        pooled = torch.cat([model.vision_model(pixel_values=zc.normalize(zc.pixels(images[i : i + 1000], IMAGE_SIZE)))
                            .pooler_output for i in range(0, n_images, 1000)])
    print(f"  LiT: pooled vision features {tuple(pooled.shape)} in {time.time() - t0:.0f}s; before {before:.4f}",
          flush=True)
    params = [p for n, p in model.named_parameters() if not n.startswith("vision_model.")]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.98))
    ids, mask = caption_ids(tok, 16)
    T, C, L = ids.shape
    gen = torch.Generator().manual_seed(seed + 7)
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = zc.cosine_lr(step, steps, 1e-3, warmup=20)
        idx = torch.randint(0, n_images, (1024,), generator=gen)
        y = labels[idx]
        pair = torch.randint(0, T, (len(idx),), generator=gen) * C + y
        uniq = torch.unique(pair)
        img = F.normalize(model.visual_projection(pooled[idx]), dim=-1)
        txt = F.normalize(_txt_feat(model, ids.view(T * C, L)[uniq], mask.view(T * C, L)[uniq]), dim=-1)
        loss = multi_positive_loss(img, txt, y, uniq % C, model.logit_scale.exp().clamp(max=100))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            print(f"  LiT step {step + 1}/{steps} loss {loss.item():.4f}", flush=True)
    model.eval()
    secs = time.time() - t0
    after, per_class = zero_shot_accuracy(lambda x: _img_feat(model, zc.normalize(x)), enc_txt_str)
    print(f"  clip-tiny zero-shot accuracy after LiT: {after:.4f} (before {before:.4f}), {secs:.0f}s", flush=True)
    model.save_pretrained(out, safe_serialization=True)
    metrics = json.loads((out / "train_metrics.json").read_text())
    metrics.update({"zero_shot_accuracy_before_lit": before, "zero_shot_accuracy": after,
                    "per_class_accuracy": per_class, "lit_seconds": secs, "lit_steps": steps,
                    "lit_images": n_images})
    zc.dump_json(out / "train_metrics.json", metrics)
    card = (out / "MODEL_CARD.md").read_text()
    head, _, rest = card.partition("## Evaluation")
    tail = rest[rest.index("## Environment"):]
    card = (head + f"""Stage 2, locked-image tuning: vision tower frozen (bit-identical to stage 1, so llava-tiny's copy matches), text tower + both projections + logit scale trained {steps} steps (batch 1024) on pooled vision features of the first {n_images:,} train images, same loss, AdamW lr 1e-3 cosine. Measured: {secs / 60:.1f} min.

## Evaluation

Zero-shot accuracy on the bundled 2,000-image test slice (`robustbench_mm/tasks/data/fmnist_eval.parquet`) with the prompt `"{EVAL_TEMPLATE}"`: **{after * 100:.2f}%** (after stage 1 only: {before * 100:.2f}%).
Per class: {', '.join(f'{c} {a * 100:.0f}%' for c, a in zip(FMNIST_CLASSES, per_class))}.

""" + tail)
    (out / "MODEL_CARD.md").write_text(card)
