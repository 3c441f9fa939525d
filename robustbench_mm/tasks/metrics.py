"""Text metrics for generative tasks: class-name matching, VQA accuracy, CIDEr-D."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

_PUNCT = re.compile(r"[^\w\s\-]")
_ARTICLES = {"a", "an", "the"}


def normalize_text(text: str) -> str:
    """Lower-case, strip punctuation (keeping hyphens), collapse spaces."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def find_class(text: str, classes: Sequence[str]) -> int:
    """Index of the class named in ``text`` (-1 if none).

    The longest matching name wins and matches are whole words, so ``t-shirt`` is not read
    as ``shirt`` and ``shirts`` is not ``shirt``.
    """
    norm = f" {normalize_text(text)} "
    best, best_len = -1, 0
    for i, name in enumerate(classes):
        n = normalize_text(name)
        if re.search(rf"(?<![\w\-]){re.escape(n)}(?![\w\-])", norm) and len(n) > best_len:
            best, best_len = i, len(n)
    return best


def vqa_normalize(answer: str) -> str:
    """VQA answer normalisation: lower-case, no punctuation, no articles."""
    return " ".join(w for w in normalize_text(answer).split() if w not in _ARTICLES)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy: mean over the 10 leave-one-out subsets of min(#matches / 3, 1)."""
    pred = vqa_normalize(prediction)
    gts = [vqa_normalize(a) for a in answers]
    if not gts:
        return 0.0
    if len(gts) == 1:
        return float(pred == gts[0])
    scores = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1 :]
        scores.append(min(1.0, sum(a == pred for a in others) / 3.0))
    return sum(scores) / len(scores)


def _ngrams(words: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], sigma: float = 6.0) -> list[float]:
    """CIDEr-D per candidate (Vedantam et al. 2015), document frequencies from ``references``.

    TF-IDF n-gram vectors (n = 1..4), clipped candidate counts, Gaussian length penalty,
    averaged over references and n, times 10 (the usual scale; a perfect match on a corpus
    with distinct references scores around 10).
    """
    refs_tok = [[normalize_text(r).split() for r in refs] for refs in references]
    cands_tok = [normalize_text(c).split() for c in candidates]
    n_docs = len(references)
    log_n = math.log(max(1.0, float(n_docs)))
    scores = [0.0] * len(candidates)
    for n in range(1, 5):
        df: Counter[tuple[str, ...]] = Counter()
        for refs in refs_tok:
            df.update({g for r in refs for g in _ngrams(r, n)})

        def vec(words: list[str]) -> tuple[dict[tuple[str, ...], float], float]:
            counts = _ngrams(words, n)
            v = {g: c * (log_n - math.log(max(1.0, float(df[g])))) for g, c in counts.items()}
            return v, math.sqrt(sum(x * x for x in v.values()))

        for i, (cand, refs) in enumerate(zip(cands_tok, refs_tok)):
            vc, nc = vec(cand)
            total = 0.0
            for ref in refs:
                vr, nr = vec(ref)
                dot = sum(min(vc[g], vr[g]) * vr[g] for g in vc if g in vr)  # clipped counts (CIDEr-D)
                if nc > 0 and nr > 0:
                    total += dot / (nc * nr) * math.exp(-((len(cand) - len(ref)) ** 2) / (2 * sigma**2))
            scores[i] += total / max(1, len(refs)) / 4.0
    return [10.0 * s for s in scores]
