"""The retrieval task: bundled captions, the dataset loader on a saved local copy, the CLI cell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robustbench_mm.attacks.retrieval_objective import CAPTIONS_KEY
from robustbench_mm.errors import ConfigError
from robustbench_mm.presets import build, load_preset
from robustbench_mm.runner.registration import register_all
from robustbench_mm.tasks.base import TASKS
from robustbench_mm.tasks.retrieval import GROUP_KEY
from tests.cli_invoke import invoke


def retrieval_task(name: str = "fmnist-retrieval", **overrides: object):  # type: ignore[no-untyped-def]
    register_all()
    return build(TASKS.get("retrieval"), load_preset("task", name, TASKS, overrides))


def test_bundled_captions_are_distinct_name_the_class_and_are_fixed() -> None:
    task = retrieval_task()
    batch = task.load_examples([0, 1, 2, 3], 32)
    captions = batch.extra[CAPTIONS_KEY]
    assert [len(c) for c in captions] == [5] * 4
    for caps, label in zip(captions, batch.labels.tolist()):
        assert len(set(caps)) == 5
        assert all(task.classes[label] in c for c in caps)
    assert captions == task.load_examples([0, 1, 2, 3], 32).extra[CAPTIONS_KEY]
    assert len({tuple(c) for c in captions}) > 1  # images draw different templates
    assert batch.extra[GROUP_KEY].tolist() == batch.labels.tolist()  # class-level ground truth


def test_loader_reads_a_saved_local_copy(tmp_path: Path) -> None:
    """A Flickr30k-shaped set (image + caption list) saved with save_to_disk loads through disk:."""
    import datasets
    from PIL import Image

    rng = np.random.RandomState(0)
    images = [Image.fromarray(rng.randint(0, 255, (40, 50, 3), dtype=np.uint8)) for _ in range(3)]
    captions = [[f"caption {i} {j}" for j in range(6)] for i in range(3)]
    datasets.Dataset.from_dict({"image": images, "caption": captions}).save_to_disk(str(tmp_path / "mini"))
    task = retrieval_task("flickr30k-retrieval", dataset=f"disk:{tmp_path / 'mini'}")
    assert len(task) == 3
    batch = task.load_examples([2, 0], 24)
    assert tuple(batch.pixels.shape) == (2, 3, 24, 24)
    assert batch.extra[CAPTIONS_KEY] == [captions[2][:5], captions[0][:5]]  # the first five kept
    assert batch.extra[GROUP_KEY].tolist() == [2, 0]  # each caption matches its own image only


def test_caption_column_must_hold_lists(tmp_path: Path) -> None:
    import datasets
    from PIL import Image

    img = Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8))
    datasets.Dataset.from_dict({"image": [img], "caption": ["one string"]}).save_to_disk(str(tmp_path / "bad"))
    task = retrieval_task("flickr30k-retrieval", dataset=f"disk:{tmp_path / 'bad'}")
    with pytest.raises(ConfigError, match="list of captions"):
        task.load_examples([0], 8)


def test_cli_run_reports_recall_both_ways(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    out = tmp_path / "store"
    code, stdout, _ = invoke(monkeypatch, capsys, "run", "--model", "clip-tiny", "--task", "fmnist-retrieval",
                             "--attack", "pgd", "--eps", "2/255", "--n", "24", "--out", str(out))
    assert code == 0, stdout
    assert "image->text: clean R@1" in stdout and "text->image: clean R@1" in stdout
    row = pd.read_parquet(out / "asr.parquet").iloc[0]
    samples = pd.read_parquet(out / "samples.parquet")
    assert len(samples) == 24 and row["tr_r1_clean"] == pytest.approx(samples["tr_r1_clean"].mean())
    assert row["tr_r1_clean"] <= row["tr_r5_clean"] <= row["tr_r10_clean"]
    assert row["ir_r1_adv"] < row["ir_r1_clean"]  # the image attack moves images away from their captions
    assert float(samples["linf"].max()) <= 2 / 255 + 1e-5


def test_model_without_text_tower_is_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    out = tmp_path / "store"
    code, stdout, stderr = invoke(monkeypatch, capsys, "run", "--model", "llava-tiny", "--task", "fmnist-retrieval",
                                  "--out", str(out))
    assert code == 2
    assert "text_tower" in stderr + stdout
    assert not out.exists()


@pytest.mark.slow
def test_gallery_numbers_do_not_depend_on_batch_size(tmp_path: Path) -> None:
    """The whole gallery is ranked once after all batches, and attack randomness is per example."""
    from robustbench_mm import api
    from robustbench_mm.runner.resolve import CellSpec

    rows = []
    for bs in (5, 16):
        spec = CellSpec(model="clip-tiny", attack="pgd", task="fmnist-retrieval", n=16, batch_size=bs,
                        eps=2 / 255)
        rows.append(api.run_cell(spec, out=tmp_path / f"bs{bs}").row)
    for key in ("tr_r1_clean", "tr_r1_adv", "ir_r1_adv", "ir_r5_adv", "tr_asr", "ir_asr"):
        assert rows[0][key] == pytest.approx(rows[1][key]), key
