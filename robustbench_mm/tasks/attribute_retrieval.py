"""Retrieval on the bundled Fashion-MNIST slice with captions that describe each image, not just its
class: every caption names the class and three attribute words measured on the image itself
(``caption_attributes``: dark/light, small/large, plain/textured). A caption matches every image of
its class with the same three words, so the ground truth is one of 80 (class, attributes) groups and
captions of different images of one class differ in words the text tower has to read.

Class names stay protected from word substitution (renaming the class is no attack on the model).
Template and attribute words may be replaced; by default an attribute word may not be *introduced*
(``attribute_swaps: false``): swapping "dark" for "light" would make the caption describe another
group of images, so the task's ground truth, not the model, would be what broke. Taking an attribute
word out only makes the caption vaguer. ``attribute_swaps: true`` allows the swaps (measured in
docs/retrieval.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from robustbench_mm.attacks.masked_lm import known_word
from robustbench_mm.attacks.retrieval_objective import NOT_INTRODUCED_KEY
from robustbench_mm.errors import ConfigError
from robustbench_mm.tasks.base import TASKS
from robustbench_mm.tasks.caption_attributes import ATTRIBUTE_WORDS, attribute_bits, attribute_group, attribute_words
from robustbench_mm.tasks.retrieval import BUNDLED, ImageTextRetrieval
from robustbench_mm.types import Batch

FIELDS = ("{c}", "{b}", "{s}", "{t}")  # class, brightness, size, texture


@TASKS.register("attribute-retrieval")
class AttributeCaptionRetrieval(ImageTextRetrieval):
    """Bundled retrieval whose captions carry per-image attribute words (see module docstring).

    Args:
        templates: caption templates, each holding ``{c}``, ``{b}``, ``{s}`` and ``{t}`` once.
        classes: the class names; captions_per_image, caption_seed: as ``retrieval``.
        attribute_swaps: whether a text attack may put an attribute word into a caption.
    """

    def __init__(self, *, templates: tuple[str, ...] = (), classes: tuple[str, ...] = (),
                 captions_per_image: int = 5, caption_seed: int = 0, attribute_swaps: bool = False) -> None:
        self.attribute_swaps = bool(attribute_swaps)
        missing = [t for t in templates if any(t.count(f) != 1 for f in FIELDS)]
        if not templates or missing:
            raise ConfigError(f"attribute-retrieval templates must each hold {', '.join(FIELDS)} exactly once "
                              f"(not: {missing or 'no templates given'})")
        super().__init__(dataset=BUNDLED, templates=templates, classes=classes,
                         captions_per_image=captions_per_image, caption_seed=caption_seed)

    def check_model(self, model: Any) -> None:
        """The words that carry the ground truth must be words the model's tokenizer knows."""
        missing = [w for pair in ATTRIBUTE_WORDS for w in pair if not known_word(model, w)]
        if missing:
            raise ConfigError(f"model {getattr(model, 'name', '?')!r} reads the attribute words {', '.join(missing)} "
                              f"as unknown tokens, so task {self.name} would rank captions it cannot tell apart; "
                              f"use a model trained on these captions: --model clip-tiny-captions")

    def _bits(self, row: dict[str, Any]) -> np.ndarray:
        image = np.asarray(row[self.image_column], dtype=np.uint8).reshape(1, 28, 28)
        return attribute_bits(image, np.asarray([int(row["label"])]))

    def captions_for(self, index: int, row: dict[str, Any]) -> list[str]:
        order = np.random.RandomState(self.caption_seed * 1_000_003 + index).permutation(len(self.templates))
        fields = attribute_words(self._bits(row))[0]
        name = self.classes[int(row["label"])]
        return [self.templates[int(t)].format(c=name, **fields) for t in order[: self.captions_per_image]]

    def ground_truth_group(self, index: int, row: dict[str, Any]) -> int:
        return int(attribute_group(np.asarray([int(row["label"])]), self._bits(row))[0])

    def load_examples(self, indices: list[int], image_size: int) -> Batch:
        batch = super().load_examples(indices, image_size)
        if not self.attribute_swaps:
            batch.extra[NOT_INTRODUCED_KEY] = frozenset(w for pair in ATTRIBUTE_WORDS for w in pair)
        return batch

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "attribute_swaps": self.attribute_swaps}
