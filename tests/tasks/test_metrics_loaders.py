"""Metrics, ASR definitions and dataset loaders of the tasks (real on-disk formats, no mocks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_mm.errors import ConfigError
from robustbench_mm.tasks.generative import VQA, Captioning
from robustbench_mm.tasks.metrics import cider_d, find_class, vqa_accuracy
from robustbench_mm.tasks.zero_shot import ZeroShotClassification

CLASSES = ["t-shirt", "trouser", "shirt", "ankle boot", "bag"]


@pytest.mark.parametrize("text,expected", [
    ("a photo of a t-shirt", 0), ("shirt", 2), ("Shirt.", 2), ("an ankle boot!", 3), ("shirts", -1),
    ("a bag and nothing else", 4), ("nothing", -1), ("trouser", 1), ("t-shirt or shirt", 0),
])
def test_find_class_whole_words_longest_wins(text: str, expected: int) -> None:
    assert find_class(text, CLASSES) == expected


def test_vqa_accuracy_standard_rule() -> None:
    answers = ["yes"] * 3 + ["no"] * 7
    assert vqa_accuracy("Yes", answers) == pytest.approx(np.mean([min(1, (3 - (i < 3)) / 3) for i in range(10)]))
    assert vqa_accuracy("no", answers) == 1.0
    assert vqa_accuracy("maybe", answers) == 0.0
    # a single reference is unanimous: the official scorer compares it unprocessed, and a lone
    # annotator has no other annotator to agree with, so even the exact answer scores 0
    assert vqa_accuracy("dog", ["dog"]) == 0.0


def test_cider_orders_captions() -> None:
    refs = [["a dog runs on the grass", "a brown dog running"], ["a cat sleeps on a sofa", "a sleeping cat"],
            ["two people ride bikes", "cyclists on a road"]]
    exact = cider_d(["a dog runs on the grass", "a cat sleeps on a sofa", "two people ride bikes"], refs)
    wrong = cider_d(["a cat sleeps on a sofa", "two people ride bikes", "a dog runs on the grass"], refs)
    assert all(e > 1.0 for e in exact) and all(w < e for w, e in zip(wrong, exact))
    assert cider_d([""], [["a dog"]]) == [0.0]


def _bundled_vqa() -> VQA:
    from robustbench_mm.tasks.bundled import FMNIST_CLASSES

    t = VQA(classes=tuple(FMNIST_CLASSES))
    t.name = "fmnist-vqa"
    return t


def test_untargeted_and_targeted_asr_definitions() -> None:
    task = _bundled_vqa()
    batch = task.load_examples([0, 1, 2, 3], 32)
    names = [task.classes[int(y)] for y in batch.labels]
    clean_ok = task.correct(batch, names)
    assert clean_ok.all()
    adv = [names[0], "something else", names[2], batch.targets[3]]  # type: ignore[index]
    success = task.success(batch, clean_ok, adv)
    assert success.tolist() == [False, True, False, True]
    hit = task.targeted_success(batch, adv)
    assert hit.tolist() == [False, False, False, True]
    # a sample the clean model got wrong never counts as an attack success
    assert not task.success(batch, torch.tensor([False] * 4), adv).any()
    assert all(t != n for t, n in zip(batch.targets, names))  # type: ignore[arg-type]


def test_zero_shot_targets_never_true_class() -> None:
    from robustbench_mm.tasks.bundled import FMNIST_CLASSES

    task = ZeroShotClassification(classes=tuple(FMNIST_CLASSES))
    batch = task.load_examples(list(range(50)), 32)
    assert batch.pixels.shape == (50, 3, 32, 32) and 0 <= float(batch.pixels.min()) <= float(batch.pixels.max()) <= 1
    assert (batch.targets != batch.labels).all()  # type: ignore[operator]


def _save_vqav2_like(root: Path) -> Path:
    import datasets

    imgs = [(np.random.RandomState(i).rand(40, 50, 3) * 255).astype(np.uint8) for i in range(4)]
    answers = [[{"answer": "yes", "answer_confidence": "yes", "answer_id": j} for j in range(10)] for _ in range(4)]
    ds = datasets.Dataset.from_dict(
        {"image": imgs, "question": ["Is it red?"] * 4, "answers": answers},
        features=datasets.Features({
            "image": datasets.Image(), "question": datasets.Value("string"),
            "answers": [{"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string"),
                         "answer_id": datasets.Value("int64")}]}))
    dd = datasets.DatasetDict({"validation": ds})
    dd.save_to_disk(str(root / "vqav2"))
    return root / "vqav2"


def test_vqav2_format_loads_from_disk(tmp_path: Path) -> None:
    path = _save_vqav2_like(tmp_path)
    task = VQA(dataset=f"disk:{path}", split="validation", prompt=None, question_column="question")
    batch = task.load_examples([0, 3], 24)
    assert batch.pixels.shape == (2, 3, 24, 24) and batch.prompts == ["Is it red?"] * 2
    assert task.correct(batch, ["yes", "no"]).tolist() == [True, False]


def test_coco_caption_format_loads_from_imagefolder_and_disk(tmp_path: Path) -> None:
    import datasets

    imgs = [(np.random.RandomState(i).rand(30, 30, 3) * 255).astype(np.uint8) for i in range(3)]
    caps = [["a red square", "a square that is red"], ["a blue circle", "blue round shape"], ["a cat", "a small cat"]]
    ds = datasets.Dataset.from_dict({"image": imgs, "answer": caps},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "answer": [datasets.Value("string")]}))
    ds.save_to_disk(str(tmp_path / "coco"))
    task = Captioning(dataset=f"disk:{tmp_path / 'coco'}", prompt="Caption:")
    batch = task.load_examples([0, 1, 2], 16)
    ok = task.correct(batch, ["a red square", "a blue circle", "a dog on a bike"])
    assert ok.tolist() == [True, True, False]


def test_imagefolder_zero_shot(tmp_path: Path) -> None:
    from PIL import Image

    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray((np.random.RandomState(i).rand(20, 20, 3) * 255).astype(np.uint8)).save(
                tmp_path / "imgs" / cls / f"{i}.png")
    task = ZeroShotClassification(dataset=f"imagefolder:{tmp_path / 'imgs'}")
    assert task.classes == ["cat", "dog"] and len(task) == 4
    assert task.load_examples([0, 3], 16).labels.tolist() == [0, 1]


def test_offline_hub_dataset_fails_with_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    task = ZeroShotClassification(dataset="hf:some-org/definitely-not-cached-xyz")
    with pytest.raises(ConfigError, match="fmnist-zeroshot") as err:
        len(task)
    assert "\n" not in str(err.value)
