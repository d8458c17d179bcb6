"""Find pods' network namespaces by scanning the host's /proc, and hold them.

Where runtimes bind-mount netns files differs per platform, so, like upstream's node agent, we
look at `<host proc>/<pid>/ns/net` of every process, enter each *distinct* netns once (not once
per process: a node has thousands of processes but one netns per pod) and read its addresses.
The host's own netns (pid 1's) and ours are never candidates: a hostNetwork pod shares the node
IP and must never be programmed.

Whose a netns is comes from its processes' cgroups, not from the addresses in it: the kubelet
names every container's cgroup after its pod's UID (`node_daemon.pod_cgroup`), which the pod
cannot change, while a pod with NET_ADMIN can add any address, another pod's IP included, to
its own netns. So each pod is matched to a netns by its UID first, and the IP must also be
inside; a netns whose processes belong to another pod is never used for it, whatever it holds;
only where no process names a pod (hierarchies other than kubepods, tests' plain processes) is
the IP alone the guide, and then an IP held by two netns is ambiguous and neither is used.
`NetnsTable.choose` is that rule, the one every caller goes through.

What a scan finds is *held*, not named: a pid, and so `/proc/PID/ns/net`, names whatever
process has that pid now, and once a pod's pause process exits its pid can go to a process of
another pod (pid_max is 32768 on many nodes). So each process's netns, start time and cgroup
are read through one descriptor of its `/proc/PID` directory (all three are that process's),
each netns is opened once, its descriptor checked to be the namespace that was listed (same
nsfs inode as the stat that grouped it), and every later visit enters that descriptor and
proves it again (`cni.held_netns.in_held_netns`: the inode, then the pod's IP inside). A scan
returns a `NetnsTable` that owns the descriptors: use it as a context manager, so they are
closed when the pass ends.

Bound: a netns is held only while it may be the answer for a wanted pod (one of its IPs inside,
and its processes of that pod or of none; the others are closed as soon as their addresses are
read), one scan takes at most `limit` wanted IPs, and holds at most `limit` descriptors (a
netns past that is recorded unheld, and choosing it fails). `limit` is `HELD_NETNS_LIMIT` or a
quarter of this process's open-file limit, whichever is lower; a drift pass over more pods than
that scans once per `limit` of them (`node_daemon.drift`).

Enters namespaces with `setns` on the calling thread: call from one worker thread at a time.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import resource
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cni import held_netns, netns
from cni.errors import CNIError, InvalidNetNS
from cni.held_netns import HeldNetns
from node_daemon.pod_cgroup import read_pod_uids

log = logging.getLogger(__name__)

HELD_NETNS_LIMIT = 512
"""Most netns descriptors one scan holds (more than the pods a node runs: kubelet's default
max-pods is 110)."""
LIMIT_FLOOR = 8
STAT_READ_LIMIT = 4096
"""`/proc/PID/stat` is one line well under this (the command name is at most 16 bytes)."""

NsKey = tuple[int, int]
"""A namespace's identity: (st_dev, st_ino) of its nsfs file."""


class NetnsUnproven(InvalidNetNS):
    """No netns on this node can be shown to be the pod's (its IP is held only by another
    pod's netns, or by two that name no pod, or the netns its cgroup names lacks it): the
    caller writes nothing and reports the pod's result as a failure with this message."""


@dataclass(frozen=True)
class NetnsRef:
    """One pod netns a scan entered: whose it is by its processes' cgroups (`pods`), which
    wanted IPs it holds (`ips`), and its descriptor (`held`) while it may be the answer. The
    process it was reached by is kept for messages only, never to reach it again."""

    where: str
    """How messages name it, e.g. `/proc/123/ns/net (net:[4026532001])`."""
    pid: int
    started: float
    """The process's start time in clock ticks since boot (inf when unreadable)."""
    pods: frozenset[str]
    """UIDs of the pods its processes' cgroups name: one for a pod's netns, none outside the
    kubepods hierarchy, more than one when a process of another pod entered it."""
    ips: frozenset[str]
    """The wanted IPs found inside (canonical text)."""
    held: HeldNetns | None
    """Open, checked descriptor; None when it can be no wanted pod's answer (or the scan's
    descriptor budget was spent)."""


class Listed(NamedTuple):
    """One distinct netns from the /proc listing, with its processes and their pods."""

    key: NsKey
    members: list[tuple[float, int]]
    """(start time, pid), oldest first."""
    pods: frozenset[str]


class NetnsTable:
    """What one scan found: the netns holding a wanted IP or named by a wanted pod's cgroup,
    and the descriptors of those that may be a wanted pod's answer.

    Ask it for a pod's netns with `choose` (or `netns_for`). Use it as a context manager (or
    call `close`): the descriptors keep the namespaces alive, so they must not outlive the
    pass. Asking anything after `close` is an error, never a descriptor number that may since
    name something else."""

    def __init__(self, pods: Mapping[str, str] | None = None) -> None:
        self.pods: dict[str, str] = {_uid(u): name for u, name in (pods or {}).items()
                                     if _uid(u)}
        """UID → name (namespace/name) of the pods the scan was asked about."""
        self._found: list[NetnsRef] = []
        self._closed = False

    def _add(self, ref: NetnsRef) -> None:
        self._found.append(ref)

    @property
    def held(self) -> int:
        """How many netns descriptors this table holds open."""
        return 0 if self._closed else sum(ref.held is not None for ref in self._found)

    def __contains__(self, ip: object) -> bool:
        """Whether some netns the scan entered holds `ip`."""
        ip = _canonical(ip) if isinstance(ip, str) else None
        return ip is not None and any(ip in ref.ips for ref in self._refs())

    def _refs(self) -> list[NetnsRef]:
        if self._closed:
            raise RuntimeError("netns table used after its scan was closed")
        return self._found

    def choose(self, uid: str, ips: Iterable[str]) -> NetnsRef | None:
        """The netns of the pod with UID `uid` and IPs `ips`, by the one rule:

        1. A netns is a pod's when its processes' cgroups name that pod's UID and no other;
           no pod's when none names any; otherwise it is *another pod's* (for this pod).
        2. UID first: when some netns is this pod's, the answer is the one of them that holds
           one of its IPs. None holds one: unproven, unless no netns at all holds the IPs
           (then None). Two or more: unproven.
        3. Otherwise, by IP among the netns that are no pod's: exactly one holding one of
           its IPs is the answer; two or more are ambiguous, and unproven.
        4. Another pod's netns is never the answer, whatever IP it holds: each one holding
           this pod's IP is logged as a warning naming both pods; when only such netns hold
           it, unproven.

        Returns None when no netns here holds any of the IPs (the pod does not run here);
        raises `NetnsUnproven` (write nothing) when the IP is held but no netns is proven to
        be this pod's. The answer always has a descriptor (`held`)."""
        uid, wanted = _uid(uid), {c for c in map(_canonical, ips) if c is not None}
        refs = self._refs()
        holding = [ref for ref in refs if ref.ips & wanted]
        name = self.pods.get(uid) or (f"pod uid {uid}" if uid else "the pod")
        for ref in holding:
            if ref.pods and ref.pods != {uid}:
                log.warning("%s: %s holds its IP %s but its processes belong to %s; never "
                            "used for it", name, ref.where, ", ".join(sorted(ref.ips & wanted)),
                            self._names(ref.pods))
        own = [ref for ref in refs if uid and ref.pods == {uid}]
        if own:
            candidates, why = [ref for ref in own if ref.ips & wanted], "netns of this pod"
        else:
            candidates, why = [ref for ref in holding if not ref.pods], "netns naming no pod"
        if not holding:
            return None
        shown = ", ".join(sorted(wanted))
        if len(candidates) > 1:
            raise NetnsUnproven(
                f"IP {shown} is in {len(candidates)} {why} ("
                + ", ".join(ref.where for ref in candidates)
                + "): cannot tell which is the pod's; nothing written")
        if not candidates:
            if own:
                raise NetnsUnproven(
                    f"the pod's netns by cgroup ({', '.join(ref.where for ref in own)}) does "
                    f"not hold IP {shown}, which " + self._holders(holding)
                    + "; nothing written")
            raise NetnsUnproven(f"IP {shown} " + self._holders(holding)
                                + ", not in a netns of this pod; nothing written")
        ref = candidates[0]
        if ref.held is None:
            raise NetnsUnproven(f"{ref.where} holds IP {shown} but this scan did not hold it "
                                "(its limit of namespaces reached, or the pod not asked of "
                                "it); nothing written")
        return ref

    def netns_for(self, uid: str, ips: Iterable[str]) -> HeldNetns | None:
        """`choose`'s answer, held, to be entered only while it still holds one of `ips`."""
        ips = tuple(ip for ip in ips if ip)
        ref = self.choose(uid, ips)
        if ref is None or ref.held is None:  # (`choose` never answers an unheld netns)
            return None
        return ref.held.expecting(ips)

    def _names(self, uids: Iterable[str]) -> str:
        """The pods these UIDs are, named: those asked of the scan by name, then the others
        by UID."""
        uids = sorted(uids)
        return ", ".join([self.pods[u] for u in uids if u in self.pods]
                         + [f"pod uid {u}" for u in uids if u not in self.pods])

    def _holders(self, refs: list[NetnsRef]) -> str:
        return "is held by " + "; ".join(
            ref.where + (f" of {self._names(ref.pods)}" if ref.pods else "") for ref in refs)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ref in self._found:
            if ref.held is not None:
                ref.held.close()
        self._found.clear()

    def __enter__(self) -> NetnsTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NetnsFinder:
    def __init__(self, host_proc: Path = Path("/proc"), limit: int | None = None) -> None:
        self.host_proc = host_proc
        self.limit = limit if limit is not None else default_limit()

    def _ns_key(self, pid: int | str) -> NsKey | None:
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

    def _process(self, pid: int,
                 skip: set[NsKey | None]) -> tuple[NsKey, float, frozenset[str]] | None:
        """A process's netns, start time and pods, all read through one descriptor of its
        `/proc/PID` directory (so all three are that process's, even if its pid is reused
        meanwhile: a directory descriptor of an exited process reads nothing); None when it
        is gone, or its netns is one of `skip`."""
        try:
            proc_dir = os.open(f"{self.host_proc}/{pid}",
                               os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            try:
                st = os.stat("ns/net", dir_fd=proc_dir)
            except OSError:
                return None
            key = (st.st_dev, st.st_ino)
            if key in skip:
                return None
            return key, _started(proc_dir), read_pod_uids(proc_dir) or frozenset()
        finally:
            os.close(proc_dir)

    def namespaces(self) -> list[Listed]:
        """Distinct netns (host's and ours excluded) with their processes, (start, pid)
        oldest first, and the pods their cgroups name; ordered by their oldest process."""
        skip = {self._ns_key(1), _own_key()}
        procs: dict[NsKey, list[tuple[float, int]]] = {}
        pods: dict[NsKey, set[str]] = {}
        for pid in self._pids():
            seen = self._process(pid, skip)
            if seen is None:
                continue
            key, started, uids = seen
            procs.setdefault(key, []).append((started, pid))
            pods.setdefault(key, set()).update(uids)
        listed = [Listed(key, sorted(members), frozenset(pods[key]))
                  for key, members in procs.items()]
        return sorted(listed, key=lambda ns: ns.members[0])

    def _open(self, key: NsKey,
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

    def scan(self, ips: Iterable[str], pods: Mapping[str, str] | None = None) -> NetnsTable:
        """Every pod netns here that holds one of `ips` or is named by the cgroup of one of
        `pods` (UID → name, for holding their netns and naming them in messages), entered
        once each; ask the table for a pod's netns with `NetnsTable.choose`.

        Looks for the first `limit` distinct IPs only (the rest are logged and not found).
        Close the table when done."""
        distinct = list(dict.fromkeys(c for c in map(_canonical, ips) if c is not None))
        if len(distinct) > self.limit:
            log.warning("%d IPs asked of one netns scan; looking for the first %d only",
                        len(distinct), self.limit)
        wanted = set(distinct[:self.limit])
        table = NetnsTable(pods)
        if not wanted:
            return table
        try:
            for ns in self.namespaces():
                self._visit(table, wanted, ns)
        except BaseException:
            table.close()
            raise
        return table

    def _visit(self, table: NetnsTable, wanted: set[str], ns: Listed) -> None:
        """Read one netns's addresses (entered by its descriptor) and record it when it holds
        a wanted IP or is a wanted pod's; keep its descriptor only while it may be a wanted
        pod's answer (of no pod, or of exactly one wanted pod) and the budget allows."""
        opened = self._open(ns.key, ns.members)
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
        except CNIError as exc:  # (failing to switch back is NetnsReturnFailed: never caught)
            log.debug("cannot enter %s: %s", held.where, exc.msg)
        if not found and not ns.pods & table.pods.keys():
            held.close()
            return
        candidate = not ns.pods or (len(ns.pods) == 1 and ns.pods <= table.pods.keys())
        keep = bool(found) and candidate and table.held < self.limit
        if not keep:
            held.close()
        table._add(NetnsRef(held.where, pid, started, ns.pods, frozenset(found),
                            held if keep else None))


def default_limit() -> int:
    """`HELD_NETNS_LIMIT`, or a quarter of the open-file limit when that is lower."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return HELD_NETNS_LIMIT
    return max(LIMIT_FLOOR, min(HELD_NETNS_LIMIT, soft // 4))


def _started(proc_dir: int) -> float:
    """Upstream's `GetStarttime`: field 22 of the process's `stat` (ticks since boot)."""
    try:
        fd = os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_dir)
        try:
            data = os.read(fd, STAT_READ_LIMIT)
        finally:
            os.close(fd)
        return float(data[data.rindex(b")") + 1:].split()[19])
    except (OSError, ValueError, IndexError):
        return float("inf")


def _canonical(ip: str) -> str | None:
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        return None


def _uid(uid: object) -> str:
    """A pod UID as the API spells it (lowercase); "" for none."""
    return uid.strip().lower() if isinstance(uid, str) else ""


def _own_key() -> NsKey | None:
    try:
        st = os.stat("/proc/self/ns/net")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
