"""CRMT head, losses and certified radius (docs/methods.md), on weight-free linear encoders."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from robustbench_mm.defenses.crmt import CRMTHead, crmt_radius, crmt_step1_loss, crmt_step2_loss


def _linear_setup(M: int = 2, K: int = 4, n: int = 64, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    dims_in, dims = [7, 5][:M], [6, 4][:M]
    A = [torch.randn(d, i, generator=g) for d, i in zip(dims, dims_in)]
    x = [torch.randn(n, i, generator=g) for i in dims_in]
    head = CRMTHead(dims, K, a_init=0.1, seed=seed)
    with torch.no_grad():
        for a in head.a:
            a.copy_(torch.rand(K, generator=g) + 0.1)
        head.b.copy_(torch.randn(K, generator=g) * 0.1)
        for m in range(M):  # tau_c = ||W~_c A_m||_2 exactly for linear encoders
            head.tau[m] = (head.weight(m) @ A[m]).norm(dim=1)
    feats = [xi @ Am.T for xi, Am in zip(x, A)]
    g_list, h = head(feats)
    y = torch.randint(0, K, (n,), generator=g)
    return head, A, x, g_list, h, y


def test_row_normalisation() -> None:
    head = CRMTHead([6, 4], 5)
    for m in range(2):
        w = head.weight(m)
        assert torch.allclose(w.norm(dim=1), torch.ones(5), atol=1e-6)
        assert torch.allclose(w.mean(dim=1), torch.zeros(5), atol=1e-6)


def test_radius_sign_matches_correctness_and_is_scale_invariant() -> None:
    head, _, _, g, h, y = _linear_setup()
    r = crmt_radius(g, h, y, head.a_list(), head.b, head.tau)
    correct = h.argmax(1) == y
    assert torch.equal(r > 0, correct)
    c = 3.7
    a2 = [a * c for a in head.a_list()]
    h2 = sum(a * gm for a, gm in zip(a2, g)) + head.b * c
    assert torch.allclose(crmt_radius(g, h2, y, a2, head.b * c, head.tau), r, atol=1e-5)


def test_linear_bound_is_never_beaten_by_the_minimum_norm_flip() -> None:
    head, A, _, g, h, y = _linear_setup()
    y = h.argmax(1)  # certify the prediction
    r = crmt_radius(g, h, y, head.a_list(), head.b, head.tau)
    K = h.shape[1]
    exact = torch.full_like(r, float("inf"))
    for k in range(K):  # h_y - h_k is linear in the joint perturbation: exact min-norm flip
        for i in range(len(y)):
            if int(y[i]) == k:
                continue
            v = torch.cat([(head.a[m][y[i]] * head.weight(m)[y[i]] - head.a[m][k] * head.weight(m)[k]) @ A[m]
                           for m in range(len(A))])
            exact[i] = torch.minimum(exact[i], (h[i, y[i]] - h[i, k]) / v.norm())
    assert (r <= exact + 1e-5).all()
    assert (r > 0).all()


def test_bound_is_tight_for_one_modality_and_two_antipodal_classes() -> None:
    g = torch.Generator().manual_seed(3)
    A = torch.randn(6, 9, generator=g)
    head = CRMTHead([6], 2)
    with torch.no_grad():
        head.W[0][1] = -head.W[0][0]
        head.a[0].fill_(0.5)
        head.tau[0] = (head.weight(0) @ A).norm(dim=1)
    x = torch.randn(5, 9, generator=g)
    g_list, h = head([x @ A.T])
    y = h.argmax(1)
    r = crmt_radius(g_list, h, y, head.a_list(), head.b, head.tau)
    v = (head.a[0][0] * head.weight(0)[0] - head.a[0][1] * head.weight(0)[1]) @ A
    exact = (h[:, 0] - h[:, 1]).abs() / v.norm()
    assert torch.allclose(r, exact, atol=1e-5)
    # moving exactly r along the worst direction reaches the boundary
    sgn = torch.where(y == 0, -1.0, 1.0)[:, None]
    x_adv = x + sgn * r[:, None] * 1.0001 * v / v.norm()
    assert not torch.equal(head([x_adv @ A.T])[1].argmax(1), y)


def test_step1_loss_reduces_to_ce_and_matches_formula() -> None:
    head, _, _, g, h, y = _linear_setup()
    assert torch.allclose(crmt_step1_loss(g, h, y, rho=0.0), F.cross_entropy(h, y))
    ref = 0.0
    for i in range(len(y)):
        s = sum(torch.exp(gm[i, k] - gm[i, y[i]]) for gm in g for k in range(h.shape[1]) if k != y[i])
        ref += torch.log(s + 1e-5)
    assert torch.allclose(crmt_step1_loss(g, h, y, 1.0), F.cross_entropy(h, y) + ref / len(y), atol=1e-5)


def test_step2_update_increases_the_mean_ratio() -> None:
    head, _, _, g, h, y = _linear_setup()
    before = crmt_step2_loss(g, h, y, head.a_list(), head.b, head.tau)
    grads = torch.autograd.grad(before, head.a_list())
    with torch.no_grad():
        for a, gr in zip(head.a, grads):
            a -= 1e-3 * gr
    h2 = sum(a * gm for a, gm in zip(head.a_list(), g)) + head.b
    assert crmt_step2_loss(g, h2.detach(), y, head.a_list(), head.b, head.tau) < before


def test_crmt_rejects_llava_with_one_clear_line() -> None:
    from robustbench_mm.errors import CapabilityError
    from robustbench_mm.runner.resolve import CellSpec, resolve

    for defense in ("crmt", "mmcoa", "tecoa"):
        with pytest.raises(CapabilityError, match="does not apply to llava"):
            resolve(CellSpec(model="llava-tiny", defense=defense))
    # top-K RS has a token-level variant for the generative families
    assert resolve(CellSpec(model="llava-tiny", defense="topk-rs")).defense.name == "topk-rs"


# ---- the CRMT defense on the bundled clip-tiny + multimodal task ----------------------------------
def _tiny_crmt(**kw: object):  # type: ignore[no-untyped-def]
    from robustbench_mm.defenses.crmt import CRMT

    d = CRMT(**{"steps": 3, "step2_steps": 2, "lip_n": 8, "batch_size": 16, "ckpt_every": 2, "log_every": 1,
                "eval_n": 20, **kw})  # type: ignore[arg-type]
    d.name = "crmt-test"
    return d


@pytest.mark.slow
def test_crmt_training_resumes_exactly_across_the_step2_boundary(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from robustbench_mm.models.zoo import load_model
    from robustbench_mm.tasks.bundled import RAW_FMNIST_DIR
    from robustbench_mm.tasks.crmt_task import MultimodalClassification

    if not (RAW_FMNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail("Fashion-MNIST train split missing: apt-get install dataset-fashion-mnist (.ci/run installs it)")
    monkeypatch.setenv("MMROBUST_CACHE", str(tmp_path / "cache"))
    a = _tiny_crmt()
    a.fit(load_model("clip-tiny"), tmp_path / "a", stop_after=5)
    b = _tiny_crmt()
    b.fit(load_model("clip-tiny"), tmp_path / "b", stop_after=3)
    b = _tiny_crmt()
    b.fit(load_model("clip-tiny"), tmp_path / "b", stop_after=5)
    sa, sb = a._fusion.head.state_dict(), b._fusion.head.state_dict()
    assert float(sa["tau_ready"]) == 1.0
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    fusion = _tiny_crmt().apply(load_model("clip-tiny"))  # trains into the cache, exports, loads
    task = MultimodalClassification()
    batch = task.load_examples(list(range(16)), 32)
    frame = _tiny_crmt().certify(fusion, batch, [0.0, 0.01])
    assert set(frame.columns) >= {"index", "radius", "quantity", "value", "abstain", "mc_samples", "alpha"}
    with torch.no_grad():
        ok = fusion.fused_logits(batch.pixels, batch.extra["texts"]).argmax(1) == batch.labels
    at0 = frame[frame["radius"] == 0.0].sort_values("index")["value"].to_numpy()
    assert (at0 == ok.numpy().astype(float)).all()


@pytest.mark.slow
def test_shipped_crmt_certificate_is_positive_and_never_beaten_by_an_attack() -> None:
    from robustbench_mm.defenses.crmt import joint_l2_attack
    from robustbench_mm.tasks.crmt_task import MultimodalClassification
    from defense_helpers import shipped

    defense, fusion = shipped("crmt")
    radius = min(r for r in defense.certificate_radii() if r > 0)
    task = MultimodalClassification()
    batch = task.load_examples(task.sample_indices(n=100, seed=0), fusion.image_size)
    texts, y = batch.extra["texts"], batch.labels
    with torch.no_grad():
        r = fusion.radius(batch.pixels, texts, y)
    certified = r > radius
    assert certified.float().mean() > 0
    for mod in ("joint", "image", "text"):
        adv = joint_l2_attack(fusion, batch.pixels, texts, y, radius, steps=10, modalities=mod, alpha=radius / 3)
        assert (adv.argmax(1) == y)[certified].all(), mod


def test_multimodal_task_texts_are_fixed_per_index_with_the_configured_law() -> None:
    from robustbench_mm.tasks.crmt_task import STATE_CORRUPT, STATE_MISSING, MultimodalClassification

    task = MultimodalClassification(p_corrupt=0.2, p_missing=0.2)
    a = task.load_examples([5, 7, 11], 32)
    b = task.load_examples([11, 5], 32)
    assert a.extra["texts"][0] == b.extra["texts"][1] and a.extra["texts"][2] == b.extra["texts"][0]
    _, labels, texts, states = task.arrays
    states = torch.tensor(states)
    assert abs(float((states == STATE_MISSING).float().mean()) - 0.2) < 0.04
    assert abs(float((states == STATE_CORRUPT).float().mean()) - 0.2) < 0.04
    assert all(t == "" for t, s in zip(texts, states) if s == STATE_MISSING)
    missing = MultimodalClassification(p_corrupt=0.0, p_missing=1.0)
    assert all(t == "" for t in missing.arrays[2])


def test_plain_clip_gets_zero_shot_late_fusion() -> None:
    from robustbench_mm.models.zoo import load_model
    from robustbench_mm.tasks.crmt_task import MultimodalClassification, zero_shot_fusion_logits

    model = load_model("clip-tiny")
    task = MultimodalClassification()
    batch = task.load_examples(list(range(8)), model.image_size)
    prompts = task.class_prompts()
    fused = zero_shot_fusion_logits(model, batch.pixels, batch.extra["texts"], prompts)
    image_only = model.classify(batch.pixels, prompts)
    for i, t in enumerate(batch.extra["texts"]):
        assert torch.allclose(fused[i], image_only[i]) == (t == "")
    assert task.predict(model, batch).shape == (8,)


def test_crmt_refuses_tasks_that_do_not_predict_with_its_head(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """CRMT certifies its fusion head; on fmnist-zeroshot the attacked predictions would be plain
    zero-shot CLIP, so the cell is refused: exit 2, one line naming fmnist-multimodal."""
    import sys

    import pytest

    from robustbench_mm import cli
    from robustbench_mm.errors import CapabilityError
    from robustbench_mm.runner.resolve import CellSpec, resolve

    with pytest.raises(CapabilityError, match="fmnist-multimodal"):
        resolve(CellSpec(model="clip-tiny", defense="crmt"))  # the default task fmnist-zeroshot
    assert resolve(CellSpec(model="clip-tiny", defense="crmt", task="fmnist-multimodal")).certify
    monkeypatch.setattr(sys, "argv", ["mmrobust", "run", "--model", "clip-tiny", "--attack", "pgd-l2",
                                      "--defense", "crmt", "--task", "fmnist-zeroshot"])
    with pytest.raises(SystemExit) as ex:
        cli.main()
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert ex.value.code == 2 and len(err) == 1 and "fmnist-multimodal" in err[0], err


def test_crmt_certificate_rows_are_estimates() -> None:
    from robustbench_mm.defenses.crmt import CRMT

    assert CRMT.bound_kind == "estimate" and "Estimate" in CRMT.certificate_note


def test_fused_task_is_a_classification_task_under_the_protocol() -> None:
    """The fused logits are class logits, so the standard protocol runs its classification members
    (APGD-T, FAB-T, Square included) on both threat models, not the generative ones."""
    from robustbench_mm.benchmarking import plan
    from robustbench_mm.runner.resolve import resolve

    _, version, specs = plan("clip-tiny", defense="crmt", task="fmnist-multimodal", n=4)
    assert version.startswith("standard") and [s.norm for s in specs] == ["linf", "l2"]
    assert [m.name for m in resolve(specs[0]).attack.members] == ["apgd-ce", "apgd-t", "fab-t", "square"]


def test_fused_objective_keeps_each_row_with_its_own_text() -> None:
    """Logits need the objective bound to the same rows; torchattacks attacks subsets of rows
    internally, so the bridge traces each input row back to its own text."""
    from robustbench_mm.attacks.objectives import bound
    from robustbench_mm.attacks.torchattacks_bridge import TorchattacksBridge
    from robustbench_mm.models.zoo import load_model
    from robustbench_mm.tasks.crmt_task import MultimodalClassification, fused_logits

    model = load_model("clip-tiny")
    task = MultimodalClassification(p_corrupt=0.5, p_missing=0.0)
    batch = task.load_examples(list(range(6)), model.image_size)
    objective = task.objective()
    with pytest.raises(ValueError, match="bind"):
        objective.logits(model, batch.pixels)
    with torch.no_grad():
        assert torch.equal(bound(objective, batch).logits(model, batch.pixels),
                           fused_logits(model, batch.pixels, batch, task.class_prompts()))
        assert torch.equal(objective.with_loss("dlr").bind(batch).logits(model, batch.pixels),
                           fused_logits(model, batch.pixels, batch, task.class_prompts()))
    square = TorchattacksBridge(cls="Square", norm="linf", eps=8 / 255, steps=20)
    res = square.perturb(model, batch, objective, generator=torch.Generator().manual_seed(0))
    assert res.pixels.shape == batch.pixels.shape
    assert (res.pixels - batch.pixels).abs().max() <= 8 / 255 + 1e-6


def _traced_setup(norm: str = "linf") -> tuple[object, object, object, object]:
    from robustbench_mm.attacks.torchattacks_bridge import RowMatchedLogits
    from robustbench_mm.models.zoo import load_model
    from robustbench_mm.tasks.crmt_task import MultimodalClassification

    model = load_model("clip-tiny")
    task = MultimodalClassification(p_corrupt=0.5, p_missing=0.2)
    batch = task.load_examples(list(range(12)), model.image_size)
    objective = task.objective()
    return model, batch, objective, RowMatchedLogits(model, objective, batch, norm)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_traced_rows_get_their_own_text(norm: str) -> None:
    """Perturbed subsets in any order are scored with each row's own text (distance rule); inputs that
    wander beyond the tracing radius take the rows of the latest unperturbed call (position rule);
    when neither rule can trace an input the call refuses rather than guess."""
    from robustbench_mm.attacks.objectives import bound
    from robustbench_mm.attacks.torchattacks_bridge import _Unmatched

    model, batch, objective, traced = _traced_setup(norm)
    assert torch.isfinite(traced.radius).all() and float(traced.radius.min()) > (8 / 255 if norm == "linf" else 0.5)
    assert float(traced._dist(batch.pixels).diagonal().abs().max()) == 0.0  # unperturbed rows measure exactly 0
    idx = torch.tensor([7, 2, 11, 2, 0])
    noise = (torch.rand(len(idx), *batch.pixels.shape[1:], generator=torch.Generator().manual_seed(0)) - 0.5) / 16
    x = (batch.pixels[idx] + noise).clamp(0, 1)
    with torch.no_grad():
        want = bound(objective, batch.take(idx)).logits(model, x)
        assert torch.equal(traced(x), want)
        # position rule: an unperturbed call fixes the rows; far-off inputs of that size follow them
        assert torch.equal(traced(batch.pixels[idx]), bound(objective, batch.take(idx)).logits(model, batch.pixels[idx]))
        far = 1 - batch.pixels[idx]
        assert torch.equal(traced(far), bound(objective, batch.take(idx)).logits(model, far))
        with pytest.raises(_Unmatched):
            traced(far[:3])  # no unperturbed call of that size to follow


def test_untraceable_rows_fall_back_to_one_run_per_text() -> None:
    """Two copies of one image with different texts cannot be told apart by distance: the bridge
    reruns per group of rows sharing a text, and every row still ends in its own eps-ball."""
    from robustbench_mm.attacks.torchattacks_bridge import TorchattacksBridge, binding_groups

    model, batch, objective, _ = _traced_setup()
    rows = batch.take(torch.tensor([0, 1, 2, 3]))
    rows.pixels[1] = rows.pixels[0]
    texts = list(rows.extra["texts"])
    texts[1] = "" if texts[0] else "a photo of a bag"
    rows.extra["texts"] = texts
    assert len(binding_groups(objective, rows).unique()) >= 2
    bridge = TorchattacksBridge(cls="Square", norm="linf", eps=8 / 255, steps=10)
    calls: list[int] = []
    real = bridge._run

    def counting(*args: object) -> torch.Tensor:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    bridge._run = counting  # type: ignore[method-assign]
    res = bridge.perturb(model, rows, objective, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 1 + len(binding_groups(objective, rows).unique())  # refused whole, then per group
    assert (res.pixels - rows.pixels).abs().max() <= 8 / 255 + 1e-6
