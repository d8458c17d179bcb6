"""Find pods' network namespaces from their IPs by scanning the host's /proc, and hold them.

Where runtimes bind-mount netns files differs per platform, so, like upstream's `getPodNetNs`,
we look at `<host proc>/<pid>/ns/net` of every process, enter each *distinct* netns once (not
once per process: a node has thousands of processes but one netns per pod), read its addresses,
and map each wanted IP to the netns of the oldest process in it (the pause container, which
outlives `istio-validation`). The host's own netns (pid 1's) and ours are never candidates: a
hostNetwork pod shares the node IP and must never be programmed.

What a scan finds is *held*, not named: a pid, and so `/proc/PID/ns/net`, names whatever
process has that pid now, and once a pod's pause process exits its pid can go to a process of
another pod (pid_max is 32768 on many nodes). So each netns is opened once, its descriptor
checked to be the namespace that was listed (same nsfs inode as the stat that grouped it), and
every later visit enters that descriptor and proves it again (`cni.held_netns.in_held_netns`: the
inode, then the pod's IP inside). A scan returns a `NetnsTable` that owns the descriptors:
use it as a context manager, so they are closed when the pass ends.

Bound: a netns is held only while it is the answer for a wanted IP (the others are closed as
soon as their addresses are read), and one scan takes at most `limit` wanted IPs, so at most
`limit` descriptors are open at once. `limit` is `HELD_NETNS_LIMIT` or a quarter of this
process's open-file limit, whichever is lower; a drift pass over more pods than that scans once
per `limit` of them (`node_daemon.drift`).

Enters namespaces with `setns` on the calling thread: call from one worker thread at a time.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import resource
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cni import held_netns, netns
from cni.errors import CNIError
from cni.held_netns import HeldNetns

log = logging.getLogger(__name__)

HELD_NETNS_LIMIT = 512
"""Most netns descriptors one scan holds (more than the pods a node runs: kubelet's default
max-pods is 110)."""
LIMIT_FLOOR = 8
STAT_READ_LIMIT = 4096
"""`/proc/PID/stat` is one line well under this (the command name is at most 16 bytes)."""


@dataclass(frozen=True)
class NetnsRef:
    """One pod netns a scan found: held by descriptor (`held`), and the process it was found
    by, for messages and for choosing the oldest (never to reach the netns again)."""

    held: HeldNetns
    pid: int
    started: float
    """The process's start time in clock ticks since boot (inf when unreadable)."""

    @property
    def where(self) -> str:
        return self.held.where


class NetnsTable(Mapping[str, NetnsRef]):
    """Wanted IP → the netns holding it, from one scan; owns the held descriptors.

    Use as a context manager (or call `close`): the descriptors keep the namespaces alive, so
    they must not outlive the pass. Looking anything up after `close` is an error, never a
    descriptor number that may since name something else."""

    def __init__(self) -> None:
        self._by_ip: dict[str, NetnsRef] = {}
        self._held: list[HeldNetns] = []
        self._closed = False

    def _hold(self, ref: NetnsRef, ips: Iterable[str]) -> None:
        self._held.append(ref.held)
        for ip in ips:
            self._by_ip[ip] = ref

    @property
    def held(self) -> int:
        """How many netns descriptors this table holds open."""
        return 0 if self._closed else len(self._held)

    def __getitem__(self, ip: str) -> NetnsRef:
        if self._closed:
            raise RuntimeError("netns table used after its scan was closed")
        return self._by_ip[_canonical(ip) or ip]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_ip)

    def __len__(self) -> int:
        return len(self._by_ip)

    def first(self, ips: Iterable[str]) -> NetnsRef | None:
        """The netns holding the first of `ips` found (None: none was)."""
        return next((self[ip] for ip in ips if ip and ip in self), None)

    def netns_for(self, ips: Iterable[str]) -> HeldNetns | None:
        """The held netns of a pod with these IPs, to be entered only while it still holds one
        of them; None when no netns here has any."""
        ips = tuple(ip for ip in ips if ip)
        ref = self.first(ips)
        return None if ref is None else ref.held.expecting(ips)

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, str) and (_canonical(ip) or ip) in self._by_ip

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for held in self._held:
            held.close()
        self._held.clear()

    def __enter__(self) -> NetnsTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NetnsFinder:
    def __init__(self, host_proc: Path = Path("/proc"), limit: int | None = None) -> None:
        self.host_proc = host_proc
        self.limit = limit if limit is not None else default_limit()

    def _ns_key(self, pid: int | str) -> tuple[int, int] | None:
        try:
            st = os.stat(f"{self.host_proc}/{pid}/ns/net")
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _pids(self) -> list[int]:
        try:
            with os.scandir(self.host_proc) as entries:
                return [int(e.name) for e in entries if e.name.isdigit()]
        except OSError as exc:
            log.warning("cannot list %s: %s", self.host_proc, exc.strerror)
            return []

    def _started(self, pid: int) -> float:
        """Upstream's `GetStarttime`: field 22 of `/proc/PID/stat` (ticks since boot)."""
        try:
            fd = os.open(f"{self.host_proc}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.read(fd, STAT_READ_LIMIT)
            finally:
                os.close(fd)
            return float(data[data.rindex(b")") + 1:].split()[19])
        except (OSError, ValueError, IndexError):
            return float("inf")

    def namespaces(self) -> list[tuple[tuple[int, int], list[tuple[float, int]]]]:
        """Distinct netns (host's and ours excluded) with their processes, (start, pid) oldest
        first; the netns ordered by their oldest process."""
        skip = {self._ns_key(1), _own_key()}
        procs: dict[tuple[int, int], list[tuple[float, int]]] = {}
        for pid in self._pids():
            key = self._ns_key(pid)
            if key is None or key in skip:
                continue
            procs.setdefault(key, []).append((self._started(pid), pid))
        for members in procs.values():
            members.sort()
        return sorted(procs.items(), key=lambda item: item[1][0])

    def _open(self, key: tuple[int, int],
              members: list[tuple[float, int]]) -> tuple[HeldNetns, int, float] | None:
        """The netns `key`, held through the oldest of its processes still in it (a pid that
        exited, or was reused by a process elsewhere, since it was listed is passed over)."""
        for started, pid in members:
            path = f"{self.host_proc}/{pid}/ns/net"
            try:
                held = held_netns.hold_netns(path, f"{path} (net:[{key[1]}])", expect=key)
            except CNIError as exc:
                log.debug("passing over pid %d: %s", pid, exc.msg)
                continue
            return held, pid, started
        return None

    def scan(self, ips: Iterable[str]) -> NetnsTable:
        """Each of `ips` seen in a pod netns → that netns, held (oldest process wins).

        Looks for the first `limit` distinct IPs only (the rest are logged and not found).
        Close the table when done."""
        distinct = list(dict.fromkeys(c for c in map(_canonical, ips) if c is not None))
        if len(distinct) > self.limit:
            log.warning("%d IPs asked of one netns scan; looking for the first %d only",
                        len(distinct), self.limit)
        wanted = set(distinct[:self.limit])
        table = NetnsTable()
        if not wanted:
            return table
        try:
            for key, members in self.namespaces():
                if wanted.issubset(table):
                    break
                self._visit(table, wanted, key, members)
        except BaseException:
            table.close()
            raise
        return table

    def _visit(self, table: NetnsTable, wanted: set[str], key: tuple[int, int],
               members: list[tuple[float, int]]) -> None:
        """Read one netns's addresses (entered by its descriptor); hold it when it is the first
        (so oldest) to have a wanted IP, else close it."""
        opened = self._open(key, members)
        if opened is None:
            return
        held, pid, started = opened
        found: set[str] = set()
        try:
            with held_netns.in_held_netns(held):
                try:
                    found = {str(a) for a in netns.pod_addresses()
                             if not (a.is_loopback or a.is_link_local)} & wanted
                except OSError as exc:
                    log.debug("cannot read the addresses of %s: %s", held.where, exc)
        except CNIError as exc:  # (failing to switch back is an OSError: never swallowed)
            log.debug("cannot enter %s: %s", held.where, exc.msg)
        for ip in found & set(table):
            log.warning("IP %s is in two netns (%s and %s); using the oldest",
                        ip, table[ip].where, held.where)
        claims = found - set(table)
        if not claims:
            held.close()
            return
        table._hold(NetnsRef(held, pid, started), sorted(claims))


def default_limit() -> int:
    """`HELD_NETNS_LIMIT`, or a quarter of the open-file limit when that is lower."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return HELD_NETNS_LIMIT
    return max(LIMIT_FLOOR, min(HELD_NETNS_LIMIT, soft // 4))


def _canonical(ip: str) -> str | None:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return None


def _own_key() -> tuple[int, int] | None:
    try:
        st = os.stat("/proc/self/ns/net")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
