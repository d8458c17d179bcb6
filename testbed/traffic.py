"""Real TCP through a netns: a listener that reports each connection's original destination
(SO_ORIGINAL_DST), and a client that connects as a given uid. Both run `testbed/sockets.py`
inside the netns, as a separate process; the listener is awaited on its "ready" line.

`Server` and `Traffic` tell where connections land: each server says its name ("proxy" on
15001 in the pod, "direct" at the real destination), and `Traffic` connects back to back as
the app's uid and tallies what it was told, so a test can count connections that skipped the
proxy while something changes the pod's rules. `argv` is how a process is started in a netns
(`ip netns exec` by default; a user-namespaced pod gives `testbed.userns.inside`'s)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from testbed.cleanup import Cleanup
from testbed.procs import Proc

SOCKETS = str(Path(__file__).with_name("sockets.py"))


class Listener:
    """`sockets.py listen` inside a netns, ready once constructed."""

    def __init__(self, ns: str, port: int, count: int = 1, cleanup: Cleanup | None = None):
        self.proc = Proc(f"listener on {port} in {ns}",
                         ["ip", "netns", "exec", ns, sys.executable, SOCKETS, "listen",
                          str(port), str(count)])
        if cleanup is not None:
            cleanup.add(f"stop {self.proc.name}", self.stop)
        try:
            self.proc.wait_line(lambda ln: ln == "ready", 30, "ready line")
        except Exception:
            self.stop()
            raise

    def lines(self) -> list[str]:
        """What it printed after "ready", once it has taken its `count` connections."""
        return [ln for ln in self.proc.rest() if ln]

    def stop(self) -> None:
        self.proc.stop()


def connect(ns: str, host: str, port: int, uid: int | None = None) -> tuple[int, str]:
    """`sockets.py connect` inside `ns`: (exit status, what it printed)."""
    argv = ["ip", "netns", "exec", ns, sys.executable, SOCKETS, "connect", host, str(port)]
    if uid is not None:
        argv.append(str(uid))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode, proc.stdout.strip()


Launcher = Callable[[int, Sequence[str]], list[str]]
"""(uid, `sockets.py` arguments) -> argv that runs it in the pod as that uid."""


def netns_launcher(ns: str) -> Launcher:
    """`ip netns exec` (uid 0; `probe` drops to its uid itself)."""
    return lambda uid, args: ["ip", "netns", "exec", ns, sys.executable, SOCKETS, *args]


class Server:
    """`sockets.py serve`: says `name` to every connection; ready once constructed."""

    def __init__(self, launch: Launcher, port: int, name: str, cleanup: Cleanup) -> None:
        self.proc = Proc(f"{name} server on {port}", launch(0, ["serve", str(port), name]))
        cleanup.add(f"stop {self.proc.name}", self.proc.stop)
        self.proc.wait_line(lambda ln: ln == "ready", 30, "ready line")


class Traffic:
    """`sockets.py probe` without end: connections one after the other as `uid`."""

    def __init__(self, launch: Launcher, host: str, port: int, uid: int,
                 cleanup: Cleanup) -> None:
        self.proc = Proc(f"traffic to {host}:{port}", launch(uid, ["probe", host, str(port),
                                                                   str(uid)]))
        cleanup.add(f"stop {self.proc.name}", self.proc.stop)

    def more(self, n: int = 1, timeout: float = 60) -> None:
        """Wait until `n` connections that began after this call have been answered (or
        failed): the probe stamps each with the system-wide monotonic clock, so one that was
        on its way or still in a pipe when something changed is not counted."""
        since = time.monotonic()
        seen = 0
        while seen < n:
            line = self.proc.wait_line(lambda ln: ln.startswith(("got ", "fail ")), timeout,
                                       "a connection's outcome")
            seen += float(line.rsplit(" ", 1)[1]) > since

    def stop(self) -> Counter[str]:
        """Stop it; how many connections each server (or failure) answered."""
        self.proc.stop()
        self.proc.rest()
        return Counter(ln.split(" ")[1] for ln in self.proc.lines
                       if ln.startswith(("got ", "fail ")))
