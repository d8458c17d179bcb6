"""The sandboxed node's resources, each registered for cleanup the moment it exists.

Everything the demo creates (network namespaces, long-running processes, the temp dir, the API
stand-in, the repair controller) goes on one undo stack (`testbed.cleanup.Cleanup`) as soon as
it is created, so the `finally` of the demo releases exactly what exists, in reverse order,
whether the run succeeded, failed half-way or was interrupted by Ctrl-C. Each undo runs on its
own: one that fails is reported and the rest still run.

Long-running processes (pause containers, the proxy, the echo server) start in their own
session (`testbed.procs.Proc`): a Ctrl-C at the terminal then reaches only the demo, which
stops them in order, instead of racing them to the exit. Their output is read by a thread, so
the demo waits for a given line ("ready") instead of sleeping.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from testbed import netns as nsutil
from testbed.cleanup import Cleanup
from testbed.procs import Proc

NETNS_PREFIX = "icni-demo"


@dataclass
class Sandbox:
    """Owns the temp dir, the netns and the processes of one demo run; `close()` undoes all."""

    root: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:4])
    netns: list[str] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    cleanup: Cleanup = field(default_factory=Cleanup)

    @classmethod
    def create(cls, base: str | None = None) -> Sandbox:
        box = cls(Path(tempfile.mkdtemp(prefix="icni-demo-", dir=base)))
        box.on_close(f"remove {box.root}", lambda: shutil.rmtree(box.root, ignore_errors=True))
        return box

    def on_close(self, what: str, undo: Callable[[], object]) -> None:
        self.cleanup.add(what, undo)

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def ns_name(self, role: str) -> str:
        """`icni-demo-<run id>-<role>`: unique per run, so two demos never collide."""
        return f"{NETNS_PREFIX}-{self.run_id}-{role}"

    def add_netns(self, role: str) -> str:
        name = nsutil.create_netns(self.cleanup, self.ns_name(role)).name
        self.netns.append(name)
        return name

    def start_in(self, netns: str, name: str, argv: Sequence[str]) -> Proc:
        proc = nsutil.start_in(self.cleanup, netns, name, list(argv))
        self.procs.append(proc)
        return proc

    def pause(self, netns: str, pod: str) -> Proc:
        """The pod's "pause container": the long-lived process the repair controller finds in
        /proc by the pod's IP (a netns with no process in it is invisible there)."""
        proc = self.start_in(netns, f"pause container of {pod}",
                             ["sh", "-c", "echo ready; exec sleep infinity"])
        proc.wait_line(lambda ln: ln == "ready", 10, "ready")
        return proc

    def close(self) -> list[str]:
        """Undo everything, newest first; returns one line per undo that failed."""
        return self.cleanup.close()
