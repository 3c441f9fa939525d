"""Our FAB-T (``fab-t``) against torchattacks' FAB-T, on the small trained network of ``conftest``.

FAB without a random start is deterministic, so the comparison is per sample: the same samples
must be broken. The projection is checked against the published sort-based algorithm on problems
of every kind (reachable inside the box or not, the plane on either side, flat coordinates)."""

from __future__ import annotations

import pytest
import torch
import torchattacks
from torch import Tensor, nn
from torchattacks.attacks.fab import projection_linf

from robustbench_mm.attacks import apgd, build
from robustbench_mm.attacks.fab_projection import project_linf
from robustbench_mm.attacks.guard import check_valid
from robustbench_mm.errors import ConfigError

EPS = 0.06  # breaks about half of the held-out set: neither side can pass by breaking all or none


def _problems(seed: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(40):
        rows, dims = 12, int(torch.randint(2, 400, (1,), generator=g))
        t = torch.randint(0, 256, (rows, dims), generator=g) / 255.0 if i % 2 else torch.rand(rows, dims, generator=g)
        w = torch.randn(rows, dims, generator=g) * (torch.rand(rows, dims, generator=g) > 0.2)  # some flat coordinates
        spread = (0.01, 0.3, 3.0, 30.0)[i % 4]  # near the point ... far outside what the box allows
        b = (w * t).sum(1) + spread * torch.randn(rows, generator=g) * w.abs().sum(1) / dims
        out.append((t.float(), w, b))
    return out


def test_projection_equals_the_published_algorithm() -> None:
    for t, w, b in _problems(0):
        ours, theirs = project_linf(t, w, b), projection_linf(t, w, b)
        assert torch.allclose(ours, theirs, atol=1e-5), float((ours - theirs).abs().max())
        z = t + ours
        assert float(z.min()) >= -1e-6 and float(z.max()) <= 1 + 1e-6  # inside the box
        reachable = (w.abs() * torch.where(w * torch.sign((w * t).sum(1) - b)[:, None] > 0, t, 1 - t)).sum(1) > \
            ((w * t).sum(1) - b).abs()
        assert torch.allclose((w * z).sum(1)[reachable], b[reachable], atol=1e-3)  # on the plane where it can be


def _broken(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, eps: float) -> Tensor:
    with torch.no_grad():
        wrong = model(x_adv).argmax(1) != y
    return wrong & ((x_adv - x).flatten(1).abs().amax(1) <= eps + 1e-6)


@pytest.fixture(scope="module")
def reference(fmnist_model, eval_set) -> Tensor:  # type: ignore[no-untyped-def]
    model, _ = fmnist_model
    x, y = eval_set.x[:64], eval_set.y[:64]
    adv = torchattacks.FAB(model, norm="Linf", eps=EPS, steps=100, multi_targeted=True, n_classes=10, n_restarts=1,
                           seed=0)(x, y)
    return _broken(model, x, adv, y, EPS)


def test_breaks_the_samples_torchattacks_fab_t_breaks(fmnist_model, eval_set, reference: Tensor) -> None:
    model, _ = fmnist_model
    x, y = eval_set.x[:64], eval_set.y[:64]
    adv = build("fab-t", eps=EPS)(model, x, y)
    check_valid(x, adv, "linf", EPS)
    ours = _broken(model, x, adv, y, EPS)
    assert 0.2 < float(reference.float().mean()) < 0.8, "the comparison would be vacuous"
    assert torch.equal(ours, reference), f"{int((ours != reference).sum())} samples differ"


def test_comparison_detects_a_weak_fab(fmnist_model, eval_set, reference: Tensor) -> None:
    """Negative control: 5 steps instead of 100 must break fewer samples than the reference."""
    model, _ = fmnist_model
    x, y = eval_set.x[:64], eval_set.y[:64]
    weak = _broken(model, x, build("fab-t", eps=EPS, steps=5)(model, x, y), y, EPS)
    assert int(weak.sum()) < int(reference.sum())


@pytest.mark.parametrize("rows_per_chunk", [1, 20])  # one row at a time; two targets of ten samples
def test_result_does_not_depend_on_how_targets_are_chunked(fmnist_model, eval_set, monkeypatch,
                                                           rows_per_chunk: int) -> None:
    model, _ = fmnist_model
    x, y = eval_set.x[:10], eval_set.y[:10]
    whole = build("fab-t", eps=EPS, steps=30)(model, x, y)
    monkeypatch.setitem(apgd.STACKED_ROWS, "cpu", rows_per_chunk)
    assert torch.equal(build("fab-t", eps=EPS, steps=30)(model, x, y), whole)


def test_l2_runs_torchattacks_fab(fmnist_model, eval_set) -> None:
    model, _ = fmnist_model
    x, y = eval_set.x[:8], eval_set.y[:8]
    ours = build("fab-t", norm="l2", eps=1.0, steps=10)(model, x, y)
    check_valid(x, ours, "l2", 1.0)
    assert bool((ours != x).any())


@pytest.mark.parametrize("bad", [{"n_targets": 0}, {"beta": 1.0}, {"eta": 0.5}, {"alpha_max": 2.0}, {"eps": -1.0}])
def test_bad_parameters_are_one_clear_error(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        build("fab-t", **bad)


def test_rows_bound_to_their_own_text_match_one_row_at_a_time() -> None:
    """On a task whose logits depend on each image's own text (crmt's fused task), the stacked rows
    keep their texts: the whole batch gives each sample what it gets attacked alone."""
    from robustbench_mm.models.zoo import load_model
    from robustbench_mm.tasks.crmt_task import MultimodalClassification

    model = load_model("clip-tiny")
    task = MultimodalClassification(p_corrupt=0.5, p_missing=0.2)
    batch = task.load_examples(list(range(5)), model.image_size)
    objective, attack = task.objective(), build("fab-t", eps=8 / 255, steps=8)
    whole = attack.perturb(model, batch, objective, generator=torch.Generator().manual_seed(0))
    check_valid(batch.pixels, whole.pixels, "linf", 8 / 255)
    assert bool((whole.pixels != batch.pixels).any()), "nothing moved: the comparison would be vacuous"
    for i in range(len(batch)):
        alone = attack.perturb(model, batch.take(torch.tensor([i])), objective,
                               generator=torch.Generator().manual_seed(0))
        assert torch.allclose(alone.pixels[0], whole.pixels[i], atol=1e-5), i
