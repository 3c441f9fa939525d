"""VQA accuracy against the official VQAv2 rules, CIDEr-D against pycocoevalcap, prompts as data.

Expected VQA values are worked out by hand from the rules of the official evaluation
(GT-Vision-Lab/VQA, vqaEval.py); docs/metrics.md lists every case.
"""

from __future__ import annotations

import random
import shutil

import pytest

from robustbench_mm.tasks.metrics import (
    CiderCorpus,
    caption_tokens,
    cider_d,
    contains_target,
    vqa_accuracy,
    vqa_digits_articles,
    vqa_normalize,
    vqa_punctuation,
    vqa_submission_answer,
)


def split(k: int, answer: str, other: str = "zzz") -> list[str]:
    """Ten annotators: ``k`` give ``answer``, the rest ``other``."""
    return [answer] * k + [other] * (10 - k)


# ---- leave-one-out average -------------------------------------------------------------------
@pytest.mark.parametrize("k,expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_leave_one_out_over_ten_annotators(k: int, expected: float) -> None:
    # k matching annotators: each of them sees k-1 matches among the other nine, the rest see k
    assert vqa_accuracy("red", split(k, "red", "blue")) == pytest.approx(expected, abs=1e-12)


def test_equal_answers_are_distinct_annotators_and_nothing_is_empty() -> None:
    assert vqa_accuracy("2", ["2", "2", "3", "4", "5", "6", "7", "8", "9", "10"]) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        vqa_accuracy("x", [])


# ---- processing runs only when the annotators disagree --------------------------------------
def test_unanimous_answers_are_compared_without_processing() -> None:
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0  # no lower-casing when unanimous
    assert vqa_accuracy("two", ["2"] * 10) == 0.0  # no number words either
    assert vqa_accuracy("yes.", ["yes"] * 10) == 0.0  # nor punctuation
    assert vqa_accuracy(" yes\n", ["yes"] * 10) == 1.0  # whitespace is always stripped
    assert vqa_accuracy("big\tdog", ["big dog"] * 10) == 1.0  # tabs/newlines become spaces
    # one dissenting annotator switches processing on for everyone
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0


# ---- numbers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("pred,answers,expected", [
    ("two", split(3, "2", "3"), 0.9),
    ("Two", split(5, "2", "two"), 1.0),  # both sides map to "2": all ten match
    ("none", split(4, "0", "1"), 1.0),  # "none" is a number word (0)
    ("zero", split(2, "0", "1"), 0.6),
    ("ten", split(1, "10", "1"), 0.3),
    ("twenty", split(5, "20", "2"), 0.0),  # only zero..ten are mapped
    ("2 dogs", split(3, "two dogs", "dogs"), 0.9),  # every word is mapped
])
def test_number_words(pred: str, answers: list[str], expected: float) -> None:
    assert vqa_accuracy(pred, answers) == pytest.approx(expected)


# ---- contractions ------------------------------------------------------------------------------
@pytest.mark.parametrize("pred,answers,expected", [
    ("dont", split(2, "don't", "no"), 0.6),
    ("don't", split(3, "dont", "no"), 0.9),
    ("isnt", split(4, "isn't", "is"), 1.0),
    ("thats right", split(3, "that's right", "no"), 0.9),
    ("Im", split(3, "i'm", "no"), 0.0),  # capitalised keys of the table never match after lower-casing
])
def test_contractions(pred: str, answers: list[str], expected: float) -> None:
    assert vqa_accuracy(pred, answers) == pytest.approx(expected)


def test_contraction_table_quirks_are_official() -> None:
    assert vqa_digits_articles("somebody'd") == "somebodyd"  # the table maps it this way round
    assert vqa_digits_articles("oclock") == "o'clock"
    assert vqa_digits_articles("whos there") == "who's there"
    assert vqa_digits_articles("Im") == "im"


# ---- punctuation (incl. hyphens, commas between digits, periods) -------------------------------
@pytest.mark.parametrize("text,expected", [
    ("t-shirt", "t shirt"),  # no space next to the hyphen: it becomes a space
    ("ice - cream", "ice  cream"),  # a hyphen touching a space is deleted
    ("well-known - yes", "wellknown  yes"),  # ... and then every hyphen in the text is deleted
    ("1,000", "1000"),  # comma between digits: every listed character is deleted
    ("1,000 (approx)", "1000 approx"),
    ("a,b", "a b"),
    ("red, white", "red white"),
    ("yes.", "yes"),
    ("3.5", "3.5"),  # a period before a digit stays
    ("3.", "3"),
    ("mr. smith", "mr smith"),
    ("e.g.", "eg"),
    ("10:30", "10:30"),  # colons and apostrophes are not punctuation here
    ("man's", "man's"),
    ("100%", "100%"),  # nor %, #, $, &, *
    ("what?!", "what  "),
    ("(yes)", " yes "),
    ("a/b", "a b"),
    ("x." * 33, "x" * 33 + "."),  # the official code deletes at most 32 periods
])
def test_punctuation(text: str, expected: str) -> None:
    assert vqa_punctuation(text) == expected


@pytest.mark.parametrize("pred,answers,expected", [
    ("t-shirt", split(3, "t shirt", "shirt"), 0.9),
    ("ice - cream", split(4, "ice cream", "cake"), 1.0),
    ("1,000", split(3, "1000", "100"), 0.9),
    ("3.5", split(3, "35", "3"), 0.0),
    ("yes.", split(3, "yes", "no"), 0.9),
    ("yes!", split(2, "yes", "no"), 0.6),
])
def test_punctuation_in_accuracy(pred: str, answers: list[str], expected: float) -> None:
    assert vqa_accuracy(pred, answers) == pytest.approx(expected)


# ---- articles ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("the dog", "dog"), ("A Dog", "dog"), ("an apple", "apple"), ("theater", "theater"),
    ("a", ""), ("on the table", "on table"), ("The  Two   Cats", "2 cats"),
])
def test_articles_case_and_spaces(text: str, expected: str) -> None:
    assert vqa_normalize(text) == expected


def test_articles_in_accuracy() -> None:
    assert vqa_accuracy("the dog", split(2, "dog", "cat")) == pytest.approx(0.6)
    assert vqa_accuracy("A red car", split(3, "red car", "car")) == pytest.approx(0.9)


# ---- the submission-side processing (LLaVA-1.5 / lmms-eval) ------------------------------------
@pytest.mark.parametrize("output,expected", [
    ("Yes", "yes"), ("Two dogs, running?", "2 dogs running"), ("The man's hat.", "man 's hat"),
    ("1,000", "1000"), ("  No\n", "no"), ("T-shirt", "t shirt"),
])
def test_submission_answer(output: str, expected: str) -> None:
    assert vqa_submission_answer(output) == expected


def test_vqa_task_scores_submission_answers() -> None:
    from robustbench_mm.tasks.generative import VQA

    task = VQA(dataset="disk:/nowhere", prompt="{question}", question_column="question")
    assert task.answer_score("Yes", ["yes"] * 10) == 1.0  # the raw scorer would say 0 (unanimous)
    assert task.answer_score("Two.", split(3, "2", "3")) == pytest.approx(0.9)
    assert task.answer_score("the dog", ["dog"]) == 1.0  # one reference: exact match after processing
    raw = VQA(dataset="disk:/nowhere", prompt="{question}", question_column="question", answer_processing="none")
    assert raw.answer_score("Yes", ["yes"] * 10) == 0.0


# ---- targeted success --------------------------------------------------------------------------
@pytest.mark.parametrize("output,target,hit", [
    ("A DOG.", "dog", True), ("I see a dog here", "a dog", True), ("hotdog", "dog", False),
    ("dogs", "dog", False), ("t-shirt", "shirt", False), ("a t-shirt!", "t-shirt", True), ("", "dog", False),
    ("dog", "", False),
])
def test_contains_target(output: str, target: str, hit: bool) -> None:
    assert contains_target(output, target) is hit


# ---- CIDEr-D parity with pycocoevalcap ---------------------------------------------------------
WORDS = ("a man woman dog cat riding sitting on the of with red blue street table bike horse two "
         "people standing next to in front field grass plate food white black small large").split()


def _captions(seed: int, n_images: int) -> tuple[list[str], list[list[str]]]:
    """Captions generated from a fixed vocabulary: references, and candidates that copy, shuffle,
    truncate or extend one of them, or are unrelated (so every n-gram order and the length penalty matter)."""
    rng = random.Random(seed)
    refs, cands = [], []
    for _ in range(n_images):
        r = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(rng.randint(1, 5))]
        base = rng.choice(r).split()
        kind = rng.randrange(5)
        if kind == 4:  # unrelated caption
            base = [rng.choice(WORDS) for _ in range(rng.randint(2, 10))]
        elif kind == 1:
            rng.shuffle(base)
        elif kind == 2:
            base = base[: max(1, len(base) // 2)]
        elif kind == 3:
            base = base + [rng.choice(WORDS) for _ in range(rng.randint(1, 6))]
        refs.append(r)
        cands.append(" ".join(base))
    return cands, refs


def _reference_cider(cands: list[str], refs: list[list[str]]) -> list[float]:
    from pycocoevalcap.cider.cider import Cider  # the COCO caption evaluation's CIDEr-D

    _, per_image = Cider().compute_score({i: r for i, r in enumerate(refs)}, {i: [c] for i, c in enumerate(cands)})
    return [float(v) for v in per_image]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cider_d_matches_pycocoevalcap(seed: int) -> None:
    cands, refs = _captions(seed, 60)
    ours, ref = cider_d(cands, refs), _reference_cider(cands, refs)
    assert max(ref) > 1.0 and min(ref) < 0.5  # the set spans good and bad captions
    assert ours == pytest.approx(ref, abs=1e-6)


def test_cider_d_with_split_document_frequencies_matches_reference_on_the_split() -> None:
    # a task scores a batch with the whole split's document frequencies: the same per-image
    # numbers pycocoevalcap gives when it evaluates the whole split
    cands, refs = _captions(7, 80)
    full = _reference_cider(cands, refs)
    corpus = CiderCorpus.from_references(refs)
    for lo, hi in ((0, 5), (30, 31), (50, 80)):
        assert cider_d(cands[lo:hi], refs[lo:hi], corpus=corpus) == pytest.approx(full[lo:hi], abs=1e-6)
    # without the split's frequencies a small batch scores differently (why the task uses them)
    assert cider_d(cands[:5], refs[:5]) != pytest.approx(full[:5], abs=1e-6)


RAW_REFS = [
    ["A dog's toy, on the T-shirt.", "Two men don't ride bikes!", "A man -- riding a horse ... in the field"],
    ["It's a cat's bed; they're here", "A 3.5-inch screen, 1,000 dollars", 'a "quoted" word: yes?'],
    ["the dogs' bowls", "I'm sure we'll see what you've done, I'd say", "A man can't stand"],
    ["50% off & $5 deals", "A bus at 10:30 pm.", "A woman's umbrella is red-and-white."],
    ["People walking down a busy street.", "An 'old' car", "ice - cream cones"],
    ["A well-known man's son-in-law", "O'Neil's bar", "A cat, a dog, and a bird."],
]
RAW_CANDS = ["A dog's T-shirt.", "A cat's bed, here.", "Men can't stand!", "A woman's red-and-white umbrella.",
             "People on a street...", "O'Neil's son-in-law, a well-known man."]


def test_caption_tokens_cut_like_the_ptb_tokenizer() -> None:
    assert caption_tokens("A dog's toy, on the T-shirt.") == "a dog 's toy on the t-shirt".split()
    assert caption_tokens("Two men don't ride bikes!") == "two men do n't ride bikes".split()
    assert caption_tokens("A 3.5-inch screen, 1,000 dollars at 10:30") == \
        "a 3.5-inch screen 1,000 dollars at 10:30".split()
    assert caption_tokens("50% off & $5 deals -- 'old' ice - cream") == "50 % off & $ 5 deals old ice cream".split()
    assert caption_tokens("O'Neil's bar") == ["o'neil", "'s", "bar"]


def test_cider_d_matches_the_full_coco_pipeline_on_raw_captions() -> None:
    """pycocoevalcap end to end (PTB tokenizer in Java, then CIDEr-D) on captions with punctuation,
    clitics, hyphens and numbers."""
    if shutil.which("java") is None:
        pytest.fail("java not found: pycocoevalcap's PTB tokenizer needs it (apt-get install default-jre-headless; "
                    ".ci/run installs it)")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(RAW_REFS)})
    res = tok.tokenize({i: [{"caption": c}] for i, c in enumerate(RAW_CANDS)})
    assert [gts[i] for i in range(len(RAW_REFS))] == [[" ".join(caption_tokens(r)) for r in refs]
                                                       for refs in RAW_REFS]
    from pycocoevalcap.cider.cider import Cider

    _, ref = Cider().compute_score(gts, res)
    ours = cider_d(RAW_CANDS, RAW_REFS)
    assert max(ours) > 0.5 and ours == pytest.approx([float(v) for v in ref], abs=1e-6)
