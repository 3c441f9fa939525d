"""Train the bundled masked language model that proposes word substitutes to ``bert-attack``.

A two-layer ``BertForMaskedLM`` with a whole-word vocabulary: every word of the bundled captions
(the ``fmnist-retrieval`` templates x Fashion-MNIST class names, and every caption of
``fmnist-captions-retrieval``: its templates x classes x attribute words), so it runs offline and
fits in the package (about 100 KB).
Training: each step masks one random word of each sampled caption and predicts it (masked-LM
cross-entropy), so at each position it learns which caption words fit there.

Usage: ``python scripts/train_caption_mlm.py [--out DIR] [--steps N] [--seed S]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import yaml  # noqa: E402
from zoo_common import CAPTION_TEMPLATES  # noqa: E402

from robustbench_mm.attacks.masked_lm import BUNDLED_MLM_DIR  # noqa: E402
from robustbench_mm.tasks.bundled import FMNIST_CLASSES  # noqa: E402
from robustbench_mm.tasks.caption_attributes import every_caption  # noqa: E402

ATTRIBUTE_TASK = ROOT / "tasks" / "fmnist-captions-retrieval.yaml"

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def captions() -> list[str]:
    """The class-name template captions, then the attribute captions (the new words get new ids)."""
    attribute_templates = yaml.safe_load(ATTRIBUTE_TASK.read_text())["params"]["templates"]
    return ([t.format(c=c) for t in CAPTION_TEMPLATES for c in FMNIST_CLASSES]
            + every_caption(attribute_templates, FMNIST_CLASSES))


def build_tokenizer(texts: list[str]):  # type: ignore[no-untyped-def]
    """Whole-word BERT-style tokenizer: one token per whitespace-separated word ("t-shirt" stays one)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for text in texts:
        for word in text.lower().split():
            vocab.setdefault(word, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=16)


def train(out: Path, steps: int, seed: int) -> dict[str, float]:
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    texts = captions()
    tok = build_tokenizer(texts)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=16, type_vocab_size=1,
                     pad_token_id=tok.pad_token_id)
    model = BertForMaskedLM(cfg)
    enc = tok(texts, padding=True, return_tensors="pt")
    ids, attn = enc["input_ids"], enc["attention_mask"]
    words = attn.sum(dim=1) - 2  # tokens between [CLS] and [SEP]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    start, loss = time.time(), torch.tensor(0.0)
    for _ in range(steps):
        rows = torch.randint(0, len(texts), (64,), generator=gen)
        pos = 1 + (torch.rand(64, generator=gen) * words[rows]).long()  # one word per caption, uniform
        inputs, labels = ids[rows].clone(), torch.full_like(ids[rows], -100)
        labels[torch.arange(64), pos] = inputs[torch.arange(64), pos]
        inputs[torch.arange(64), pos] = tok.mask_token_id
        loss = model(input_ids=inputs, attention_mask=attn[rows], labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    metrics = {"final_mlm_loss": round(float(loss.detach()), 4), "steps": steps, "seed": seed,
               "captions": len(texts), "vocab": len(tok), "train_s": round(time.time() - start, 1)}
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BUNDLED_MLM_DIR)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(train(args.out, args.steps, args.seed)))


if __name__ == "__main__":
    main()
