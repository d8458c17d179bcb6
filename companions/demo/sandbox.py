"""The sandboxed node's resources, each registered for cleanup the moment it exists.

Everything the demo creates (network namespaces, long-running processes, the temp dir, the API
stand-in, the repair controller) is pushed onto one undo stack as soon as it is created, so
the `finally` of the demo releases exactly what exists, in reverse order, whether the run
succeeded, failed half-way or was interrupted by Ctrl-C. Each undo runs on its own: one that
fails is reported and the rest still run.

Long-running processes (pause containers, the proxy, the echo server) start in their own
session: a Ctrl-C at the terminal then reaches only the demo, which stops them in order,
instead of racing them to the exit. Their output is read by a thread into a queue, so the demo
waits for a given line ("ready") instead of sleeping.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from companions.demo.console import DemoError

NETNS_PREFIX = "icni-demo"
NETNS_DIR = Path("/var/run/netns")


def run(argv: Sequence[str], *, input: str | None = None, env: dict[str, str] | None = None,
        timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    """A short command; on a non-zero exit (with `check`) a DemoError quoting its stderr."""
    try:
        proc = subprocess.run(list(argv), input=input, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False, start_new_session=True)
    except FileNotFoundError as exc:
        raise DemoError(f"{argv[0]}: not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise DemoError(f"{' '.join(argv)}: no answer after {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise DemoError(f"{' '.join(argv)}: exit {proc.returncode}: {last[0]}")
    return proc


class Proc:
    """A long-running child whose merged stdout/stderr lines can be awaited."""

    def __init__(self, name: str, argv: Sequence[str]) -> None:
        self.name = name
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.popen = subprocess.Popen(list(argv), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, bufsize=1,
                                      start_new_session=True)
        threading.Thread(target=self._read, name=f"read-{name}", daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            self._queue.put(raw.rstrip("\n"))
        self._queue.put(None)

    def wait_line(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        """The next line matching `predicate`; DemoError on timeout or if the process ends."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoError(f"{self.name}: no {what} after {timeout:.0f} s")
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                tail = "; ".join(self.lines[-2:]) or "no output"
                raise DemoError(f"{self.name} exited ({self.popen.wait()}) before {what}: {tail}")
            self.lines.append(line)
            if predicate(line):
                return line

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


@dataclass
class Sandbox:
    """Owns the temp dir, the netns and the processes of one demo run; `close()` undoes all."""

    root: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:4])
    netns: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    _undo: list[tuple[str, Callable[[], object]]] = field(default_factory=list)

    @classmethod
    def create(cls, base: str | None = None) -> Sandbox:
        import tempfile

        box = cls(Path(tempfile.mkdtemp(prefix="icni-demo-", dir=base)))
        box.on_close(f"remove {box.root}", lambda: shutil.rmtree(box.root, ignore_errors=True))
        return box

    def on_close(self, what: str, undo: Callable[[], object]) -> None:
        self._undo.append((what, undo))

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def ns_name(self, role: str) -> str:
        """`icni-demo-<run id>-<role>`: unique per run, so two demos never collide."""
        return f"{NETNS_PREFIX}-{self.run_id}-{role}"

    def add_netns(self, role: str) -> str:
        name = self.ns_name(role)
        run(["ip", "netns", "add", name])
        self.netns.append(name)
        self.on_close(f"delete netns {name}",
                      lambda: run(["ip", "netns", "delete", name], check=False))
        run(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    def start(self, name: str, argv: Sequence[str]) -> Proc:
        proc = Proc(name, argv)
        self.procs.append(proc)
        self.on_close(f"stop {name}", proc.stop)
        return proc

    def start_in(self, netns: str, name: str, argv: Sequence[str]) -> Proc:
        return self.start(name, ["ip", "netns", "exec", netns, *argv])

    def pause(self, netns: str, pod: str) -> Proc:
        """The pod's "pause container": the long-lived process the repair controller finds in
        /proc by the pod's IP (a netns with no process in it is invisible there)."""
        proc = self.start_in(netns, f"pause container of {pod}",
                             ["sh", "-c", "echo ready; exec sleep infinity"])
        proc.wait_line(lambda ln: ln == "ready", 10, "ready")
        return proc

    def close(self) -> list[str]:
        """Undo everything, newest first; returns one line per undo that failed."""
        problems = []
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:  # keep going: the rest must still be released
                problems.append(f"{what}: {exc}")
        return problems


def leftover_netns(prefix: str) -> list[str]:
    """Named netns starting with `prefix` (the demo's own check that nothing is left)."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []
