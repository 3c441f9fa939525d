"""Sticky verdicts (rand-v2): a sample that any verdict of the evaluation broke -- a member's check
in the cascade or the final one -- is never published robust, so a randomized defense cannot win a
sample back with a lucky fresh draw. The oracle is independent of the implementation: every call of
the verdict procedure is recorded, and no sample any call judged broken may be robust in the table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from robustbench_mm.attacks.verdict import Verdict, majority
from robustbench_mm.attacks.verdict_rule import published_correct
from robustbench_mm.benchmarking import benchmark_module
from robustbench_mm.errors import ConfigError
from robustbench_mm.runner.protocol import LATEST, load_protocol

from tests.attacks.test_verdict import NoisyLinear, _toy_data

N = 48


def _protocol(tmp: Path, rule: str) -> Path:
    """rand-v2's members at a small budget (the rule, not the members' strength, is under test)."""
    path = tmp / f"sticky-{rule}-v1.yaml"
    path.write_text(f"name: sticky-{rule}-v1\nid: test/{rule}/v1\nversion: 1\nverdict_draws: 16\n"
                    f"verdict_rule: {rule}\neot_draws: 2\n"
                    "classification:\n  members: [rand-apgd-ce, rand-apgd-dlr]\n"
                    "  threat_models:\n    - {norm: linf, eps: 8/255}\n")
    return path


def _spy_votes(monkeypatch: pytest.MonkeyPatch) -> dict[int, bool]:
    """Record, per sample index, whether any call of the verdict judged it wrong (majority of draws)."""
    judged_wrong: dict[int, bool] = {}
    real = Verdict.votes

    def votes(self: Verdict, model: Any, batch: Any) -> Any:
        oks, preds = real(self, model, batch)
        for i, ok in zip(batch.index.tolist(), majority(oks).tolist()):
            judged_wrong[int(i)] = judged_wrong.get(int(i), False) or not ok
        return oks, preds

    monkeypatch.setattr(Verdict, "votes", votes)
    return judged_wrong


def _run(tmp: Path, rule: str, seed: int = 0) -> pd.DataFrame:
    model = NoisyLinear(sigma=0.3)
    x, y = _toy_data(model, n=N)
    torch.manual_seed(seed)  # the toy model draws its noise from the global generator
    res = benchmark_module(model, x, y, norm="linf", eps=8 / 255, version=str(_protocol(tmp, rule)), seed=seed)
    assert res.verdict_draws == 16
    return res.samples


def test_no_sample_any_verdict_broke_is_published_robust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    judged_wrong = _spy_votes(monkeypatch)
    samples = _run(tmp_path, "sticky")
    robust = samples.loc[samples["adv_correct"], "index"].tolist()
    leaked = [i for i in robust if judged_wrong.get(int(i), False)]
    assert not leaked, f"samples judged broken by a verdict but published robust: {leaked}"
    held = samples[samples["final_adv_correct"] & ~samples["adv_correct"]]
    assert len(held) > 0  # the noisy model really has samples the final fresh draws alone would call robust
    assert (held["broken_by"] != "").all() and (held["broken_draws"] >= 8).all()  # the member and its wrong draws
    assert samples.loc[samples["adv_correct"], "correct_draw_fraction"].gt(0.5).all()


def test_final_rule_leaks_what_sticky_holds(tmp_path: Path) -> None:
    """The v1 rule on the same seed publishes exactly the held samples as robust (the leak it fixes)."""
    sticky, final = _run(tmp_path, "sticky"), _run(tmp_path, "final")
    assert (sticky["final_adv_correct"] == final["final_adv_correct"]).all()  # same search, same final draws
    assert final["adv_correct"].sum() > sticky["adv_correct"].sum()
    assert (final["adv_correct"] == final["final_adv_correct"]).all()
    assert not (sticky["adv_correct"] & ~final["adv_correct"]).any()  # sticky never adds a robust sample


def test_sticky_result_is_reproducible_for_a_fixed_seed(tmp_path: Path) -> None:
    a, b = _run(tmp_path, "sticky", seed=3), _run(tmp_path, "sticky", seed=3)
    pd.testing.assert_frame_equal(a, b)


def test_published_correct_rule_table() -> None:
    clean = torch.tensor([True, True, True, False])
    final = torch.tensor([True, True, False, True])
    held = torch.tensor([False, True, False, False])
    assert published_correct("sticky", clean, final, held).tolist() == [True, False, False, False]
    assert published_correct("final", clean, final, held).tolist() == [True, True, False, False]
    with pytest.raises(ConfigError, match="verdict_rule"):
        published_correct("majority", clean, final, held)


def test_rand_v2_is_sticky_and_v1_files_keep_their_identity() -> None:
    rand, std = load_protocol(LATEST["rand"]), load_protocol(LATEST["standard"])
    assert (rand.id, rand.verdict_rule, rand.verdict_draws) == ("mm-aa/rand/v2", "sticky", 16)
    assert (std.id, std.verdict_rule) == ("mm-aa/standard/v4", "sticky")
    assert load_protocol("standard-v2").verdict_rule == "sticky"
    assert rand.config()["verdict_rule"] == "sticky"
    for old in ("rand-v1", "standard-v1"):
        p = load_protocol(old)
        assert p.verdict_rule == "final" and "verdict_rule" not in p.config()  # v1 cell ids unchanged


def test_protocol_rejects_an_unknown_rule(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nid: t/bad/v1\nverdict_rule: majority\n"
                   "classification:\n  members: [apgd-ce]\n  threat_models:\n    - {norm: linf, eps: 8/255}\n")
    with pytest.raises(ConfigError, match="verdict_rule"):
        load_protocol(str(bad))


def test_runner_cell_keeps_member_breaks_on_a_noisy_clip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's path (``evaluate_batch``): clip-tiny made randomized by Gaussian noise on its
    input, the sticky rule, 16-draw verdicts. No sample any check broke is published robust."""
    from robustbench_mm.models.zoo import LoadOptions, load_model
    from robustbench_mm.runner.batch_eval import evaluate_batch
    from robustbench_mm.runner.resolve import CellSpec, resolve

    member = tmp_path / "cheap-ce.yaml"
    member.write_text("name: cheap-ce\nbase: apgd-ce\nversion: 1\nparams:\n  steps: 4\n  eot: 2\n")
    proto = tmp_path / "cheap-v1.yaml"
    proto.write_text(f"name: cheap-v1\nid: test/cheap/v1\nversion: 1\nverdict_rule: sticky\n"
                     f"classification:\n  members: [{member}, {member}]\n"
                     "  threat_models:\n    - {norm: linf, eps: 8/255}\n")
    cell = resolve(CellSpec(model="clip-tiny", attack="x", task="fmnist-zeroshot", norm="linf", eps=8 / 255,
                            n=24, batch_size=24, protocol=str(proto)))
    cell.verdict_draws, cell.verdict_rule = 16, "sticky"
    model = load_model(cell.model_name, LoadOptions(device="cpu"))
    model.feature_transform = lambda raw, px: raw(px + 0.2 * torch.randn_like(px))  # randomized forward
    judged_wrong = _spy_votes(monkeypatch)
    torch.manual_seed(0)
    batch = next(cell.task.examples(n=24, seed=0, batch_size=24, image_size=model.image_size))
    rows = pd.DataFrame(evaluate_batch(cell, model, cell.task.objective(None), batch))
    leaked = [int(i) for i in rows.loc[rows["adv_correct"], "index"] if judged_wrong.get(int(i), False)]
    assert not leaked
    assert (rows["final_adv_correct"] & ~rows["adv_correct"]).sum() > 0  # held broken: the old rule published them
    assert (rows.loc[rows["success"], "broken_by"] != "").all()
    assert set(rows.columns) >= {"broken_draws", "correct_draw_fraction", "final_adv_correct"}
    assert ((rows["correct_draw_fraction"] * 16).round() == rows["correct_draw_fraction"] * 16).all()
