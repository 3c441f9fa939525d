"""`mmrobust benchmark` and `robustbench_mm.benchmark`: protocol presets, version choice, bad input,
the columns protocol / verdict_draws / broken_by, and the nn.Module path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from robustbench_mm import benchmark
from robustbench_mm.errors import ConfigError
from robustbench_mm.runner.protocol import load_protocol, protocol_names

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "robustbench_mm.cli", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def _quick_protocol(tmp: Path, member_steps: int = 5) -> Path:
    """A small protocol (same structure as the shipped ones) whose members are cheap, for CI."""
    member = tmp / "quick-apgd.yaml"
    member.write_text(f"name: quick-apgd\nbase: apgd-ce\nversion: 1\nparams:\n  steps: {member_steps}\n")
    dlr = tmp / "quick-dlr.yaml"
    dlr.write_text(f"name: quick-dlr\nbase: apgd-ce\nversion: 1\nparams:\n  loss: dlr\n  steps: {member_steps}\n")
    proto = tmp / "quick-v1.yaml"
    proto.write_text(
        "name: quick-v1\nid: test/quick/v1\nversion: 1\nverdict_draws: 8\n"
        f"classification:\n  members: [{member}, {dlr}]\n"
        "  threat_models:\n    - {norm: linf, eps: 8/255}\n    - {norm: l2, eps: 0.5}\n"
        f"generative:\n  members: [{member}]\n  threat_models:\n    - {{norm: linf, eps: 8/255}}\n")
    return proto


def test_shipped_protocols_load_and_match_autoattack() -> None:
    assert {"standard-v1", "rand-v1"} <= set(protocol_names())
    std = load_protocol("standard-v1")
    assert std.id == "mm-aa/standard/v1"
    assert std.families["classification"].members == ("apgd-ce", "apgd-t", "ta-fab-t", "ta-square")
    rand = load_protocol("rand-v1")
    assert rand.id == "mm-aa/rand/v1" and rand.verdict_draws == 16
    from robustbench_mm.presets import load_raw

    for m in rand.families["classification"].members:
        assert load_raw("attack", m)[1]["params"]["eot"] == 20  # AutoAttack's rand: EOT over 20 draws
    assert rand.eot_draws == 20 and rand.config()["eot_draws"] == 20  # part of the protocol's identity
    assert load_raw("attack", "ta-square")[1]["params"]["steps"] == 5000
    assert load_raw("attack", "apgd-t")[1]["params"]["n_targets"] == 9
    config = std.config()  # every member's preset is part of the protocol's identity
    assert set(config["members"]) >= {"apgd-ce", "apgd-t", "ta-fab-t", "ta-square", "apgd-margin"}


@pytest.mark.parametrize("args,needle", [
    (["--model", "clip-tiny", "--version", "v9"], "--version 'v9'"),
    (["--model", "llava-tiny", "--norm", "l2"], "no l2 budget"),
    (["--model", "clip-tiny", "--defense", "fs", "--verdict-draws", "4"], ">= 8"),
    (["--model", "clip-tiny", "--norm", "linf", "--eps", "8"], "did you mean"),
    (["--model", "clip-tiny", "--eps", "8/255"], "needs --norm"),
])
def test_benchmark_bad_input_one_line_exit_2(args: list[str], needle: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from robustbench_mm import cli

    out = tmp_path / "store"
    monkeypatch.setattr(sys, "argv", ["mmrobust", "benchmark", *args, "--n", "4", "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing written before the check


def test_api_bad_input_typed_errors() -> None:
    with pytest.raises(ConfigError, match="needs the evaluation data"):
        benchmark(nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="version"):
        benchmark(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), torch.rand(2, 3, 2, 2), torch.zeros(2).long(),
                  version="nope")
    with pytest.raises(ConfigError, match="no l2 budget"):
        benchmark("llava-tiny", norm="l2", eps=0.5)


def test_benchmark_cli_clip_tiny_writes_protocol_columns(tmp_path: Path) -> None:
    proto = _quick_protocol(tmp_path)
    out = tmp_path / "store"
    res = _cli("benchmark", "--model", "clip-tiny", "--n", "8", "--version", str(proto), "--norm", "linf",
               "--out", str(out))
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if "protocol test/quick/v1" in ln]
    assert len(lines) == 1 and "linf" in lines[0] and "robust" in lines[0]
    asr = pd.read_parquet(out / "asr.parquet")
    assert asr["protocol"].tolist() == ["test/quick/v1"] and asr["verdict_draws"].tolist() == [1]
    samples = pd.read_parquet(out / "samples.parquet")
    broken = samples["success"]
    assert broken.any()
    assert (samples.loc[broken, "broken_by"].isin(["quick-apgd", "quick-dlr"])).all()
    assert (samples.loc[~broken, "broken_by"] == "").all()
    again = _cli("benchmark", "--model", "clip-tiny", "--n", "8", "--version", str(proto), "--norm", "linf",
                 "--out", str(out))
    assert again.returncode == 0 and lines[0] in again.stdout  # resumable: the same cell, same line


@pytest.mark.slow
def test_benchmark_fs_auto_picks_rand_with_k_draw_verdicts(tmp_path: Path) -> None:
    proto = _quick_protocol(tmp_path, member_steps=3)
    from robustbench_mm.benchmarking import plan

    protocol, chosen, specs = plan("clip-tiny", defense="fs", n=4)
    assert chosen == "rand" and protocol.id == "mm-aa/rand/v2" and len(specs) == 2
    out = tmp_path / "store"
    res = _cli("benchmark", "--model", "clip-tiny", "--defense", "fs", "--n", "4", "--norm", "linf",
               "--version", str(proto), "--out", str(out))
    assert res.returncode == 0, res.stderr
    asr = pd.read_parquet(out / "asr.parquet")
    assert asr["verdict_draws"].tolist() == [8]  # the protocol's k for a randomized defense


class _Randomized:
    randomized = True

    def __init__(self, draws: int) -> None:
        self.draws_per_forward = draws


@pytest.mark.parametrize("draws,expected", [(1, 20), (16, 2), (20, 1), (7, 3), (64, 1)])
def test_rand_eot_budget_counts_draws_not_forwards(draws: int, expected: int) -> None:
    rand = load_protocol("rand-v1")
    assert rand.eot_for(_Randomized(draws)) == expected
    assert expected * draws >= rand.eot_draws  # every step still averages >= 20 draws
    assert rand.eot_for(object()) is None  # deterministic defenses: members as their presets say
    assert load_protocol("standard-v1").eot_for(_Randomized(1)) is None


def test_rand_protocol_against_fs_names_the_eot_it_ran() -> None:
    from robustbench_mm.benchmarking import plan
    from robustbench_mm.runner.resolve import resolve

    for model in ("clip-tiny", "llava-tiny"):
        _, _, specs = plan(model, defense="fs", n=4)
        assert [(s.norm, s.eps) for s in specs] == [("linf", 8 / 255), ("l2", 0.5)]  # l2: where FS certifies
        for spec in specs:
            members = resolve(spec).attack.members
            assert [m.eot for m in members] == [2, 2]  # ceil(20 draws / n_inf 16)
            assert all(m.name.endswith("+eot2") for m in members)


@pytest.mark.parametrize("value", [0, -3, "20", 2.5, True])
def test_protocol_rejects_bad_eot_draws(value: object, tmp_path: Path) -> None:
    proto = tmp_path / "bad.yaml"
    proto.write_text(f"name: bad\nid: t/bad/v1\neot_draws: {value!r}\n"
                     "classification:\n  members: [apgd-ce]\n  threat_models:\n    - {norm: linf, eps: 8/255}\n")
    with pytest.raises(ConfigError, match="eot_draws"):
        load_protocol(str(proto))


def test_ensemble_eot_only_touches_members_with_eot() -> None:
    from robustbench_mm.attacks.ensemble import Ensemble

    ens = Ensemble(attacks=("rand-apgd-ce", "ta-square", "apgd-ce"), eot=3, steps=2)
    assert [m.name for m in ens.members] == ["rand-apgd-ce+eot3", "ta-square", "apgd-ce+eot3"]
    assert ens.members[0].eot == 3 and not hasattr(ens.members[1], "eot")
    same = Ensemble(attacks=("rand-apgd-ce",), eot=20, steps=2)
    assert same.members[0].name == "rand-apgd-ce"  # the preset's own value: no suffix
    with pytest.raises(ConfigError, match="eot"):
        Ensemble(attacks=("apgd-ce",), eot=0)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Linear(4 * 4 * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def test_api_on_plain_module_three_lines(tmp_path: Path) -> None:
    proto = _quick_protocol(tmp_path)  # the standard version's full cost is measured by scripts/bench_protocol.py
    model = SmallCNN().eval()
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10  # two samples the model gets wrong: never robust
    res = benchmark(model, x, y, norm="linf", eps=2 / 255, version=str(proto), return_adversarial=True)
    assert res.protocol == "test/quick/v1" and res.version == "quick" and res.verdict_draws == 1
    assert res.clean_accuracy == pytest.approx(10 / 12)
    assert 0 <= res.robust_accuracy < res.clean_accuracy
    assert len(res.samples) == 12 and not res.samples["adv_correct"][:2].any()
    broken = res.samples["success"]
    assert set(res.samples.loc[broken, "broken_by"]) <= {"quick-apgd", "quick-dlr"}
    assert res.adversarial is not None and float((res.adversarial - x).abs().max()) <= 2 / 255 + 1e-6
    with torch.no_grad():  # the table's verdict is the model's own fp32 prediction on the returned images
        assert (model(res.adversarial).argmax(1) == y).float().mean().item() == pytest.approx(res.robust_accuracy)


class Noisy(SmallCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + 0.2 * torch.randn_like(x))  # type: ignore[no-any-return]


def test_api_auto_detects_randomized_module() -> None:
    model = Noisy().eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    from robustbench_mm.benchmarking import choose_version
    from robustbench_mm.attacks.verdict import is_randomized

    assert is_randomized(model, x) and choose_version("auto", True) == "rand"
    assert choose_version("auto", False) == "standard"
