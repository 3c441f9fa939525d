"""Shared pieces of the zoo training scripts: data, augmentation, tokenizer, model cards."""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from robustbench_mm.tasks.bundled import FMNIST_CLASSES, fmnist_eval_arrays, read_raw_fmnist, to_model_pixels

ZOO_DIR = Path(__file__).resolve().parents[1] / "robustbench_mm" / "models" / "zoo"

# Fashion-MNIST pixel statistics (train set, [0,1] scale); the zoo normalises with these.
FMNIST_MEAN = [0.2860, 0.2860, 0.2860]
FMNIST_STD = [0.3530, 0.3530, 0.3530]

# Caption templates used for contrastive training (the eval prompt is the first one).
CAPTION_TEMPLATES = [
    "a photo of a {c}",
    "a picture of a {c}",
    "a {c}",
    "an image of a {c}",
    "a photo of the {c}",
    "a black and white photo of a {c}",
    "a low resolution photo of a {c}",
    "a grayscale image of a {c}",
    "this is a {c}",
    "a close-up photo of a {c}",
    "a product photo of a {c}",
    "a small {c}",
]

SPECIAL = {"pad": "<pad>", "unk": "<unk>", "bos": "<|startoftext|>", "eos": "<|endoftext|>"}


def load_train(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST train split as uint8 images [60000,28,28] and int64 labels."""
    return read_raw_fmnist("train")


def load_eval() -> tuple[np.ndarray, np.ndarray]:
    images, labels, _ = fmnist_eval_arrays()
    return images, labels


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and +-2 px shift of uint8 [N,28,28] (before ``to_model_pixels``)."""
    n = images.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    images = torch.where(flip[:, None, None], images.flip(-1), images)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    dx = torch.randint(0, 5, (n,), generator=gen)
    dy = torch.randint(0, 5, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(28)[None, :])  # [N,28]
    cols = (dx[:, None] + torch.arange(28)[None, :])
    out = padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out


def batches(n: int, batch_size: int, gen: torch.Generator) -> Iterable[torch.Tensor]:
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n - batch_size + 1, batch_size):
        yield perm[i : i + batch_size]


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * p))


def word_vocab(extra_texts: Sequence[str] = (), keep_hyphens: bool = False) -> list[str]:
    """Every word of the caption templates x class names and of ``extra_texts``, in order."""
    from tokenizers import Regex, pre_tokenizers

    if keep_hyphens:
        pre = pre_tokenizers.Split(Regex(r"[\w\-]+|[^\w\s]+"), behavior="removed", invert=True)
    else:
        pre = pre_tokenizers.Whitespace()
    words: list[str] = []
    texts = [t.format(c=c) for t in CAPTION_TEMPLATES for c in FMNIST_CLASSES] + list(extra_texts)
    for text in texts:
        for w, _ in pre.pre_tokenize_str(text.lower()):
            if w not in words:
                words.append(w)
    return words


def build_word_tokenizer(
    words: Sequence[str],
    specials: Sequence[str],
    *,
    bos: str | None,
    eos: str | None,
    pad: str,
    unk: str,
    model_max_length: int,
    padding_side: str = "right",
    extra_special: Sequence[str] = (),
    keep_hyphens: bool = False,
    add_eos: bool = True,
):
    """A lower-casing word-level ``PreTrainedTokenizerFast`` (round-trips through save/load).

    ids: ``specials`` first (in order), then ``extra_special``, then ``words``. A template
    post-processor adds ``bos``/``eos`` when given.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in list(specials) + list(extra_special) + list(words):
        if tok not in vocab:
            vocab[tok] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tk.normalizer = normalizers.Lowercase()
    if keep_hyphens:  # "t-shirt" stays one token, so decoding gives "t-shirt" back
        tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\w\-]+|[^\w\s]+"), behavior="removed", invert=True)
    else:
        tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    single = " ".join(x for x in [f"{bos}:0" if bos else None, "$A:0", f"{eos}:0" if eos and add_eos else None] if x)
    special_pairs = [(t, vocab[t]) for t in (bos, eos if add_eos else None) if t]
    if special_pairs:
        tk.post_processor = processors.TemplateProcessing(single=single, special_tokens=special_pairs)
    kwargs = dict(tokenizer_object=tk, pad_token=pad, unk_token=unk, model_max_length=model_max_length,
                  padding_side=padding_side)
    if bos:
        kwargs["bos_token"] = bos
    if eos:
        kwargs["eos_token"] = eos
    tok = PreTrainedTokenizerFast(**kwargs)
    if extra_special:
        tok.add_special_tokens({"additional_special_tokens": list(extra_special)})
    return tok


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6


def write_card(path: Path, title: str, sections: dict[str, str]) -> None:
    lines = [f"# {title}", "", "Bundled tiny model of mmrobust, trained on Fashion-MNIST by "
             "`scripts/train_zoo.py`. Not a real-world model: it exists so the benchmark runs offline "
             "with genuinely trained weights.", ""]
    for head, body in sections.items():
        lines += [f"## {head}", "", body.strip(), ""]
    lines += ["## Environment", "", f"- measured on: {platform.machine()}, {torch.get_num_threads()} CPU threads, "
              f"torch {torch.__version__}", f"- written: {time.strftime('%Y-%m-%d')}", ""]
    (Path(path) / "MODEL_CARD.md").write_text("\n".join(lines))


def pixels(images_uint8: torch.Tensor | np.ndarray, size: int) -> torch.Tensor:
    return to_model_pixels(images_uint8, size)


def normalize(x: torch.Tensor, mean: Sequence[float] = FMNIST_MEAN, std: Sequence[float] = FMNIST_STD) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def dump_json(path: Path, obj: dict) -> None:
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")


class StopFlag:
    """Truthy after SIGUSR1: lets a long CPU run be cut short and still saved (recorded in the card)."""

    def __init__(self) -> None:
        import signal

        self.stopped = False
        signal.signal(signal.SIGUSR1, self._handler)

    def _handler(self, *_: object) -> None:
        print("  SIGUSR1: stopping after this step", flush=True)
        self.stopped = True

    def __bool__(self) -> bool:
        return self.stopped
