"""Progress inside a cell: samples per batch and the attack member running, with an ETA.

The runner reports finished samples through its ``progress(k)`` callback; attacks that run several
members (ensembles) announce each member through :func:`member`. Both reach the reporter the caller
installed with :func:`reporting` (the CLI's bar on a terminal, a log line every few seconds
otherwise); without one they cost nothing. It sits below the attacks and the runner (it imports
nothing of the package), so an attack announces its members without knowing who listens.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Callable, Iterator, Protocol


class Reporter(Protocol):
    def advance(self, k: int) -> None: ...

    def member(self, name: str, alive: int | None = None) -> None: ...


_CURRENT: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("mmrobust_progress", default=None)


@contextlib.contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    token = _CURRENT.set(reporter)
    try:
        yield reporter
    finally:
        _CURRENT.reset(token)


def member(name: str, alive: int | None = None) -> None:
    """An ensemble starts running ``name`` on the current batch, on ``alive`` samples still standing."""
    reporter = _CURRENT.get()
    if reporter is not None:
        reporter.member(name, alive)


def eta_seconds(done: int, total: int, elapsed: float) -> float | None:
    """Remaining seconds at the rate so far; None before the first sample finishes."""
    if done <= 0 or total <= 0:
        return None
    return max(0.0, elapsed * (total - done) / done)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


class LogReporter:
    """Plain lines for non-terminals (batch jobs): at most one every ``every`` seconds, plus the last.

    ``emit`` receives lines like ``llava-tiny / pgd / none: 32/64 samples (50%), member apgd-ce,
    12s elapsed, ETA 12s``.
    """

    def __init__(self, label: str, total: int, emit: Callable[[str], None], every: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.emit, self.every, self.clock = label, total, emit, every, clock
        self.done, self.current = 0, ""
        self.start = self.last = clock()

    def _line(self) -> str:
        elapsed = self.clock() - self.start
        pct = 100.0 * self.done / self.total if self.total else 0.0
        running = f", member {self.current}" if self.current and self.done < self.total else ""
        return (f"{self.label}: {self.done}/{self.total} samples ({pct:.0f}%){running}, "
                f"{fmt_seconds(elapsed)} elapsed, ETA {fmt_seconds(eta_seconds(self.done, self.total, elapsed))}")

    def _maybe(self, force: bool = False) -> None:
        now = self.clock()
        if force or now - self.last >= self.every:
            self.last = now
            self.emit(self._line())

    def advance(self, k: int) -> None:
        self.done += k
        self._maybe(force=self.done >= self.total)

    def member(self, name: str, alive: int | None = None) -> None:
        self.current = name
        self._maybe()
