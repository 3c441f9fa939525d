"""PRSL / top-K RS (docs/methods.md correctness tests) and the top-K RS training loop."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from robustbench_mm.defenses.topk_softmax import TopKRecentralizedSoftmax, prsl_loss, recentralize, topk_mask
from robustbench_mm.errors import ConfigError


def _logits(n: int = 32, v: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * 3, torch.randint(0, v, (n,), generator=g)


def test_gamma_zero_and_full_k_equal_cross_entropy() -> None:
    z, y = _logits()
    ce = F.cross_entropy(z, y)
    assert torch.allclose(prsl_loss(z, y, "A", K=5, gamma=0.0), ce, atol=1e-6)
    assert torch.allclose(prsl_loss(z, y, "B", K=z.shape[1]), ce, atol=1e-6)
    assert torch.allclose(prsl_loss(z, y, "A", K=5, gamma=0.5, beta=0.0), ce, atol=1e-6)


def test_variant_b_below_ce_and_variant_a_above_ce_for_top1_labels() -> None:
    z, y = _logits(256)
    ce = F.cross_entropy(z, y, reduction="none")
    assert (prsl_loss(z, y, "B", K=3, reduction="none") <= ce + 1e-6).all()
    top1 = z.argmax(1)
    la = prsl_loss(z, top1, "A", K=5, gamma=0.5, reduction="none")
    assert (la >= F.cross_entropy(z, top1, reduction="none") - 1e-6).all()


def test_recentralization_keeps_argmax_and_compresses_top_gaps() -> None:
    z, _ = _logits(256)
    zt = recentralize(z, 5, 0.5)
    assert torch.equal(zt.argmax(1), z.argmax(1))
    top = z.topk(5, dim=1).values
    top_t = zt.topk(5, dim=1).values
    assert torch.allclose(top_t[:, 0] - top_t[:, 1], 0.5 * (top[:, 0] - top[:, 1]), atol=1e-5)


def test_gradcheck_with_fixed_topk_set() -> None:
    z, y = _logits(4, 6)
    z = z.double().requires_grad_(True)
    for variant in ("A", "B"):
        assert torch.autograd.gradcheck(lambda t: prsl_loss(t, y, variant, K=3, gamma=0.5, beta=0.7), (z,))


def test_ignore_index_and_mask_shape() -> None:
    z, y = _logits(8)
    y2 = y.clone()
    y2[:3] = -100
    full = prsl_loss(z[3:], y[3:], "A")
    assert torch.allclose(prsl_loss(z, y2, "A"), full, atol=1e-6)
    assert topk_mask(z, 3).sum(1).eq(3).all()


def test_bad_parameters_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        TopKRecentralizedSoftmax(gamma=1.0)
    with pytest.raises(ConfigError):
        prsl_loss(*_logits(), variant="C")


# ---- the training loop on the bundled clip-tiny (seeded, resumable, cached) -------------------------
def _needs_train_data() -> None:
    from robustbench_mm.tasks.bundled import RAW_FMNIST_DIR

    if not (RAW_FMNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        if os.environ.get("CI"):
            pytest.fail("Fashion-MNIST train split missing: .ci/run installs dataset-fashion-mnist")
        pytest.skip("Fashion-MNIST train split (Debian dataset-fashion-mnist) not installed")


def _tiny(**kw: object) -> TopKRecentralizedSoftmax:
    d = TopKRecentralizedSoftmax(**{"steps": 4, "batch_size": 8, "pgd_steps": 1, "eval_n": 20, "eval_steps": 2,
                                    "ckpt_every": 2, "log_every": 1, "lr": 1e-3, "warmup": 0, **kw})  # type: ignore[arg-type]
    d.name = "topk-rs-test"
    return d


@pytest.mark.slow
def test_train_step_lowers_the_loss_on_a_fixed_batch() -> None:
    from robustbench_mm.models.zoo import load_model
    from robustbench_mm.tasks.bundled import fmnist_eval_arrays, to_model_pixels

    model = load_model("clip-tiny")
    d = _tiny(adversarial=False)
    module = d.prepare(model)
    opt = d.optimizers(module, model)["main"]
    images, labels, _ = fmnist_eval_arrays()
    x, y = to_model_pixels(images[:16], 32), torch.as_tensor(labels[:16])
    losses = []
    for _ in range(4):
        loss, _ = d.train_step(model, module, x, y, 0, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        model._text_cache.clear()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_resume_from_checkpoint_is_exact_and_apply_reuses_cached_weights(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _needs_train_data()
    from robustbench_mm.defenses import training
    from robustbench_mm.models.zoo import load_model

    monkeypatch.setenv("MMROBUST_CACHE", str(tmp_path / "cache"))
    straight = load_model("clip-tiny")
    _tiny().fit(straight, tmp_path / "a", stop_after=4)
    resumed = load_model("clip-tiny")
    _tiny().fit(resumed, tmp_path / "b", stop_after=2)
    resumed = load_model("clip-tiny")  # a fresh process would start from the base weights
    _tiny().fit(resumed, tmp_path / "b", stop_after=4)
    for (k, v), (_, w) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(v, w), k
    # apply(): trains on demand into the cache (hash of recipe + model revision), then reuses it
    d = _tiny()
    base = load_model("clip-tiny")
    path = d.weights_dir(base)
    assert path.parent == training.cache_root()
    defended = d.apply(base)
    assert training.finished(path) and (path / "model.safetensors").exists() and (path / "DEFENSE_CARD.md").exists()
    record = json.loads((path / "defense.json").read_text())
    assert set(record["metrics"]) >= {"clean_accuracy", "robust_accuracy"}
    calls = []
    monkeypatch.setattr(TopKRecentralizedSoftmax, "fit", lambda *a, **k: calls.append(1))
    again = _tiny().apply(load_model("clip-tiny"))
    assert not calls
    x = torch.rand(4, 3, 32, 32)
    prompts = ["a photo of a bag", "a photo of a coat"]
    assert torch.allclose(defended.classify(x, prompts), again.classify(x, prompts), atol=1e-5)





@pytest.mark.slow
def test_shipped_topk_rs_weights_are_robust() -> None:
    from robustbench_mm.defenses.training import zero_shot_eval
    from robustbench_mm.models.zoo import load_model

    from defense_helpers import shipped

    d, defended = shipped("topk-rs")
    base = zero_shot_eval(load_model("clip-tiny"), n=100, eps=d.eps, steps=10)  # at the training budget
    ours = zero_shot_eval(defended, n=100, eps=d.eps, steps=10)
    assert ours["robust_accuracy"] >= base["robust_accuracy"] + 0.15
    assert ours["clean_accuracy"] >= base["clean_accuracy"] - 0.10


# ---- token level (LLaVA / BLIP-2) ------------------------------------------------------------
def test_token_prsl_is_ce_over_answer_tokens_at_gamma_zero() -> None:
    from robustbench_mm.defenses.topk_softmax import token_prsl

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 20, generator=g)
    labels = torch.full((3, 6), -100)
    labels[:, 3:5] = torch.randint(0, 20, (3, 2), generator=g)  # two answer tokens per row
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, 20), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(token_prsl(logits, labels, "A", K=10, gamma=0.0, beta=1.0), ce)
    assert token_prsl(logits, labels, "A", K=10, gamma=0.5, beta=1.0) > ce  # top-K compression raises it


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llava-tiny", "blip2-tiny"])
def test_token_level_training_changes_only_the_image_side_and_reloads(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _needs_train_data()
    from transformers import Blip2ForConditionalGeneration, LlavaForConditionalGeneration

    from robustbench_mm.models.zoo import load_model

    base = load_model(name)
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    d = _tiny(steps=2, eval_n=8, eval_steps=1, lr=1e-2)
    record = d.fit(base, tmp_path / "w")
    assert set(record["metrics"]) >= {"clean_accuracy", "robust_accuracy"}
    after = base.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(("language_model" not in k) or ("projection" in k) for k in changed), sorted(changed)[:5]
    # the directory is a normal checkpoint of the model's own class, and the defense reloads it
    cls = LlavaForConditionalGeneration if name == "llava-tiny" else Blip2ForConditionalGeneration
    direct = cls.from_pretrained(tmp_path / "w", use_safetensors=True, local_files_only=True)
    for k, v in direct.state_dict().items():
        assert torch.equal(v, after[k]), k
    fresh = d.load_trained(load_model(name), tmp_path / "w")
    x = torch.rand(2, 3, fresh.image_size, fresh.image_size)
    assert fresh.generate(x, ["What is this?"] * 2) == base.eval().generate(x, ["What is this?"] * 2)
    assert "+topk-rs-test:" in fresh.revision


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llava-tiny", "blip2-tiny"])
def test_shipped_token_level_topk_rs_is_robust(name: str) -> None:
    from robustbench_mm.defenses.vlm_finetune import vqa_eval
    from robustbench_mm.models.zoo import load_model

    from defense_helpers import shipped

    d, defended = shipped("topk-rs", name)
    base = vqa_eval(load_model(name), n=60, eps=d.eps, steps=10)  # at the training budget
    ours = vqa_eval(defended, n=60, eps=d.eps, steps=10)
    assert ours["robust_accuracy"] >= base["robust_accuracy"] + 0.15, (base, ours)
    assert ours["clean_accuracy"] >= base["clean_accuracy"] - 0.10, (base, ours)
