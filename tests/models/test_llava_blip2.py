"""The bundled zoo directories and the LLaVA / BLIP-2 adapters, on the tiny trained models (CPU, fp32)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_mm.models.base import VLM
from robustbench_mm.models.blip2 import load_blip2
from robustbench_mm.models.llava import load_llava
from robustbench_mm.models.zoo import ZOO_DIR, LoadOptions
from robustbench_mm.tasks.bundled import FMNIST_CLASSES, find_class, fmnist_eval_arrays, to_model_pixels

CAPTION_PROMPT, VQA_PROMPT = "Describe the image.", "What is this?"
LOADERS = {"llava-tiny": load_llava, "blip2-tiny": load_blip2}
MIN_ACCURACY = 0.80  # the zoo's training target; the test allows a small margin on 200 samples
MARGIN = 0.05


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(min(old, 2))
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data():
    images, labels, _ = fmnist_eval_arrays()
    return to_model_pixels(images[:200], 32), torch.from_numpy(labels[:200])


@pytest.fixture(scope="module", params=sorted(LOADERS))
def vlm(request) -> VLM:
    model = LOADERS[request.param](str(ZOO_DIR / request.param), LoadOptions())
    model.name = request.param
    return model.freeze()


# ---- the zoo directories -------------------------------------------------------------------
def test_zoo_dirs_load_with_their_classes():
    from transformers import (AutoProcessor, AutoTokenizer, Blip2ForConditionalGeneration, CLIPModel,
                              LlavaForConditionalGeneration)

    kw = dict(use_safetensors=True, local_files_only=True)
    clip = CLIPModel.from_pretrained(ZOO_DIR / "clip-tiny", **kw)
    tok = AutoTokenizer.from_pretrained(ZOO_DIR / "clip-tiny", local_files_only=True)
    ids = tok(["a photo of a t-shirt"], return_tensors="pt")
    assert clip.get_text_features(**ids).pooler_output.shape[-1] == clip.config.projection_dim
    llava = LlavaForConditionalGeneration.from_pretrained(ZOO_DIR / "llava-tiny", **kw)
    proc = AutoProcessor.from_pretrained(ZOO_DIR / "llava-tiny", local_files_only=True)
    assert proc.tokenizer.convert_tokens_to_ids("<image>") == llava.config.image_token_id
    assert proc.chat_template
    blip = Blip2ForConditionalGeneration.from_pretrained(ZOO_DIR / "blip2-tiny", **kw)
    btok = AutoTokenizer.from_pretrained(ZOO_DIR / "blip2-tiny", local_files_only=True)
    assert btok.convert_tokens_to_ids("<image>") == blip.config.image_token_index
    # vision tower of llava-tiny is clip-tiny's, bit for bit (transfer attacks rely on it)
    a = clip.vision_model.state_dict()
    b = llava.model.vision_tower.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_openclip_dir_loads_offline():
    open_clip = pytest.importorskip("open_clip")
    path = "local-dir:" + str(ZOO_DIR / "openclip-tiny")
    model, _, _ = open_clip.create_model_and_transforms(path)
    tok = open_clip.get_tokenizer(path)
    ids = tok(["a photo of a bag"])
    assert model.eval().encode_text(ids).shape[0] == 1


def test_zoo_size_budget():
    total = sum(f.stat().st_size for f in ZOO_DIR.rglob("*") if f.is_file())
    assert total <= 40e6
    assert not list(ZOO_DIR.rglob("*.bin")) and not list(ZOO_DIR.rglob("*.pt"))
    for name in ("clip-tiny", "openclip-tiny", "llava-tiny", "blip2-tiny"):
        assert (ZOO_DIR / name / "MODEL_CARD.md").exists()


# ---- adapters ------------------------------------------------------------------------------
def test_adapter_contract(vlm, data):
    x = data[0][:4]
    assert vlm.family in ("llava", "blip2") and vlm.image_size == 32
    assert vlm.capabilities == frozenset({"features", "logprob", "generate"})
    feats = vlm.raw_vision_features(x)
    assert feats.dim() == 3 and feats.shape[0] == 4
    assert feats.shape[-1] == vlm.model.get_input_embeddings().weight.shape[1]
    assert vlm.encode_image(x).shape == (4, feats.shape[1] * feats.shape[2])
    assert vlm.revision


def test_lm_loss_differentiable_and_uses_vision_features(vlm, data):
    x = data[0][:4].clone().requires_grad_(True)
    targets = [f"a photo of a {FMNIST_CLASSES[int(y)]}" for y in data[1][:4]]
    loss = vlm.lm_loss(x, [CAPTION_PROMPT] * 4, targets)
    assert loss.shape == (4,) and torch.isfinite(loss).all() and (loss > 0).all()
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.allclose(vlm.logprob(x, [CAPTION_PROMPT], targets), -loss, atol=1e-5)
    # a defense's feature transform is what the LM sees
    vlm.feature_transform = lambda fn, px: torch.zeros_like(fn(px))
    try:
        assert not torch.allclose(vlm.lm_loss(x, [CAPTION_PROMPT] * 4, targets), loss)
    finally:
        vlm.feature_transform = None


def test_lm_loss_prefers_true_class(vlm, data):
    x, y = data[0][:20], data[1][:20]
    true = vlm.lm_loss(x, [VQA_PROMPT], [FMNIST_CLASSES[int(c)] for c in y])
    wrong = vlm.lm_loss(x, [VQA_PROMPT], [FMNIST_CLASSES[(int(c) + 5) % 10] for c in y])
    assert (true < wrong).float().mean() >= 0.8


def test_generate_deterministic_and_batch_consistent(vlm, data):
    x = data[0][:6]
    batch = vlm.generate(x, [VQA_PROMPT, CAPTION_PROMPT] * 3, max_new_tokens=8)
    assert batch == vlm.generate(x, [VQA_PROMPT, CAPTION_PROMPT] * 3, max_new_tokens=8)
    singles = [vlm.generate(x[i : i + 1], [[VQA_PROMPT, CAPTION_PROMPT][i % 2]], max_new_tokens=8)[0] for i in range(6)]
    assert batch == singles
    assert all(isinstance(t, str) and t == t.strip() for t in batch)


@pytest.mark.parametrize("prompt", [CAPTION_PROMPT, VQA_PROMPT])
def test_accuracy_on_bundled_slice(vlm, data, prompt):
    x, y = data
    outs = vlm.generate(x, [prompt], max_new_tokens=16)
    acc = float(np.mean([find_class(o) == int(c) for o, c in zip(outs, y)]))
    assert acc >= MIN_ACCURACY - MARGIN, (acc, outs[:5])
    if prompt == CAPTION_PROMPT:
        assert sum(o.startswith("a photo of a") for o in outs) >= 0.9 * len(outs)


def test_save_reload_round_trip(vlm, data, tmp_path):
    from transformers import AutoProcessor

    src = ZOO_DIR / vlm.name
    dst = tmp_path / vlm.name
    vlm.model.save_pretrained(dst, safe_serialization=True)
    AutoProcessor.from_pretrained(src, local_files_only=True).save_pretrained(dst)
    for f in ("tokenizer.json", "tokenizer_config.json"):  # tokenizer files as shipped
        shutil.copy(src / f, dst / f)
    again = LOADERS[vlm.name](str(dst), LoadOptions()).freeze()
    x, y = data[0][:4], data[1][:4]
    targets = [FMNIST_CLASSES[int(c)] for c in y]
    assert torch.allclose(again.lm_loss(x, [VQA_PROMPT], targets), vlm.lm_loss(x, [VQA_PROMPT], targets), atol=1e-5)
    assert again.generate(x, [CAPTION_PROMPT]) == vlm.generate(x, [CAPTION_PROMPT])
    assert again.revision == vlm.revision


def test_refuses_pickle_only_dir(vlm, tmp_path):
    from robustbench_mm.errors import WeightsError

    dst = tmp_path / "pickled"
    shutil.copytree(ZOO_DIR / vlm.name, dst)
    for f in dst.glob("*.safetensors"):
        f.unlink()
    torch.save(vlm.model.state_dict(), dst / "pytorch_model.bin")  # a pickle-only checkpoint
    with pytest.raises(WeightsError, match="--allow-pickle"):
        LOADERS[vlm.name](str(dst), LoadOptions())
