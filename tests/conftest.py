"""Shared fixtures: a tiny random-init HF CLIP saved to disk (for raw speed and save/reload tests),
an on-disk ``datasets`` image set, and temporary stores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

WORDS = ["a", "photo", "of", "the", "red", "green", "blue", "square", "circle", "cross", "dot", "stripe"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # MMROBUST_TEST_DEVICE=cpu rehearses the GPU suite on the CPU (slow; same assertions)
    if torch.cuda.is_available() or os.environ.get("MMROBUST_TEST_DEVICE") == "cpu":
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def make_word_tokenizer(words: list[str]):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # CLIP pools the text at the EOS token, so every sequence must end with it
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 2),
                                                                                               ("<eos>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<bos>", eos_token="<eos>")


@pytest.fixture(scope="session")
def random_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init transformers CLIPModel (32 px, 2 layers) saved with its tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(WORDS) + 4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=32,
    )
    path = tmp_path_factory.mktemp("random_clip")
    model = CLIPModel(cfg)
    tokenizer = make_word_tokenizer(WORDS)
    _fit_colours(model, tokenizer)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def _fit_colours(model, tokenizer) -> None:  # type: ignore[no-untyped-def]
    """A few seconds of zero-shot fitting on colour images, so clean accuracy is high and attacks
    have something to break (a random model gets ~1/3 right and leaves attacks nothing to do)."""
    from robustbench_mm.models.base import normalize_pixels
    from robustbench_mm.models.clip import OPENAI_MEAN, OPENAI_STD

    gen = torch.Generator().manual_seed(1)
    prompts = tokenizer([f"a photo of the {c}" for c in ("red", "green", "blue")], return_tensors="pt",
                        padding=True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        labels = torch.randint(0, 3, (24,), generator=gen)
        x = torch.rand(24, 3, 32, 32, generator=gen) * 0.25
        x[torch.arange(24), labels] += 0.6
        out = model(input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"],
                    pixel_values=normalize_pixels(x, OPENAI_MEAN, OPENAI_STD))
        loss = torch.nn.functional.cross_entropy(out.logits_per_image, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 synthetic 32x32 RGB images in 3 colour classes, written with ``save_to_disk``."""
    import datasets

    rng = np.random.RandomState(0)
    images, labels = [], []
    for i in range(48):
        c = i % 3
        img = (rng.rand(32, 32, 3) * 64).astype(np.uint8)
        img[..., c] += 153
        images.append(img)
        labels.append(c)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=["red", "green", "blue"])})
    ds = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    path = tmp_path_factory.mktemp("shapes") / "ds"
    ds.save_to_disk(str(path))
    return path


@pytest.fixture
def shapes_task(shapes_dataset: Path, tmp_path: Path) -> Path:
    """A zero-shot task preset file over the on-disk dataset."""
    f = tmp_path / "shapes-zeroshot.yaml"
    f.write_text(f"name: shapes-zeroshot\nimpl: zero-shot\nparams:\n  dataset: disk:{shapes_dataset}\n"
                 f"  templates: ['a photo of the {{c}}']\n")
    return f
