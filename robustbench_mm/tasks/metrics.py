"""Text metrics for generative tasks: class-name matching, VQA accuracy, CIDEr-D.

VQA accuracy follows the official VQAv2 evaluation rules (answer processing and the
leave-one-out average over annotators); CIDEr-D follows the COCO caption evaluation
(pycocoevalcap), and ``tests/tasks/test_official_metrics.py`` holds both to the reference.
docs/metrics.md states every rule and the cases the tests check.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

_PUNCT = re.compile(r"[^\w\s\-]")


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


def contains_target(output: str, target: str) -> bool:
    """Targeted-attack success test: ``target`` occurs in ``output`` as a whole-word sequence
    after ``normalize_text`` on both (case, punctuation other than hyphens, and spacing are
    ignored), so "A DOG." contains "dog" but "hotdog" and "dogs" do not. An empty target never hits."""
    t = normalize_text(target)
    return bool(t) and f" {t} " in f" {normalize_text(output)} "


# ---- VQA accuracy (official VQAv2 rules) --------------------------------------------------------
# The tables below are data of the official evaluation: the contraction table (keys are the
# spellings without apostrophe that annotators and models write), number words, articles and the
# characters treated as punctuation. Keys with capitals never match (words are lower-cased first);
# they are kept so the table is the official one.
VQA_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
VQA_NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
VQA_ARTICLES = frozenset({"a", "an", "the"})
# Apostrophes, colons and periods are not in the list (periods have their own rule).
VQA_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
                   ",", "?", "!")
_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The official code passes re.UNICODE (= 32) where Pattern.sub takes ``count``: at most 32
# periods are removed from one answer. Kept, so long answers score as they do officially.
_PERIOD_LIMIT = 32


def vqa_punctuation(text: str) -> str:
    """The official punctuation step.

    Each listed character is deleted when it touches a space somewhere in the text (``"ice - cream"``)
    or when the text has a comma between two digits anywhere (``"1,000"``), and replaced by a space
    otherwise (``"t-shirt"`` -> ``"t shirt"``). The decision looks at the input text, per character.
    Then every period not followed by a digit is deleted (``"3.5"`` keeps its period).
    """
    drop_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for ch in VQA_PUNCTUATION:
        touches_space = f"{ch} " in text or f" {ch}" in text
        out = out.replace(ch, "" if drop_all or touches_space else " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_PERIOD_LIMIT)


def vqa_digits_articles(text: str) -> str:
    """The official word step: lower-case, split on whitespace, number words to digits, articles
    dropped, then contractions written with their apostrophe; words joined by single spaces."""
    words = [VQA_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(VQA_CONTRACTIONS.get(w, w) for w in words if w not in VQA_ARTICLES)


def vqa_normalize(answer: str) -> str:
    """Punctuation step then word step (what the official evaluation applies to an answer)."""
    return vqa_digits_articles(vqa_punctuation(answer))


def _vqa_whitespace(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one answer, exactly as the official VQAv2 evaluation computes it.

    Newlines and tabs become spaces and the ends are stripped on every string. The full answer
    processing (``vqa_normalize``) runs only when the annotators disagree (more than one distinct
    answer); with unanimous annotators the prediction is compared as it is, case included. Then,
    for each annotator in turn, the share min(#other annotators giving the prediction / 3, 1),
    averaged over the annotators (annotators are distinct even when their answers are equal).
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    gts = [_vqa_whitespace(a) for a in answers]
    pred = _vqa_whitespace(prediction)
    if len(set(gts)) > 1:
        gts = [vqa_normalize(a) for a in gts]
        pred = vqa_normalize(pred)
    hits = [g == pred for g in gts]
    total = sum(hits)
    return sum(min(1, float(total - h) / 3) for h in hits) / len(gts)


def vqa_submission_answer(output: str) -> str:
    """The answer processing LLaVA-1.5's and lmms-eval's VQAv2 scripts apply to a model output
    before it is scored (the EvalAI answer processor): lower-case, commas and question marks
    deleted, ``'s`` split off (``"man's"`` -> ``"man 's"``), whitespace as above, then the
    punctuation step and the word step."""
    text = output.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return vqa_normalize(_vqa_whitespace(text))


# ---- CIDEr-D ----------------------------------------------------------------------------------
_CLITIC = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'m|'d)(?![\w'])")
# words (hyphenated words and digit groups such as 3.5 and 1,000 stay whole), split-off clitics,
# and the symbols the PTB tokenizer keeps as tokens; everything else is dropped
_CAPTION_TOKEN = re.compile(r"n't|'s|'re|'ve|'ll|'m|'d|\d+(?:[.,:]\d+)+(?:-\w+)*|\w+(?:['-]\w+)*|[&$%#@*+=~^|<>]")


def caption_tokens(text: str) -> list[str]:
    """Caption words for CIDEr-D, the way pycocoevalcap's PTB tokenizer (Java) cuts them:
    lower-case; clitics split off (``man's`` -> ``man 's``, ``don't`` -> ``do n't``); hyphenated
    words, inner apostrophes and digit groups kept whole (``t-shirt``, ``o'neil``, ``3.5-inch``,
    ``1,000``, ``10:30``); punctuation (``. , ? ! : ; ' " -- ...``) dropped; ``& $ %`` and similar
    symbols are tokens. Known differences: PTB keeps abbreviation periods (``mr.``, ``e.g.``),
    quoted single letters (``'n'``), and writes brackets as ``-lrb-``/``-rrb-`` tokens; here they
    are dropped."""
    return _CAPTION_TOKEN.findall(_CLITIC.sub(r" \1", text.lower()))


def _ngrams(words: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


@dataclass(frozen=True)
class CiderCorpus:
    """Document frequencies of CIDEr-D: for each n-gram (n = 1..4), the number of images whose
    references contain it, and the number of images. pycocoevalcap takes them from the evaluated
    set; a task takes them from every image of its split, so a caption's score does not depend on
    which other images share its batch or sample."""

    df: Counter[tuple[str, ...]]
    n_docs: int

    @classmethod
    def from_references(cls, references: Sequence[Sequence[str]]) -> "CiderCorpus":
        return cls.from_tokens([[caption_tokens(r) for r in refs] for refs in references])

    @classmethod
    def from_tokens(cls, references: Sequence[Sequence[list[str]]]) -> "CiderCorpus":
        df: Counter[tuple[str, ...]] = Counter()
        for refs in references:
            df.update({g for r in refs for n in range(1, 5) for g in _ngrams(r, n)})
        return cls(df=df, n_docs=len(references))


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]], sigma: float = 6.0,
            corpus: CiderCorpus | None = None) -> list[float]:
    """CIDEr-D per candidate (Vedantam et al. 2015) as pycocoevalcap computes it.

    TF-IDF n-gram vectors (n = 1..4, idf ``log(N) - log(max(1, df))``), candidate counts clipped
    by the reference counts, Gaussian length penalty (sigma 6), cosine averaged over references
    and over n, times 10. Document frequencies come from ``corpus`` (default: ``references``).
    """
    return cider_d_tokens([caption_tokens(c) for c in candidates],
                          [[caption_tokens(r) for r in refs] for refs in references], sigma, corpus)


def cider_d_tokens(candidates: Sequence[list[str]], references: Sequence[Sequence[list[str]]],
                   sigma: float = 6.0, corpus: CiderCorpus | None = None) -> list[float]:
    """``cider_d`` on captions already split into words."""
    corpus = corpus or CiderCorpus.from_tokens(references)
    log_n = math.log(max(1.0, float(corpus.n_docs)))
    df = corpus.df

    def vec(words: list[str], n: int) -> tuple[dict[tuple[str, ...], float], float]:
        v = {g: c * (log_n - math.log(max(1.0, float(df[g])))) for g, c in _ngrams(words, n).items()}
        return v, math.sqrt(sum(x * x for x in v.values()))

    scores = []
    for cand, refs in zip(candidates, references):
        total = 0.0
        for n in range(1, 5):
            vc, nc = vec(cand, n)
            for ref in refs:
                vr, nr = vec(ref, n)
                dot = sum(min(x, vr[g]) * vr[g] for g, x in vc.items() if g in vr)  # clipped counts (CIDEr-D)
                if nc > 0 and nr > 0:
                    total += dot / (nc * nr) * math.exp(-((len(cand) - len(ref)) ** 2) / (2 * sigma**2)) / 4.0
        scores.append(10.0 * total / max(1, len(refs)))
    return scores
