"""The masked language model that proposes word substitutes (any ``AutoModelForMaskedLM``), and the
check that a substitute is a word the attacked model's own tokenizer knows."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from robustbench_mm.errors import ConfigError

BUNDLED_MLM = "bundled:caption-mlm"
BUNDLED_MLM_DIR = Path(__file__).resolve().parent / "data" / "caption-mlm"  # scripts/train_caption_mlm.py


def mlm_source(name: str) -> str:
    """Directory or hub id of the masked LM ``name``; ``bundled:caption-mlm`` is the shipped one."""
    return str(BUNDLED_MLM_DIR) if name == BUNDLED_MLM else name


def check_mlm(name: str) -> None:
    """Fail at build time, before any weights load, when the masked LM cannot be found offline or online."""
    from transformers import AutoConfig

    source = mlm_source(name)
    try:
        AutoConfig.from_pretrained(source, local_files_only=Path(source).is_dir())
    except (OSError, ValueError):
        raise ConfigError(f"masked LM {name!r} not found (no local directory or reachable Hugging Face model); "
                          f"set mlm to a directory or hub id of an AutoModelForMaskedLM, or keep the bundled "
                          f"{BUNDLED_MLM}") from None


@lru_cache(maxsize=2)
def load_mlm(name: str) -> tuple[Any, Any]:
    """``(model in eval mode, tokenizer)`` of the masked LM, cached per process."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    source = mlm_source(name)
    local = Path(source).is_dir()
    model = AutoModelForMaskedLM.from_pretrained(source, local_files_only=local).eval()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
    if tokenizer.mask_token_id is None:
        raise ConfigError(f"masked LM {name!r} has no mask token; use an AutoModelForMaskedLM such as bert-base-uncased")
    return model, tokenizer


def mask_predictions(name: str, words: list[str], position: int, top_k: int) -> list[str]:
    """The ``top_k`` whole-word predictions of the masked LM for ``words[position]`` (masked)."""
    model, tok = load_mlm(name)
    masked = words[:position] + [tok.mask_token] + words[position + 1 :]
    enc = tok(" ".join(masked), return_tensors="pt")
    where = (enc["input_ids"][0] == tok.mask_token_id).nonzero().flatten()
    if not len(where):  # truncated away
        return []
    with torch.no_grad():
        logits = model(**enc).logits[0, int(where[0])]
    ids = logits.topk(min(top_k + 8, logits.shape[-1])).indices.tolist()  # room for specials filtered below
    special = set(tok.all_special_ids)
    out = [tok.convert_ids_to_tokens(i) for i in ids if i not in special]
    return [w for w in out if not w.startswith("##")][:top_k]


def victim_tokenizer(model: Any) -> Any:
    """The Hugging Face tokenizer inside the attacked model (open_clip wraps one), or None (BPE without unk)."""
    tok = getattr(model, "tokenizer", None)
    inner = getattr(tok, "tokenizer", None)
    return inner if inner is not None and hasattr(inner, "unk_token_id") else tok


def known_word(model: Any, word: str) -> bool:
    """Whether the attacked model's tokenizer encodes ``word`` without an unknown token: a substitute it
    would read as <unk> is no word to that model."""
    tok = victim_tokenizer(model)
    unk = getattr(tok, "unk_token_id", None)
    if tok is None or unk is None or not callable(getattr(tok, "__call__", None)):
        return True
    ids = tok(word, add_special_tokens=False)["input_ids"]
    return bool(ids) and unk not in ids


def unknown_token(model: Any) -> str:
    """What a masked word becomes when its importance is measured: the attacked tokenizer's unknown token."""
    tok = victim_tokenizer(model)
    return str(getattr(tok, "unk_token", None) or "")
