"""Find a pod's network namespace from its IP by scanning the host's /proc (upstream's way).

Where runtimes bind-mount netns files differs per platform, so, like upstream's `getPodNetNs`,
we look at `<host proc>/<pid>/ns/net` of every process, enter each *distinct* netns once (not
once per process: a node has thousands of processes but one netns per pod), read its addresses,
and map each IP to the netns of the oldest process in it (the pause container, which outlives
`istio-validation`). The host's own netns (pid 1's) and ours are never candidates: a
hostNetwork pod shares the node IP and must never be programmed.

Enters namespaces with `setns` on the calling thread: call from one worker thread at a time.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from cni import netns
from cni.errors import CNIError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetnsRef:
    path: str
    """`<host proc>/<pid>/ns/net` of the oldest process in the netns."""
    pid: int
    started: float


class NetnsFinder:
    def __init__(self, host_proc: Path = Path("/proc")) -> None:
        self.host_proc = host_proc
        # psutil reads processes under its PROCFS_PATH (its documented knob for a host /proc
        # mounted elsewhere, e.g. /host/proc in the DaemonSet).
        psutil.PROCFS_PATH = str(host_proc)

    def _ns_key(self, pid: int | str) -> tuple[int, int] | None:
        try:
            st = os.stat(f"{self.host_proc}/{pid}/ns/net")
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def namespaces(self) -> dict[tuple[int, int], NetnsRef]:
        """Distinct netns → oldest process in it (host's and ours excluded)."""
        skip = {self._ns_key(1), _own_key()}
        oldest: dict[tuple[int, int], NetnsRef] = {}
        for pid in psutil.pids():
            key = self._ns_key(pid)
            if key is None or key in skip:
                continue
            try:
                started = psutil.Process(pid).create_time()
            except psutil.Error:
                started = math.inf
            ref = oldest.get(key)
            if ref is None or started < ref.started:
                oldest[key] = NetnsRef(f"{self.host_proc}/{pid}/ns/net", pid, started)
        return oldest

    def scan(self) -> dict[str, NetnsRef]:
        """Every non-loopback IP seen in a pod netns → that netns (oldest process wins)."""
        found: dict[str, NetnsRef] = {}
        for ref in self.namespaces().values():
            try:
                with netns.in_netns(ref.path):
                    addrs = netns.pod_addresses()
            except (CNIError, OSError):
                continue  # the process exited meanwhile
            for addr in addrs:
                if addr.is_loopback or addr.is_link_local:
                    continue
                ip = str(addr)
                other = found.get(ip)
                if other is not None and other.path != ref.path:
                    log.warning("IP %s is in two netns (pids %d and %d); using the oldest",
                                ip, other.pid, ref.pid)
                if other is None or ref.started < other.started:
                    found[ip] = ref
        return found

    def find(self, ips: tuple[str, ...]) -> NetnsRef | None:
        """The netns holding the first of `ips` found; None when no process has it."""
        wanted = [str(ipaddress.ip_address(ip)) for ip in ips if ip]
        if not wanted:
            return None
        table = self.scan()
        return next((table[ip] for ip in wanted if ip in table), None)


def _own_key() -> tuple[int, int] | None:
    try:
        st = os.stat("/proc/self/ns/net")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
