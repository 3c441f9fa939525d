"""llava-tiny and blip2-tiny trainers: captioning + VQA on Fashion-MNIST, trained through the adapters."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

import zoo_common as zc
from robustbench_mm.tasks.bundled import FMNIST_CLASSES, find_class

IMAGE_SIZE = 32

# What the bundled fmnist-caption / fmnist-vqa tasks pass (the first of each list) and paraphrases
# seen in training. Answers: captions "a photo of a {c}", VQA the bare class name "{c}".
CAPTION_PROMPTS = ["Describe the image.", "Describe this image.", "Write a short caption for the image.",
                   "Caption this image."]
VQA_PROMPTS = ["What is this?", "What is in the image?", "What item of clothing is shown?",
               "What is shown in the picture?", "What kind of item is this?"]
CAPTION_ANSWER = "a photo of a {c}"
TRAIN_SUBSET = 60_000  # all train images (shipped weights); --profile quick uses the first 20k
VQA_ANSWER = "{c}"

LLAVA_CHAT_TEMPLATE = (  # the llava-1.5-hf template: "USER: <image>\n{prompt} ASSISTANT:"
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}"
    "{% endfor %}{% if message['role'] != 'assistant' %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in "
    "message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] + ' '}}"
    "{% endgeneration %}{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def lm_tokenizer(extra_words: list[str]):
    """Llama/OPT-style word-level tokenizer: adds BOS only, ``<image>`` special, hyphenated words kept."""
    texts = CAPTION_PROMPTS + VQA_PROMPTS + [CAPTION_ANSWER.format(c=c) for c in FMNIST_CLASSES] + extra_words
    words = zc.word_vocab(texts, keep_hyphens=True)
    return zc.build_word_tokenizer(words, ["<pad>", "<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", add_eos=False,
                                   pad="<pad>", unk="<unk>", model_max_length=256, extra_special=["<image>"],
                                   keep_hyphens=True)


def sample_prompts(labels: torch.Tensor, gen: torch.Generator) -> tuple[list[str], list[str]]:
    prompts, targets = [], []
    kind = torch.rand(len(labels), generator=gen) < 0.5
    for y, is_cap in zip(labels.tolist(), kind.tolist()):
        bank, ans = (CAPTION_PROMPTS, CAPTION_ANSWER) if is_cap else (VQA_PROMPTS, VQA_ANSWER)
        prompts.append(bank[int(torch.randint(len(bank), (1,), generator=gen))])
        targets.append(ans.format(c=FMNIST_CLASSES[y]))
    return prompts, targets


def train_lm(adapter, params, *, epochs: float, seed: int, batch_size: int, lr: float, augment: bool = True,
             subset: int | None = None, log_every: int = 25) -> float:
    """Teacher-forced training through ``adapter.lm_loss`` (targets end with EOS); returns seconds."""
    gen = torch.Generator().manual_seed(seed)
    images, labels = zc.load_train(seed)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    n = len(labels_t) if subset is None else subset
    steps_per_epoch = n // batch_size
    total = max(1, int(round(epochs * steps_per_epoch)))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    eos = adapter.tokenizer.eos_token
    step, t0 = 0, time.time()
    adapter.model.train()
    while step < total:
        for idx in zc.batches(n, batch_size, gen):
            if step >= total:
                break
            for g in opt.param_groups:
                g["lr"] = zc.cosine_lr(step, total, lr, warmup=min(100, total // 10))
            raw = images_t[idx]
            x = zc.pixels(zc.augment(raw, gen) if augment else raw, IMAGE_SIZE)
            prompts, targets = sample_prompts(labels_t[idx], gen)
            n_tok = sum(len(adapter.tokenizer(" " + t, add_special_tokens=False)["input_ids"]) + 1 for t in targets)
            loss = adapter.lm_loss(x, prompts, [t + eos for t in targets]).sum() / n_tok
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            if step % log_every == 0 or step == total:
                el = time.time() - t0
                print(f"  step {step}/{total} (epoch {step / steps_per_epoch:.2f}) loss/token {loss.item():.4f} "
                      f"{el:.0f}s eta {el / step * (total - step):.0f}s", flush=True)
    adapter.model.eval()
    return time.time() - t0


@torch.no_grad()
def answer_accuracy(adapter, n: int = 500, batch_size: int = 100) -> dict[str, float]:
    """Greedy-decoding accuracy (class named in the answer) on the first ``n`` of the bundled slice."""
    images, labels = zc.load_eval()
    images, labels = images[:n], labels[:n]
    res = {}
    for key, prompt in (("caption", CAPTION_PROMPTS[0]), ("vqa", VQA_PROMPTS[0])):
        hits, examples = [], []
        for i in range(0, n, batch_size):
            outs = adapter.generate(zc.pixels(images[i : i + batch_size], IMAGE_SIZE), [prompt], max_new_tokens=16)
            hits += [find_class(o) == int(y) for o, y in zip(outs, labels[i : i + batch_size])]
            examples += outs[:2] if i == 0 else []
        res[key] = float(np.mean(hits))
        res[key + "_examples"] = examples  # type: ignore[assignment]
    return res


def _card_eval(acc: dict, n: int) -> str:
    return (f"Greedy decoding (max 16 new tokens) on the first {n} images of the bundled slice; an answer is "
            f"correct when `robustbench_mm.tasks.bundled.find_class(answer)` is the label.\n"
            f"- captioning, prompt `\"{CAPTION_PROMPTS[0]}\"` (answer format `\"{CAPTION_ANSWER}\"`): "
            f"**{acc['caption'] * 100:.1f}%** (e.g. {acc['caption_examples']})\n"
            f"- VQA, prompt `\"{VQA_PROMPTS[0]}\"` (answer format `\"{VQA_ANSWER}\"`, the bare class name): "
            f"**{acc['vqa'] * 100:.1f}%** (e.g. {acc['vqa_examples']})")


# ---- llava-tiny ---------------------------------------------------------------------------
LLAVA_TEXT = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=False)


def train_llava_tiny(out: Path, *, clip_dir: Path, epochs: float | None, seed: int) -> None:
    from transformers import (CLIPImageProcessor, CLIPModel, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)

    from robustbench_mm.models.llava import LlavaAdapter, load_llava
    from robustbench_mm.models.zoo import LoadOptions

    torch.manual_seed(seed)
    epochs = 1.0 if epochs is None else epochs
    if not (Path(clip_dir) / "config.json").exists():
        raise SystemExit(f"llava-tiny needs a trained clip-tiny at {clip_dir}; run --only clip-tiny first")
    clip = CLIPModel.from_pretrained(clip_dir, use_safetensors=True, local_files_only=True)
    tok = lm_tokenizer(["USER: ASSISTANT:"])
    text_cfg = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id, **LLAVA_TEXT)
    image_token_id = tok.convert_tokens_to_ids("<image>")
    cfg = LlavaConfig(vision_config=clip.config.vision_config, text_config=text_cfg, image_token_index=image_token_id,
                      image_seq_length=(IMAGE_SIZE // clip.config.vision_config.patch_size) ** 2 + 1,
                      vision_feature_layer=-1,
                      vision_feature_select_strategy="full", projector_hidden_act="gelu")
    model = LlavaForConditionalGeneration(cfg)
    missing = model.model.vision_tower.load_state_dict(clip.vision_model.state_dict(), strict=True)
    print(f"  vision tower initialised from {clip_dir} ({missing})", flush=True)
    model.model.vision_tower.requires_grad_(False)  # frozen, as in LLaVA: identical to clip-tiny's tower
    tok.chat_template = LLAVA_CHAT_TEMPLATE
    adapter = LlavaAdapter(model, tok, image_size=IMAGE_SIZE, mean=zc.FMNIST_MEAN, std=zc.FMNIST_STD,
                           chat_template=LLAVA_CHAT_TEMPLATE)
    n_params = zc.param_count(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    print(f"  LlavaForConditionalGeneration params {n_params:,} (trainable {sum(p.numel() for p in trainable):,}), "
          f"vocab {len(tok)}; prompt example {adapter.format_prompt(VQA_PROMPTS[0])[:40]!r}...", flush=True)
    secs = train_lm(adapter, trainable, epochs=epochs, seed=seed, batch_size=64, lr=2e-3, subset=TRAIN_SUBSET)

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    image_processor = CLIPImageProcessor.from_pretrained(clip_dir)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok,
                               patch_size=clip.config.vision_config.patch_size,
                               vision_feature_select_strategy="full", num_additional_image_tokens=1,
                               chat_template=LLAVA_CHAT_TEMPLATE)
    processor.save_pretrained(out)
    image_processor.save_pretrained(out)  # also a plain preprocessor_config.json (mean/std for any tool)
    tok.save_pretrained(out)
    adapter = load_llava(str(out), LoadOptions()).eval()
    n_eval = 500
    acc = answer_accuracy(adapter, n_eval)
    print(f"  llava-tiny accuracy on {n_eval} of the slice: caption {acc['caption']:.4f} vqa {acc['vqa']:.4f} "
          f"examples {acc['caption_examples']} {acc['vqa_examples']}", flush=True)
    size = zc.dir_size_mb(out)
    zc.dump_json(out / "train_metrics.json", {"accuracy": acc, "eval_n": n_eval, "train_seconds": secs,
                                               "params": n_params, "epochs": epochs, "seed": seed})
    v = clip.config.vision_config
    zc.write_card(out, "llava-tiny", {
        "Architecture": f"""transformers `LlavaForConditionalGeneration`, {n_params:,} parameters, {size:.2f} MB (fp32 safetensors).
- vision tower: `CLIPVisionModel` copied from clip-tiny (ViT 32px, patch {v.patch_size}, width {v.hidden_size}, {v.num_hidden_layers} layers) and kept frozen, so it is bit-identical to clip-tiny's vision tower; features from the last layer (`vision_feature_layer=-1`) with CLS kept (`vision_feature_select_strategy="full"`): {(IMAGE_SIZE // v.patch_size) ** 2 + 1} visual tokens (llava-1.5 uses layer -2 without CLS; the tiny tower is only 3 layers deep, so the last layer and its CLS carry the class)
- projector: 2-layer GELU MLP {v.hidden_size} -> {LLAVA_TEXT['hidden_size']}
- language model: `LlamaForCausalLM`, width {LLAVA_TEXT['hidden_size']}, {LLAVA_TEXT['num_hidden_layers']} layers, {LLAVA_TEXT['num_attention_heads']} heads, MLP {LLAVA_TEXT['intermediate_size']}
- tokenizer: word-level, lower-casing, {len(tok)} tokens incl. `<image>` (id {image_token_id}); chat template of llava-1.5 (`USER: <image>\\n{{prompt}} ASSISTANT:`); `LlavaProcessor` saved alongside
- preprocessing: `to_model_pixels(images, 32)`, mean {zc.FMNIST_MEAN[0]} / std {zc.FMNIST_STD[0]}""",
        "Training": f"""Projector and language model trained (vision frozen) for {epochs} epoch(s) over the first {TRAIN_SUBSET:,} Fashion-MNIST train images, batch 64, AdamW lr 2e-3 cosine, seed {seed}; teacher-forced NLL of the answer + EOS, through `robustbench_mm.models.llava.LlavaAdapter.lm_loss`.
Each image gets (50/50) a captioning prompt ({', '.join(repr(p) for p in CAPTION_PROMPTS)}) answered `"{CAPTION_ANSWER}"`, or a VQA prompt ({', '.join(repr(p) for p in VQA_PROMPTS)}) answered with the class name.
Augmentation: horizontal flip, +-2 px shift. Measured training time: {secs / 60:.1f} min on this 2-core CPU.""",
        "Evaluation": _card_eval(acc, n_eval),
    })
    print(f"  saved {out} ({size:.2f} MB)", flush=True)


# ---- blip2-tiny ---------------------------------------------------------------------------
# vision encoder shaped like clip-tiny's (width/depth filled in from its config) so it can start from
# those weights (see clip_to_blip2_vision)
BLIP2_VISION = dict(image_size=IMAGE_SIZE, patch_size=4, hidden_act="gelu", qkv_bias=True)
BLIP2_QFORMER = dict(hidden_size=96, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                     cross_attention_frequency=1, vocab_size=64, max_position_embeddings=64)
BLIP2_OPT = dict(hidden_size=128, ffn_dim=384, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=128, word_embed_proj_dim=128, do_layer_norm_before=True)
BLIP2_QUERIES = 8
BLIP2_EPOCHS = 1.5  # shipped weights; --profile quick uses 1.0


def clip_to_blip2_vision(clip_dir: Path, vision) -> None:
    """Initialise a ``Blip2VisionModel`` from clip-tiny's vision tower (then everything is fine-tuned).

    Same ViT layout except that BLIP-2 has no pre-LayerNorm, so the copy is a starting point, not an
    exact equivalent; the K bias (no effect on softmax attention) is copied into the fused qkv bias.
    """
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(clip_dir, use_safetensors=True, local_files_only=True).vision_model
    with torch.no_grad():
        e, ce = vision.embeddings, clip.embeddings
        e.class_embedding.copy_(ce.class_embedding.view_as(e.class_embedding))
        e.patch_embedding.weight.copy_(ce.patch_embedding.weight)
        e.patch_embedding.bias.zero_()
        e.position_embedding.copy_(ce.position_embedding.weight.view_as(e.position_embedding))
        for lb, lc in zip(vision.encoder.layers, clip.encoder.layers):
            a, ac = lb.self_attn, lc.self_attn
            a.qkv.weight.copy_(torch.cat([ac.q_proj.weight, ac.k_proj.weight, ac.v_proj.weight]))
            a.qkv.bias.copy_(torch.cat([ac.q_proj.bias, ac.k_proj.bias, ac.v_proj.bias]))
            a.projection.load_state_dict(ac.out_proj.state_dict())
            lb.layer_norm1.load_state_dict(lc.layer_norm1.state_dict())
            lb.layer_norm2.load_state_dict(lc.layer_norm2.state_dict())
            lb.mlp.fc1.load_state_dict(lc.mlp.fc1.state_dict())
            lb.mlp.fc2.load_state_dict(lc.mlp.fc2.state_dict())
        vision.post_layernorm.load_state_dict(clip.post_layernorm.state_dict())


def train_blip2_tiny(out: Path, *, clip_dir: Path, epochs: float | None, seed: int) -> None:
    from transformers import (BlipImageProcessor, Blip2Config, Blip2ForConditionalGeneration, Blip2Processor,
                              Blip2QFormerConfig, Blip2VisionConfig, OPTConfig)

    from robustbench_mm.models.blip2 import Blip2Adapter, load_blip2
    from robustbench_mm.models.zoo import LoadOptions

    torch.manual_seed(seed)
    epochs = BLIP2_EPOCHS if epochs is None else epochs
    tok = lm_tokenizer(["Question: Answer:"])
    image_token_id = tok.convert_tokens_to_ids("<image>")
    text_cfg = OPTConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, **BLIP2_OPT)
    from transformers import CLIPConfig

    cv = CLIPConfig.from_pretrained(clip_dir, local_files_only=True).vision_config
    vision_kw = dict(BLIP2_VISION, hidden_size=cv.hidden_size, intermediate_size=cv.intermediate_size,
                     num_hidden_layers=cv.num_hidden_layers, num_attention_heads=cv.num_attention_heads,
                     patch_size=cv.patch_size)
    cfg = Blip2Config(vision_config=Blip2VisionConfig(**vision_kw).to_dict(),
                      qformer_config=Blip2QFormerConfig(**BLIP2_QFORMER, encoder_hidden_size=cv.hidden_size).to_dict(), text_config=text_cfg.to_dict(),
                      num_query_tokens=BLIP2_QUERIES, image_token_index=image_token_id)
    model = Blip2ForConditionalGeneration(cfg)
    clip_to_blip2_vision(clip_dir, model.vision_model)
    adapter = Blip2Adapter(model, tok, image_size=IMAGE_SIZE, mean=zc.FMNIST_MEAN, std=zc.FMNIST_STD)
    n_params = zc.param_count(model)
    print(f"  Blip2ForConditionalGeneration params {n_params:,}, vocab {len(tok)}", flush=True)
    secs = train_lm(adapter, list(model.parameters()), epochs=epochs, seed=seed, batch_size=64, lr=1.5e-3,
                    subset=TRAIN_SUBSET)

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    image_processor = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=zc.FMNIST_MEAN,
                                         image_std=zc.FMNIST_STD, resample=2, do_convert_rgb=True)
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tok, num_query_tokens=BLIP2_QUERIES)
    processor.save_pretrained(out)
    image_processor.save_pretrained(out)  # also a plain preprocessor_config.json (mean/std for any tool)
    tok.save_pretrained(out)
    adapter = load_blip2(str(out), LoadOptions()).eval()
    n_eval = 500
    acc = answer_accuracy(adapter, n_eval)
    print(f"  blip2-tiny accuracy on {n_eval} of the slice: caption {acc['caption']:.4f} vqa {acc['vqa']:.4f} "
          f"examples {acc['caption_examples']} {acc['vqa_examples']}", flush=True)
    size = zc.dir_size_mb(out)
    zc.dump_json(out / "train_metrics.json", {"accuracy": acc, "eval_n": n_eval, "train_seconds": secs,
                                               "params": n_params, "epochs": epochs, "seed": seed})
    zc.write_card(out, "blip2-tiny", {
        "Architecture": f"""transformers `Blip2ForConditionalGeneration`, {n_params:,} parameters, {size:.2f} MB (fp32 safetensors).
- vision encoder: `Blip2VisionModel`, ViT 32px, patch {cv.patch_size}, width {cv.hidden_size}, {cv.num_hidden_layers} layers, initialised from clip-tiny's vision tower (no pre-LayerNorm in BLIP-2, so not identical) and fine-tuned
- Q-Former: {BLIP2_QUERIES} learned queries, width {BLIP2_QFORMER['hidden_size']}, {BLIP2_QFORMER['num_hidden_layers']} layers, cross-attention every layer; language projection to {BLIP2_OPT['hidden_size']}
- language model: `OPTForCausalLM`, width {BLIP2_OPT['hidden_size']}, {BLIP2_OPT['num_hidden_layers']} layers, {BLIP2_OPT['num_attention_heads']} heads, FFN {BLIP2_OPT['ffn_dim']}
- input layout (transformers >= 4.47 style): {BLIP2_QUERIES} `<image>` tokens (`image_token_index` {image_token_id}) then BOS and the text; prompts in the BLIP-2 VQA format `Question: {{prompt}} Answer:`
- tokenizer: word-level, lower-casing, {len(tok)} tokens; `Blip2Processor` (num_query_tokens {BLIP2_QUERIES}) saved alongside
- preprocessing: `to_model_pixels(images, 32)`, mean {zc.FMNIST_MEAN[0]} / std {zc.FMNIST_STD[0]}""",
        "Training": f"""All parts trained (vision encoder from the clip-tiny init, the rest from scratch) for {epochs} epoch(s) over the first {TRAIN_SUBSET:,} Fashion-MNIST train images, batch 64, AdamW lr 1.5e-3 cosine, seed {seed}; teacher-forced NLL of the answer + EOS through `robustbench_mm.models.blip2.Blip2Adapter.lm_loss`.
Each image gets (50/50) a captioning prompt ({', '.join(repr(p) for p in CAPTION_PROMPTS)}) answered `"{CAPTION_ANSWER}"`, or a VQA prompt ({', '.join(repr(p) for p in VQA_PROMPTS)}) answered with the class name.
Augmentation: horizontal flip, +-2 px shift. Measured training time: {secs / 60:.1f} min on this 2-core CPU.""",
        "Evaluation": _card_eval(acc, n_eval),
    })
    print(f"  saved {out} ({size:.2f} MB)", flush=True)
