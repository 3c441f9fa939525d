"""``mmrobust ARGS`` through the console entry point, in the test's process (no second torch import)."""

from __future__ import annotations

import sys

import pytest

from robustbench_mm import cli


def invoke(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one CLI call (``--debug`` off, as a user runs it)."""
    monkeypatch.setattr(sys, "argv", ["mmrobust", *args])
    monkeypatch.setitem(cli.STATE, "debug", False)
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
