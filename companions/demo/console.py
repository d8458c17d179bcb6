"""What the demo prints: numbered sections, indented detail lines, per-step timings, a summary.

The demo is read by a person at a terminal (and by `tests/e2e/test_demo.py`), so the output
is line-oriented and short: a section header when a step starts, what it shows indented under
it, then `[ 1.23 s] <step> done`. A failure is one line naming the step and the reason; no
tracebacks. Everything is flushed at once, because the test (and `| tee`) read it live.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

from testbed.procs import HarnessError


class DemoError(HarnessError):
    """A step failed; the message says why, in one line, for the person running the demo.
    (The harness's own failures, `HarnessError`, are reported the same way.)"""


class Interrupted(BaseException):  # noqa: N818 - like KeyboardInterrupt, not an error
    """SIGINT or SIGTERM arrived; raised from the signal handler so the cleanup runs."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


@dataclass
class Console:
    out: TextIO = sys.stdout
    timings: list[tuple[str, float, str]] = field(default_factory=list)
    """(step title, seconds, outcome: ok | FAILED | interrupted)."""
    current: str = ""
    started: float = field(default_factory=time.monotonic)
    aliases: list[tuple[str, str]] = field(default_factory=list)
    """(long, short) replacements for `say`: sandbox paths shown as the node sees them."""

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def say(self, text: str, indent: int = 2) -> None:
        for long, short in self.aliases:
            text = text.replace(long, short)
        for part in text.splitlines() or [""]:
            self.line(" " * indent + part)

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        """A numbered section; records its duration whatever happens inside."""
        number = len(self.timings) + 1
        self.current = f"{number}. {title}"
        self.line()
        self.line(f"== {self.current} ==")
        t0 = time.monotonic()
        outcome = "FAILED"
        try:
            yield
            outcome = "ok"
        except Interrupted:
            outcome = "interrupted"
            raise
        finally:
            took = time.monotonic() - t0
            self.timings.append((self.current, took, outcome))
            if outcome == "ok":
                self.line(f"[{took:5.2f} s] {title} done")

    def summary(self, cleanup_seconds: float | None) -> None:
        self.line()
        self.line("== Summary ==")
        width = max([len(t) for t, _, _ in self.timings] + [len("cleanup"), 20])
        for title, took, outcome in self.timings:
            mark = "" if outcome == "ok" else f"  ({outcome})"
            self.line(f"  {title:<{width}} {took:6.2f} s{mark}")
        if cleanup_seconds is not None:
            self.line(f"  {'cleanup':<{width}} {cleanup_seconds:6.2f} s")
        self.line(f"  {'total':<{width}} {time.monotonic() - self.started:6.2f} s")


class CapturedLogs(logging.Handler):
    """Keeps the log lines of the installer and the repair controller, to show them in order
    under the step they belong to instead of interleaved from other threads."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        with self.lock:  # type: ignore[union-attr] - created by Handler.__init__
            self.records.append(record)

    def take(self, prefix: str) -> list[str]:
        """The lines of loggers under `prefix` since the last take, oldest first."""
        with self.lock:  # type: ignore[union-attr]
            mine = [r for r in self.records if r.name.startswith(prefix)]
            self.records = [r for r in self.records if not r.name.startswith(prefix)]
        return [r.getMessage() if r.levelno == logging.INFO
                else f"{r.levelname.lower()}: {r.getMessage()}" for r in mine]
