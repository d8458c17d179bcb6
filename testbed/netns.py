"""Named network namespaces, made by the harness and removed by name.

Every namespace is `<prefix>-<8 hex>` (each suite or tool has its own prefix, so parallel runs
never touch each other's), comes with lo up and IPv6 duplicate address detection off (an
address is usable at once, nothing waits for DAD), and optionally a veth pair, both ends
inside, carrying the given addresses, and a "pause container" (the long-lived process the node
agent finds in /proc). Its deletion is registered on the caller's `Cleanup` right after
`ip netns add`, and is idempotent. Nothing here touches the host's own interfaces or iptables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testbed.cleanup import Cleanup
from testbed.procs import Proc, sh

NETNS_DIR = Path("/var/run/netns")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def path(name: str) -> str:
    """The bind mount `ip netns add` made: what CNI_NETNS carries."""
    return str(NETNS_DIR / name)


def ns_exec(name: str, *argv: str, check: bool = True, input: str | None = None) -> str:
    """Run argv inside netns `name`; its stdout."""
    return sh("ip", "netns", "exec", name, *argv, check=check, input=input)


@dataclass
class Netns:
    """A namespace made by `create_netns`; `v4`/`v6` are the veth end's addresses inside."""

    name: str
    v4: str | None = None
    v6: str | None = None
    pause: Proc | None = None
    """The "pause container" inside, when asked for."""

    @property
    def path(self) -> str:
        return path(self.name)

    @property
    def ip(self) -> str | None:
        """The pod IP the node agent would look this netns up by."""
        return self.v4 or self.v6

    def run(self, *argv: str, check: bool = True, input: str | None = None) -> str:
        return ns_exec(self.name, *argv, check=check, input=input)


def create_netns(cleanup: Cleanup, prefix: str, *, v4: str | None = None,
                 v6: str | None = None, ifname: str | None = None,
                 pause: bool = False) -> Netns:
    """A fresh namespace `<prefix>-<hex>` with lo up; with `v4`/`v6`, a veth pair inside
    whose end `ifname` (default `<hex>a`) carries `v4`/24 and `v6`/64; with `pause`, a
    long-lived process inside. All of it is removed when `cleanup` closes."""
    name = unique(prefix)
    sh("ip", "netns", "add", name)
    cleanup.add(f"delete netns {name}", lambda: delete_netns(name))
    ns = Netns(name, v4, v6)
    script = ["link set lo up"]
    if v4 or v6:
        a, b = ifname or f"{name[-8:]}a", f"{name[-8:]}b"
        script.append(f"link add {a} type veth peer name {b}")
        if v4:
            script.append(f"addr add {v4}/24 dev {a}")
        if v6:
            script.append(f"addr add {v6}/64 dev {a} nodad")
        script += [f"link set {a} up", f"link set {b} up"]
    sh("ip", "-n", name, "-batch", "-", input="\n".join(script) + "\n")
    ns_exec(name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0")
    if pause:
        ns.pause = start_in(cleanup, name, "pause container", ["sh", "-c",
                                                                "echo ready; exec sleep infinity"])
        ns.pause.wait_line(lambda ln: ln == "ready", 10, "ready")
    return ns


def delete_netns(name: str) -> None:
    """`ip netns delete`, unless it is already gone (the one idempotent removal)."""
    if os.path.exists(path(name)):
        sh("ip", "netns", "delete", name)


def start_in(cleanup: Cleanup, netns: str, name: str, argv: list[str]) -> Proc:
    """A long-running process inside `netns`, stopped when `cleanup` closes."""
    proc = Proc(name, ["ip", "netns", "exec", netns, *argv])
    cleanup.add(f"stop {name}", proc.stop)
    return proc


def leftover_netns(prefix: str) -> list[str]:
    """Named namespaces starting with `prefix` (to check that nothing is left)."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


@contextmanager
def temporary_netns(prefix: str, **kwargs: object) -> Iterator[Netns]:
    """`create_netns` for one `with` block."""
    with Cleanup() as cleanup:
        yield create_netns(cleanup, prefix, **kwargs)  # type: ignore[arg-type]
