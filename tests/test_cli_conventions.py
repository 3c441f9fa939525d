"""CLI conventions: bad input rejected before any model loads or the store is touched (exit 2, one
line naming the fix), grids checked cell by cell before the first runs, -h/--version/--debug, list
grids, progress lines off a terminal. Runs ``cli.main`` in-process, so each case is milliseconds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cli_invoke import invoke  # tests/cli_invoke.py
from robustbench_mm import cli
from robustbench_mm.progress import LogReporter


@pytest.fixture
def no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any model load fails the test: every rejection must come before it."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the bad input was rejected")

    monkeypatch.setattr("robustbench_mm.runner.cell.load_model", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    return invoke(monkeypatch, capsys, *args)


BAD_RUNS = [
    (["--model", "nosuch"], "Unknown model 'nosuch'"),
    (["--model", "clip-tiny", "--attack", "pgdd"], "Did you mean: pgd"),
    (["--model", "clip-tiny", "--defense", "nosuch"], "Unknown defense"),
    (["--model", "clip-tiny", "--task", "nosuch"], "Unknown task"),
    (["--model", "clip-tiny", "--eps", "2"], "command line (--eps 2"),
    (["--model", "clip-tiny", "--eps", "abc"], "--eps='abc' is not a number"),
    (["--model", "clip-tiny", "--eps", "-1"], "--eps -1 must be a non-negative budget"),
    (["--model", "clip-tiny", "--n", "0"], "--n 0 must be a positive"),
    (["--model", "clip-tiny", "--n", "100000"], "dataset size"),
    (["--model", "clip-tiny", "--task", "fmnist-vqa"], "use --task fmnist-zeroshot"),
    (["--model", "llava-tiny", "--defense", "tecoa"], "does not apply to llava"),
    (["--model", "clip-tiny", "--dtype", "fp8"], "--dtype 'fp8'"),
    (["--model", "clip-tiny", "--load-dtype", "fp8"], "--load-dtype 'fp8'"),
    (["--model", "clip-tiny", "--batch-size", "0"], "--batch-size 0"),
    (["--model", "clip-tiny", "--device", "tpu"], "--device 'tpu'"),
    (["--model", "clip-tiny", "--device-map", "balanced"], "--device-map 'balanced'"),
    (["--model", "clip-tiny", "--revision", "v1"], "--revision applies to Hugging Face ids"),
    (["--model", "no-such-org/no-such-model"], "hf download no-such-org/no-such-model"),
]


@pytest.mark.parametrize("args,needle", BAD_RUNS, ids=[" ".join(a) for a, _ in BAD_RUNS])
def test_bad_run_input_rejected_before_load_and_store(args: list[str], needle: str, tmp_path: Path, no_load: None,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "store"
    code, out, err = _main(monkeypatch, capsys, "run", *args, "--out", str(out_dir))
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not out_dir.exists()  # store (and its lock) untouched
    if "--eps" in args and args[args.index("--eps") + 1] == "2":
        assert "pgd.yaml" not in err  # the flag is to blame, not the preset file


def test_grid_checks_every_cell_before_the_first_runs(tmp_path: Path, no_load: None,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "store"
    # the first cells (clip-tiny) are fine; llava-tiny x tecoa, the last ones, are not
    code, _, err = _main(monkeypatch, capsys, "grid", "--models", "clip-tiny,llava-tiny", "--attacks", "none,pgd",
                         "--defenses", "none,tecoa", "--out", str(out_dir))
    assert code == 2 and "grid cell llava-tiny / none / tecoa" in err and "nothing was run" in err, err
    assert not out_dir.exists()
    code, _, err = _main(monkeypatch, capsys, "grid", "--preset", "smoke", "--n", "0", "--out", str(out_dir))
    assert code == 2 and "--n 0" in err and not out_dir.exists()


@pytest.mark.parametrize("attack,needle", [("text-embed", "zero-shot classification task"),
                                           ("aa-white", "apgd-t needs a classification objective"),
                                           ("ta-square", "needs a classification task"),
                                           ("mf-it", "mf-it needs a text tower")])
def test_grid_rejects_an_attack_the_task_cannot_take_before_any_cell(
        attack: str, needle: str, tmp_path: Path, no_load: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An attack that cannot attack a task (found when the cell ran, after earlier cells had written
    their rows) is now a resolve-time error: the grid writes nothing."""
    out_dir = tmp_path / "store"
    code, _, err = _main(monkeypatch, capsys, "grid", "--models", "llava-tiny", "--attacks", f"pgd,{attack}",
                         "--tasks", "fmnist-vqa", "--n", "2", "--out", str(out_dir))
    assert code == 2 and f"grid cell llava-tiny / {attack}" in err and needle in err and "nothing was run" in err, err
    assert not out_dir.exists()


def test_grid_preset_skips_only_pairs_of_a_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """zoo-clean lists tasks for both families: each model keeps the tasks it can do."""
    from robustbench_mm import api
    from robustbench_mm.runner.resolve import CellSpec

    cells = api.plan_grid(None, "zoo-clean", CellSpec(model=""))
    pairs = {(c.entry.name, c.task.name) for c in cells}
    assert ("clip-tiny", "fmnist-zeroshot") in pairs and ("llava-tiny", "fmnist-vqa") in pairs
    assert ("clip-tiny", "fmnist-vqa") not in pairs and len(cells) == 6


def test_show_on_a_directory_that_is_not_a_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = _main(monkeypatch, capsys, "show", str(tmp_path))
    assert code == 2 and "not an mmrobust result store" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing created in it
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _main(monkeypatch, capsys, "show", str(empty))
    assert code == 2 and list(empty.iterdir()) == []


def test_debug_after_the_subcommand_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, no_load: None,
                                                        tmp_path: Path) -> None:
    from robustbench_mm.errors import UnknownNameError

    monkeypatch.setattr(sys, "argv", ["mmrobust", "run", "--model", "nosuch", "--debug", "--out", str(tmp_path / "s")])
    monkeypatch.setitem(cli.STATE, "debug", False)
    with pytest.raises(UnknownNameError):
        cli.main()


@pytest.mark.parametrize("args", [["-h"], ["run", "-h"], ["grid", "-h"], ["list", "-h"], ["show", "-h"],
                                  ["store", "check", "-h"], ["train", "-h"], ["sanity", "-h"]])
def test_short_help_everywhere(args: list[str], monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _main(monkeypatch, capsys, *args)
    assert code == 0 and "Usage" in out


def test_every_option_has_help(monkeypatch: pytest.MonkeyPatch) -> None:
    import typer.main

    group = typer.main.get_command(cli.app)
    commands = dict(group.commands)  # type: ignore[attr-defined]
    commands.update({f"store {k}": v for k, v in commands.pop("store").commands.items()})
    missing = [f"{name} {p.opts[0]}" for name, cmd in commands.items() for p in cmd.params
               if getattr(p, "help", None) in (None, "") and p.param_type_name == "option"]
    assert missing == []


def test_version_and_list_grids(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _main(monkeypatch, capsys, "--version")
    assert code == 0 and out.startswith("mmrobust ")
    code, out, _ = _main(monkeypatch, capsys, "list", "grids", "--json")
    import json

    grids = {g["name"]: g for g in json.loads(out)}
    assert code == 0 and grids["smoke"]["cells"] == 6 and "zoo-clean" in grids


def test_progress_lines_off_a_terminal() -> None:
    now = [0.0]
    lines: list[str] = []
    rep = LogReporter("clip-tiny / aa-white / none", 64, lines.append, every=5.0, clock=lambda: now[0])
    rep.member("apgd-ce")
    now[0] = 2.0
    rep.advance(16)  # < 5 s since the start: quiet
    now[0] = 6.0
    rep.member("apgd-t")  # a member starting after 5 s: one line with the running member
    now[0] = 8.0
    rep.advance(16)
    now[0] = 16.0
    rep.advance(16)
    rep.advance(16)  # the last batch always prints
    assert len(lines) == 3
    assert "16/64 samples (25%), member apgd-t, 6s elapsed, ETA 18s" in lines[0]
    assert "48/64" in lines[1] and lines[-1].endswith("64/64 samples (100%), 16s elapsed, ETA 0s")


def test_alias_fallback_names_the_model_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                            caplog: pytest.LogCaptureFixture, no_load: None, tmp_path: Path) -> None:
    """``--model llava`` offline runs llava-tiny: the warning has its own line and the progress
    label and the cell name llava-tiny, never "llava"."""
    from robustbench_mm import api
    from robustbench_mm.runner.cell import CellSummary

    seen = {}

    def fake_run_cell(cell, *, out, force, progress):  # type: ignore[no-untyped-def]
        seen["model"] = cell.entry.name
        progress(int(cell.spec.n))
        row = {"model": cell.entry.name, "attack": cell.attack.name, "defense": cell.defense.name,
               "task": cell.task.name, "norm": "linf", "eps": 8 / 255, "steps": 10, "n": 4}
        row.update(dict.fromkeys(["clean_accuracy", "robust_accuracy", "asr", "asr_low", "asr_high", "max_linf",
                                  "samples_per_s"], 0.0))
        return CellSummary(cell.cell_id, "ok", row)

    monkeypatch.setattr(api, "run_cell", fake_run_cell)
    monkeypatch.setenv("MMROBUST_PROGRESS_EVERY", "0")
    code, out, err = _main(monkeypatch, capsys, "run", "--model", "llava", "--n", "4", "--out", str(tmp_path / "s"))
    assert code == 0 and seen["model"] == "llava-tiny"
    warnings = [r.getMessage() for r in caplog.records if "llava-1.5-7b" in r.getMessage()]
    assert len(warnings) == 1 and "running the bundled llava-tiny" in warnings[0]  # one record = its own line
    lines = err.strip().splitlines()
    assert lines and all(ln.startswith("llava-tiny / pgd / none: ") for ln in lines)  # progress names the model run
    assert out.startswith("llava-tiny | pgd")  # and so does the summary
