"""fmnist-captions-retrieval: captions carry attribute words measured on each image, the ground truth
is the (class, attribute words) group, class names stay protected."""

from __future__ import annotations

import numpy as np
import pytest

from robustbench_mm.attacks.retrieval_objective import CAPTIONS_KEY, PROTECTED_KEY
from robustbench_mm.errors import ConfigError
from robustbench_mm.presets import build, load_preset
from robustbench_mm.runner.registration import register_all
from robustbench_mm.tasks import caption_attributes as ca
from robustbench_mm.tasks.base import TASKS
from robustbench_mm.tasks.bundled import fmnist_eval_arrays
from robustbench_mm.tasks.retrieval import GROUP_KEY

TASK = "fmnist-captions-retrieval"


def attribute_task(**overrides: object):  # type: ignore[no-untyped-def]
    register_all()
    return build(TASKS.get("attribute-retrieval"), load_preset("task", TASK, TASKS, overrides))


def test_attribute_words_follow_the_image() -> None:
    """A bright, large, evenly lit garment and a dim, small, uneven one of the same class get opposite words."""
    big_bright = np.zeros((1, 28, 28), np.uint8)
    big_bright[0, 2:26, 2:26] = 250
    small_dim = np.zeros((1, 28, 28), np.uint8)
    small_dim[0, 12:16, 12:16] = np.array([[40, 200, 40, 200]] * 4, np.uint8)
    images, labels = np.concatenate([big_bright, small_dim]), np.array([3, 3])
    bits = ca.attribute_bits(images, labels)
    assert bits.tolist() == [[1, 1, 0], [0, 0, 1]]
    assert ca.attribute_words(bits) == [{"b": "light", "s": "large", "t": "plain"},
                                        {"b": "dark", "s": "small", "t": "textured"}]
    assert ca.attribute_group(labels, bits).tolist() == [3 * 8 + 6, 3 * 8 + 1]
    assert ca.group_fields(3 * 8 + 1, ["c0", "c1", "c2", "dress"]) == {"c": "dress", "b": "dark", "s": "small",
                                                                        "t": "textured"}


def test_train_medians_split_the_held_out_slice_in_halves() -> None:
    images, labels, _ = fmnist_eval_arrays()
    share = ca.attribute_bits(images, labels).mean(axis=0)
    assert np.all((share > 0.4) & (share < 0.6)), share  # the words carry about one bit each


def test_captions_name_class_and_the_images_own_attribute_words() -> None:
    task = attribute_task()
    images, labels, _ = fmnist_eval_arrays()
    indices = list(range(40))
    batch = task.load_examples(indices, 32)
    bits = ca.attribute_bits(images[indices], labels[indices])
    words = ca.attribute_words(bits)
    assert batch.extra[GROUP_KEY].tolist() == ca.attribute_group(labels[indices], bits).tolist()
    for caps, label, fields in zip(batch.extra[CAPTIONS_KEY], labels[indices], words):
        assert len(set(caps)) == 5
        for caption in caps:
            assert task.classes[label] in caption
            assert all(w in caption.split() for w in fields.values()), (caption, fields)
    # images of one class differ in their words: more groups than classes in 40 images
    assert len(set(batch.extra[GROUP_KEY].tolist())) > len(set(labels[indices].tolist()))
    protected = batch.extra[PROTECTED_KEY]
    assert "boot" in protected and not protected & {"dark", "light", "small", "large", "plain", "textured"}


def test_templates_must_hold_every_field() -> None:
    with pytest.raises(ConfigError, match=r"\{b\}.*exactly once"):
        attribute_task(templates=["a {c} that is {s} and {t}"])


@pytest.mark.parametrize("swaps", [False, True])
def test_word_substitution_may_drop_an_attribute_word_but_swaps_only_when_allowed(swaps: bool) -> None:
    """On clip-tiny-captions, BERT-Attack replaces attribute words (its text tower reads them); with
    attribute_swaps false no substitute is an attribute word, with true the antonym swap appears."""
    import torch

    from robustbench_mm.attacks import build as build_attack
    from robustbench_mm.attacks.retrieval_objective import CaptionSetObjective
    from robustbench_mm.models.zoo import LoadOptions, load_model

    task = attribute_task(attribute_swaps=swaps)
    model = load_model("clip-tiny-captions", LoadOptions(device="cpu"))
    batch = task.load_examples(task.sample_indices(n=12, seed=0), model.image_size)
    result = build_attack("bert-attack").perturb(model, batch, CaptionSetObjective(),
                                                 generator=torch.Generator().manual_seed(0))
    attribute = {w for pair in ca.ATTRIBUTE_WORDS for w in pair}
    replaced, introduced = set(), set()
    for caps, adv_caps in zip(batch.extra[CAPTIONS_KEY], result.texts):
        for clean, adv in zip(caps, adv_caps):
            for a, b in zip(clean.split(), adv.split()):
                if a != b:
                    replaced.add(a)
                    introduced.add(b)
    assert replaced & attribute  # the words the tower reads are the ones worth replacing
    assert not introduced & set(batch.extra[PROTECTED_KEY])
    assert bool(introduced & attribute) == swaps


def test_a_model_that_cannot_read_the_attribute_words_is_one_clear_error_exit_2(monkeypatch, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.cli_invoke import invoke

    out = tmp_path / "store"
    code, stdout, err = invoke(monkeypatch, capsys, "run", "--model", "clip-tiny", "--task", TASK, "--attack",
                               "pgd", "--n", "4", "--out", str(out))
    assert code == 2 and "dark" in err and "--model clip-tiny-captions" in err, stdout + err
    assert not list(out.glob("cells/*/asr.parquet")) and not (out / "asr.parquet").exists()
