"""Real TCP through a netns: a listener that reports each connection's original destination
(SO_ORIGINAL_DST), and a client that connects as a given uid. Both run `testbed/sockets.py`
inside the netns, as a separate process; the listener is awaited on its "ready" line."""

from __future__ import annotations

import subprocess
import sys
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
