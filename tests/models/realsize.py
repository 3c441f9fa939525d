"""Real-size model architectures with random weights, written to disk offline for the slow CLI tests.

No weights can be downloaded in CI, so these exercise the real loading and attack paths at the
real shapes: an HF ``CLIPModel`` with the ViT-B/32 configuration and the real CLIP BPE tokenizer
(written from the vocabulary open_clip ships), an open_clip ViT-B-32, and a LLaVA-1.5 architecture
(336 px, patch 14, 576 image tokens, the llava-1.5 chat template) with a two-layer language model.
``fake_hub_cache`` lays a directory out as a Hugging Face cache snapshot, so hub ids resolve offline.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
# the llava-1.5 conversation format: "USER: <image>\n{prompt} ASSISTANT:"
LLAVA15_TEMPLATE = ("{% for message in messages %}{{ message['role'].upper() + ': ' }}"
                    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<image>\n' }}"
                    "{% endif %}{% endfor %}{% for content in message['content'] %}{% if content['type'] == 'text' %}"
                    "{{ content['text'] + ' ' }}{% endif %}{% endfor %}{% endfor %}"
                    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")


def write_clip_bpe_tokenizer(path: Path) -> None:
    """The CLIP BPE tokenizer (49408 tokens) as transformers files, from open_clip's merges file.

    The vocabulary is built the way CLIP's own tokenizer builds it: the 256 byte symbols, the same
    with the end-of-word marker, one token per merge (the first 48894), then start/end of text.
    """
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1: 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    path.mkdir(parents=True, exist_ok=True)
    merge_pairs = [tuple(m.split()) for m in merges]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merge_pairs, model_max_length=77)
    tok.save_pretrained(path)


def write_hf_clip_b32(path: Path) -> None:
    """transformers CLIPModel, ViT-B/32 configuration (the defaults), random weights, CLIP tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig()  # vision: 224 px, patch 32, 12 x 768; text: 12 x 512, 49408 tokens; projection 512
    model = CLIPModel(cfg).eval()
    model.save_pretrained(path, safe_serialization=True)
    write_clip_bpe_tokenizer(path)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                       image_mean=OPENAI_MEAN, image_std=OPENAI_STD).save_pretrained(path)


def write_open_clip_b32(path: Path) -> None:
    """open_clip ViT-B-32 (its own model config), random weights, as a directory open_clip loads."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path.mkdir(parents=True, exist_ok=True)
    cfg = open_clip.get_model_config("ViT-B-32")
    (path / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": cfg,
        "preprocess_cfg": {"size": [224, 224], "mean": OPENAI_MEAN, "std": OPENAI_STD,
                           "interpolation": "bicubic", "resize_mode": "shortest"},
    }))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))


def write_llava15(path: Path, tokenizer_dir: Path) -> None:
    """LLaVA-1.5 architecture: CLIP vision tower at 336 px / patch 14 (576 image tokens, penultimate
    layer, CLS dropped), two-layer MLP projector, a two-layer Llama LM, llava-1.5 chat template.
    The widths are small (CPU seconds); the tokenizer is the bundled llava-tiny one (no Llama
    SentencePiece model can be fetched offline)."""
    import torch
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(image_size=336, patch_size=14, hidden_size=64, intermediate_size=128,
                              num_hidden_layers=3, num_attention_heads=4, projection_dim=64)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                      vision_feature_layer=-2, vision_feature_select_strategy="default",
                      projector_hidden_act="gelu", image_seq_length=576)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).eval().save_pretrained(path, safe_serialization=True)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                         image_mean=OPENAI_MEAN, image_std=OPENAI_STD)
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                   vision_feature_select_strategy="default", chat_template=LLAVA15_TEMPLATE).save_pretrained(path)


def fake_hub_cache(hf_home: Path, repo: str, model_dir: Path, commit: str = "0123456789abcdef0123456789abcdef01234567"
                   ) -> Path:
    """Move ``model_dir`` into ``hf_home/hub`` as the snapshot ``commit`` (= main) of ``repo``."""
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    snap.parent.mkdir(parents=True, exist_ok=True)
    if snap.exists():
        shutil.rmtree(snap)
    shutil.move(str(model_dir), snap)  # moved, not copied: the tests write hundreds of MB
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snap
