"""The CLI's progress display for cells and grids (rich on a terminal, log lines otherwise)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Iterator

import typer

from robustbench_mm.progress import LogReporter, reporting

# seconds between progress lines when stderr is not a terminal (override: MMROBUST_PROGRESS_EVERY)
LOG_EVERY = 5.0


class RichReporter:
    """A transient bar: samples done of ``total``, the attack member running, elapsed and ETA."""

    def __init__(self, label: str, total: int) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.label = label
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=True)
        self.job = self.bar.add_task(label, total=total)

    def advance(self, k: int) -> None:
        self.bar.advance(self.job, k)

    def member(self, name: str, alive: int | None = None) -> None:
        self.bar.update(self.job, description=f"{self.label} [{name}]")


@contextlib.contextmanager
def _logs_above(bar: Any) -> Iterator[None]:
    """Log records written while the bar is live go through rich's stderr proxy, so each warning
    prints on its own line above the bar instead of being glued to it."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)
                and getattr(h, "stream", None) is sys.__stderr__]
    for h in handlers:
        h.setStream(sys.stderr)  # rich's proxy while the bar is live
    try:
        yield
    finally:
        for h in handlers:
            h.setStream(sys.__stderr__)


@contextlib.contextmanager
def make_reporter(label: str, total: int) -> Iterator[Any]:
    """Install a reporter for the cell(s) run inside the block (see ``robustbench_mm.progress``)."""
    if sys.stderr.isatty():
        rich_reporter = RichReporter(label, total)
        with rich_reporter.bar, reporting(rich_reporter), _logs_above(rich_reporter.bar):
            yield rich_reporter
        return
    every = float(os.environ.get("MMROBUST_PROGRESS_EVERY", LOG_EVERY))
    log_reporter = LogReporter(label, total, lambda line: typer.echo(line, err=True), every=every)
    with reporting(log_reporter):
        yield log_reporter
