"""Prompts as data per model family, the hub parquet layouts of VQAv2 / COCO captions read offline
through the shipped presets, and the metric columns of asr.parquet on the bundled models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from robustbench_mm.errors import ConfigError
from robustbench_mm.models.base import PlainPrompt
from robustbench_mm.presets import load_preset
from robustbench_mm.presets import build
from robustbench_mm.runner.registration import register_all
from robustbench_mm.tasks.base import TASKS

LLAVA_VQA = "\nAnswer the question using a single word or phrase."


def _preset_task(name: str, **params: object):  # type: ignore[no-untyped-def]
    register_all()
    preset = load_preset("task", name, TASKS)
    preset = type(preset)(**{**preset.__dict__, "params": {**preset.params, **params}})
    return build(TASKS.get(preset.impl), preset)


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    return [(np.random.RandomState(seed + i).rand(36, 48, 3) * 255).astype(np.uint8) for i in range(n)]


def _hub_vqav2(root: Path) -> Path:
    """lmms-lab/VQAv2's layout: a parquet shard per split under data/, answers as 10 dicts."""
    import datasets

    answers = [[{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(ans)]
               for ans in (["2"] * 3 + ["3"] * 7, ["yes"] * 10, ["red"] * 2 + ["blue"] * 8)]
    ds = datasets.Dataset.from_dict(
        {"question_id": [1, 2, 3], "question": ["How many dogs?", "Is it red?", "What color?"],
         "question_type": ["how many", "is it", "what color"], "answers": answers,
         "multiple_choice_answer": ["3", "yes", "blue"], "answer_type": ["number", "yes/no", "other"],
         "image_id": [9, 9, 9], "image": _images(3)},
        features=datasets.Features({
            "question_id": datasets.Value("int64"), "question": datasets.Value("string"),
            "question_type": datasets.Value("string"),
            "answers": [{"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string"),
                         "answer_id": datasets.Value("int64")}],
            "multiple_choice_answer": datasets.Value("string"), "answer_type": datasets.Value("string"),
            "image_id": datasets.Value("int64"), "image": datasets.Image()}))
    (root / "vqav2" / "data").mkdir(parents=True)
    ds.to_parquet(str(root / "vqav2" / "data" / "validation-00000-of-00001.parquet"))
    return root / "vqav2"


def _hub_coco(root: Path) -> tuple[Path, list[list[str]]]:
    """lmms-lab/COCO-Caption2017's layout: parquet shards of split 'val', five captions in 'answer'."""
    import datasets

    caps = [["A dog runs on the grass.", "a brown dog running", "dog in a field", "a dog on grass", "a running dog"],
            ["A cat sleeps on a sofa.", "a sleeping cat", "cat on a couch", "a cat lying down", "a grey cat"],
            ["Two people ride bikes.", "cyclists on a road", "two cyclists", "people riding bicycles", "a bike ride"]]
    ds = datasets.Dataset.from_dict(
        {"question_id": ["a.jpg", "b.jpg", "c.jpg"], "image": _images(3, 5),
         "question": ["Provide a one-sentence caption for the provided image."] * 3, "answer": caps,
         "id": [1, 2, 3], "file_name": ["a.jpg", "b.jpg", "c.jpg"]},
        features=datasets.Features({
            "question_id": datasets.Value("string"), "image": datasets.Image(), "question": datasets.Value("string"),
            "answer": [datasets.Value("string")], "id": datasets.Value("int64"),
            "file_name": datasets.Value("string")}))
    (root / "coco" / "data").mkdir(parents=True)
    ds.to_parquet(str(root / "coco" / "data" / "val-00000-of-00001.parquet"))
    return root / "coco", caps


def test_vqav2_preset_reads_hub_layout_offline_with_each_family_prompt(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    path = _hub_vqav2(tmp_path)
    task = _preset_task("vqav2", dataset=f"hf:{path}")
    assert task.metric == "vqa_accuracy" and task.threshold == 0.5 and len(task) == 3
    task.bind_family("llava")
    batch = task.load_examples([0, 1, 2], 24)
    assert batch.pixels.shape == (3, 3, 24, 24)
    assert batch.prompts == [q + LLAVA_VQA for q in ("How many dogs?", "Is it red?", "What color?")]
    task.bind_family("blip2")  # the adapter adds "Question: ... Answer:"
    assert task.load_examples([0], 24).prompts == ["How many dogs?"]
    scores = task.score(batch, ["Three.", "Yes", "Red"]).tolist()
    assert scores == pytest.approx([1.0, 1.0, 0.6])
    assert task.correct(batch, ["two", "no", "red"]).tolist() == [True, False, True]
    assert task.score(batch, ["two", "no", "red"]).tolist() == pytest.approx([0.9, 0.0, 0.6])


def test_vqav2_two_annotators_is_the_correctness_boundary(tmp_path: Path) -> None:
    path = _hub_vqav2(tmp_path)
    task = _preset_task("vqav2", dataset=f"hf:{path}")
    batch = task.load_examples([2], 24)  # "red" x2, "blue" x8
    assert task.score(batch, ["red"]).item() == pytest.approx(0.6) and task.correct(batch, ["red"]).item()
    batch = task.load_examples([0], 24)  # "2" x3, "3" x7
    assert task.correct(batch, ["two"]).item()  # 0.9


def test_vqa_attack_success_is_a_drop_below_the_threshold(tmp_path: Path) -> None:
    path = _hub_vqav2(tmp_path)
    task = _preset_task("vqav2", dataset=f"hf:{path}")
    batch = task.load_examples([0, 1, 2], 24)  # answers: 2 x3 / 3 x7; yes x10; red x2 / blue x8
    clean = ["3", "yes", "red"]
    clean_ok = task.correct(batch, clean)
    assert clean_ok.tolist() == [True, True, True]  # scores 1.0, 1.0, 0.6
    adv = ["two", "No", "a red one"]  # 0.9 (still correct), 0.0, 0.0
    assert task.score(batch, adv).tolist() == pytest.approx([0.9, 0.0, 0.0])
    assert task.success(batch, clean_ok, adv).tolist() == [False, True, True]
    batch.targets = ["dog", "dog", "dog"]
    assert task.targeted_success(batch, ["A dog.", "hotdog", "dogs"]).tolist() == [True, False, False]


def test_coco_preset_reads_hub_layout_offline_with_cider_d_of_the_split(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    path, caps = _hub_coco(tmp_path)
    task = _preset_task("coco-caption", dataset=f"hf:{path}")
    assert task.metric == "cider_d" and task.threshold == 0.5
    task.bind_family("llava")
    assert task.load_examples([0], 16).prompts == ["Provide a one-sentence caption for the provided image."]
    task.bind_family("blip2")
    batch = task.load_examples([1], 16)
    assert batch.prompts == ["a photo of"] and isinstance(batch.prompts[0], PlainPrompt)
    kept = batch.select(torch.tensor([True])).prompts  # the attack's sub-batches keep the marker
    assert kept is not None and isinstance(kept[0], PlainPrompt)
    # a one-image batch is scored with the split's document frequencies: pycocoevalcap on the split
    from pycocoevalcap.cider.cider import Cider

    cands = ["a dog running on grass", "a cat on a couch", "two people riding bikes"]
    norm = [[r.lower().replace(".", "") for r in rs] for rs in caps]
    _, ref = Cider().compute_score({i: r for i, r in enumerate(norm)}, {i: [c] for i, c in enumerate(cands)})
    assert task.score(batch, [cands[1]]).item() == pytest.approx(float(ref[1]), abs=1e-6)
    assert task.correct(batch, [cands[1]]).item() and not task.correct(batch, ["a red bus"]).item()


def test_prompt_presets_are_validated() -> None:
    from robustbench_mm.tasks.generative import VQA, Captioning

    with pytest.raises(ConfigError, match="question"):
        VQA(dataset="disk:/x", prompt="Answer briefly.", question_column="question")
    with pytest.raises(ConfigError, match="unknown model families"):
        VQA(dataset="disk:/x", prompts={"clip": "x"})
    with pytest.raises(ConfigError, match="format"):
        Captioning(dataset="disk:/x", prompts={"blip2": {"text": "a photo of", "format": "raw"}})
    with pytest.raises(ConfigError, match="answer_processing"):
        VQA(dataset="disk:/x", answer_processing="lower")


@pytest.mark.slow
def test_adapters_read_plain_prompts_as_they_are() -> None:
    from robustbench_mm.models.zoo import load_model

    blip = load_model("blip2-tiny")
    assert blip.format_prompt("What is this?") == "Question: What is this? Answer:"
    assert blip.format_prompt(PlainPrompt("a photo of")) == "a photo of"
    llava = load_model("llava-tiny")
    chat, plain = llava.format_prompt("What is this?"), llava.format_prompt(PlainPrompt("a photo of"))
    assert "USER:" in chat and chat.endswith("ASSISTANT:")
    assert plain.startswith(llava.image_token) and plain.endswith("\na photo of") and "USER:" not in plain


def test_list_tasks_json_shows_prompt_and_metric() -> None:
    from typer.testing import CliRunner

    from robustbench_mm.cli import app

    res = CliRunner().invoke(app, ["list", "tasks", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert rows["vqav2"]["metric"] == "vqa_accuracy" and rows["vqav2"]["threshold"] == 0.5
    assert rows["vqav2"]["prompt"] == {"llava": "{question}" + LLAVA_VQA, "blip2": "{question}"}
    assert rows["vqav2"]["model_format"]["blip2"] == "Question: {prompt} Answer:"
    assert rows["coco-caption"]["metric"] == "cider_d" and rows["coco-caption"]["prompt"]["blip2"] == "a photo of"
    assert rows["coco-caption"]["plain_prompt"] == ["blip2"]
    assert rows["fmnist-vqa"]["prompt"] == {"llava": "What is this?", "blip2": "What is this?"}
    assert rows["fmnist-caption"]["prompt"]["blip2"] == "Describe the image."
    assert rows["fmnist-zeroshot"]["metric"] == "accuracy" and rows["fmnist-zeroshot"]["prompt"] == {
        "clip": "a photo of a {c}"}


@pytest.mark.slow
def test_asr_row_records_prompt_metric_and_mean_scores(tmp_path: Path) -> None:
    from robustbench_mm import api
    from robustbench_mm.runner.resolve import CellSpec

    api.run_cell(CellSpec(model="blip2-tiny", attack="none", task="fmnist-caption", n=12, batch_size=6,
                          device="cpu"), out=tmp_path)
    row = pd.read_parquet(tmp_path / "asr.parquet").iloc[0]
    assert row["prompt"] == "Describe the image." and row["metric"] == "class_named"
    assert row["clean_score"] == pytest.approx(row["clean_accuracy"]) and row["clean_score"] > 0.5
    assert row["adv_score"] == pytest.approx(row["clean_score"])  # no attack: same inputs
    samples = pd.read_parquet(tmp_path / "samples.parquet")
    assert set(samples["clean_score"]) <= {0.0, 1.0}
    assert (samples["clean_score"] == samples["clean_correct"].astype(float)).all()
