"""BERT-Attack-style word substitution (Li et al., EMNLP 2020) on the captions of a retrieval task.

Per caption: rank its words by importance (how much the caption's loss rises when the word is
replaced by the attacked tokenizer's unknown token), skipping stop words; visit them in that order
and, for each, let a masked LM propose ``top_k`` substitutes for the masked word, keep the ones the
attacked model's own tokenizer knows (no unknown token), and take the one with the highest loss if
it beats the current caption. At most ``word_budget`` words change (1 in the retrieval papers).

The caption loss is ``1 - mean_s cos(t(caption), g_s)`` over guiding image features ``g_s``: the
clean image (BERT-Attack, Sep-Attack, Co-Attack) or a set of adversarial image scales (SGA).

textattack has word-swap transformations of this kind, but they rank and search against a
classifier's label through its ``GoalFunction``; our captions have no label, only a similarity to
their image, and the budget is counted in words, so the search is written here (about 60 lines).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from robustbench_mm.attacks.base import ATTACKS, Attack
from robustbench_mm.attacks.masked_lm import BUNDLED_MLM, check_mlm, known_word, mask_predictions, unknown_token
from robustbench_mm.attacks.retrieval_objective import (
    CAPTIONS_KEY, NOT_INTRODUCED_KEY, PROTECTED_KEY, is_retrieval_objective, text_features,
)
from robustbench_mm.errors import CapabilityError, ConfigError
from robustbench_mm.types import AttackResult, Batch, Objective

# Function words no substitution may touch (BERT-Attack's filter list, shortened to the common ones).
STOP_WORDS = frozenset("""a an the this that these those is are was were be been being am of in on at to for from
with by as and or but not no nor so than too very it its it's he she they them their his her we you your i me my
our us there here what which who whom whose when where why how all any both each few more most other some such
only own same can will just do does did has have had into over under again further then once up down out off
""".split())


def check_word_budget(word_budget: int) -> None:
    if isinstance(word_budget, bool) or not isinstance(word_budget, int) or word_budget < 0:
        raise ConfigError(f"word_budget={word_budget!r} must be an integer >= 0 (changed words per caption)")


def caption_loss(model: Any, texts: Sequence[str], guide: Tensor) -> Tensor:
    """``1 - mean_s cos(t, guide_s)`` per text ``[T]``; ``guide`` ``[S,D]`` unit image features."""
    feats = text_features(model, texts).to(guide.device)
    return 1 - (feats @ guide.float().T).mean(dim=1)


@lru_cache(maxsize=4096)
def _proposals(mlm: str, words: tuple[str, ...], position: int, top_k: int) -> tuple[str, ...]:
    return tuple(mask_predictions(mlm, list(words), position, top_k))


def substitute_caption(model: Any, caption: str, guide: Tensor, *, word_budget: int, top_k: int, mlm: str,
                       protected: frozenset[str] = frozenset(), not_introduced: frozenset[str] = frozenset()) -> str:
    """``caption`` with at most ``word_budget`` words substituted to raise its loss against ``guide``;
    stop words and ``protected`` words (lower case) are never replaced, nor ``protected`` ones introduced;
    ``not_introduced`` words may be replaced but never become a substitute."""
    return substitute_words(model, caption, lambda texts: caption_loss(model, texts, guide), word_budget=word_budget,
                            top_k=top_k, mlm=mlm, protected=protected, not_introduced=not_introduced)


def substitute_words(model: Any, text: str, loss_of: Callable[[list[str]], Tensor], *, word_budget: int, top_k: int,
                     mlm: str, protected: frozenset[str] = frozenset(),
                     not_introduced: frozenset[str] = frozenset()) -> str:
    """The BERT-Attack search on any text whose loss ``loss_of(texts) -> [T]`` the attacker raises (a
    caption against its image, a prompt against its answer); the word rules of ``substitute_caption``."""
    stop_words = STOP_WORDS | protected
    refused = stop_words | not_introduced
    words = text.split()
    positions = [i for i, w in enumerate(words) if w.lower() not in stop_words]
    if word_budget == 0 or not positions:
        return text
    base = float(loss_of([text])[0])
    unk = unknown_token(model)
    masked = [" ".join(words[:i] + ([unk] if unk else []) + words[i + 1 :]) for i in positions]
    importance = loss_of(masked) - base
    order = [positions[j] for j in importance.argsort(descending=True).tolist()]
    current, current_loss, changed = list(words), base, 0
    for pos in order:
        if changed >= word_budget:
            break
        candidates = [w for w in _proposals(mlm, tuple(current), pos, top_k)
                      if w.lower() != words[pos].lower() and w.lower() not in refused and known_word(model, w)]
        if not candidates:
            continue
        texts = [" ".join(current[:pos] + [w] + current[pos + 1 :]) for w in candidates]
        losses = loss_of(texts)
        best = int(losses.argmax())
        if float(losses[best]) > current_loss:
            current[pos], current_loss, changed = candidates[best], float(losses[best]), changed + 1
    return " ".join(current)


def substitute_captions(model: Any, batch: Batch, guides: Tensor, *, word_budget: int, top_k: int,
                        mlm: str) -> list[list[str]]:
    """Every caption of every row of ``batch`` attacked against its row's guide features ``guides`` ``[B,S,D]``."""
    captions: list[list[str]] = batch.extra[CAPTIONS_KEY]  # type: ignore[assignment]
    protected = frozenset(batch.extra.get(PROTECTED_KEY, frozenset()))  # type: ignore[arg-type]
    not_introduced = frozenset(batch.extra.get(NOT_INTRODUCED_KEY, frozenset()))  # type: ignore[arg-type]
    return [[substitute_caption(model, c, guides[i], word_budget=word_budget, top_k=top_k, mlm=mlm,
                                protected=protected, not_introduced=not_introduced) for c in caps]
            for i, caps in enumerate(captions)]


def check_retrieval(name: str, objective: Objective) -> None:
    if not is_retrieval_objective(objective):
        raise CapabilityError(f"attack {name or 'bert-attack'!r} substitutes caption words and needs a retrieval "
                              f"task, e.g. --task fmnist-retrieval with a CLIP model")


@ATTACKS.register("bert-attack")
class BertAttack(Attack):
    """Text-only word substitution against the clean image; pixels unchanged.

    Args:
        word_budget: most words changed per caption (0 leaves captions as they are).
        top_k: masked-LM substitutes tried per word.
        mlm: masked LM directory or hub id (any ``AutoModelForMaskedLM``); ``bundled:caption-mlm`` ships.
        seed: unused by the search (deterministic), kept for the common attack interface.
    """

    def __init__(self, *, word_budget: int = 1, top_k: int = 10, mlm: str = BUNDLED_MLM, seed: int = 0) -> None:
        check_word_budget(word_budget)
        if top_k <= 0:
            raise ConfigError(f"top_k={top_k} must be a positive integer")
        check_mlm(mlm)
        self.word_budget, self.top_k, self.mlm, self.seed = word_budget, top_k, mlm, seed
        self.norm, self.eps = None, None  # the pixels stay as they are (the guard checks it)

    def check_task(self, objective: Objective, capabilities: frozenset[str]) -> None:
        check_retrieval(self.name, objective)

    def perturb(self, model: Any, batch: Batch, objective: Objective, *, generator: torch.Generator) -> AttackResult:
        check_retrieval(self.name, objective)
        guides = clean_guides(model, batch.pixels)
        texts = substitute_captions(model, batch, guides, word_budget=self.word_budget, top_k=self.top_k,
                                    mlm=self.mlm)
        return AttackResult(batch.pixels.clone(), objective(model, batch.pixels, batch).detach(), 0, texts=texts)

    def describe(self) -> dict[str, Any]:
        return {"norm": "words", "eps": float(self.word_budget), "steps": 0}


def clean_guides(model: Any, pixels: Tensor) -> Tensor:
    """Unit clean image features as one-element guide sets ``[B,1,D]``."""
    with torch.no_grad():
        return torch.nn.functional.normalize(model.encode_image(pixels).float(), dim=-1).unsqueeze(1)
