"""Commands and long-running processes of the harness, each bounded in time.

`run` is the one way to run a short command (`sh` when only its stdout matters); a failure is
a `HarnessError` quoting the command and its last stderr line, never a hang. `Proc` is a
long-running child (a pause container, a proxy, a server) whose output lines are awaited
instead of slept on, stopped by its own handle (its own session: SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence


class HarnessError(RuntimeError):
    """Something the harness was asked to do could not be done; the message says why in one
    line (the demo prints it as is)."""


def run(argv: Sequence[str], *, input: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A short command, in its own session (a Ctrl-C at the terminal reaches only us); with
    `check`, a non-zero exit is a HarnessError quoting its stderr."""
    try:
        proc = subprocess.run(list(argv), input=input, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False, start_new_session=True)
    except FileNotFoundError as exc:
        raise HarnessError(f"{argv[0]}: not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{' '.join(argv)}: no answer after {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise HarnessError(f"{' '.join(argv)}: exit {proc.returncode}: {last[0]}")
    return proc


def sh(*argv: str, input: str | None = None, check: bool = True, timeout: float = 60) -> str:
    """`run` for the common case: the command's stdout."""
    return run(argv, input=input, check=check, timeout=timeout).stdout


class Proc:
    """A long-running child whose merged stdout/stderr lines can be awaited."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None) -> None:
        self.name = name
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.popen = subprocess.Popen(list(argv), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, bufsize=1,
                                      start_new_session=True, env=env, cwd=cwd)
        threading.Thread(target=self._read, name=f"read-{name}", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self._queue.put(raw.rstrip("\n"))
        self._queue.put(None)

    def wait_line(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        """The next line matching `predicate`; HarnessError on timeout or if the process
        ends first."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HarnessError(f"{self.name}: no {what} after {timeout:.0f} s")
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)  # later waits see the end too
                tail = "; ".join(self.lines[-2:]) or "no output"
                raise HarnessError(f"{self.name} exited ({self.popen.wait()}) before {what}: "
                                   f"{tail}")
            self.lines.append(line)
            if predicate(line):
                return line

    def rest(self, timeout: float = 30) -> list[str]:
        """Every line still to come, once the process has exited by itself."""
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"{self.name}: still running after {timeout:.0f} s") from exc
        out = []
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.lines.append(line)
            out.append(line)
        self._queue.put(None)
        return out

    def stop(self) -> None:
        """SIGTERM to its session, SIGKILL if it has not exited 3 s later."""
        if self.popen.poll() is None:
            for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.popen.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
