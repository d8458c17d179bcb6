"""What a warm process knows about its node's iptables, and the per-netns facts it reads
in-process instead of starting a process to learn them (the node agent's "warm apply").

Upstream's `DetectIptablesVersion`, per family (`ip6tables-*` for IPv6), is kept exactly:
a forced binary is used as is; else legacy when `iptables-legacy-save` prints 3 lines or more
in the pod netns; else nft when usable (`iptables-nft-save` runs and a never-matching probe
rule can be added and deleted); else plain `iptables`. Run cold (`cni.backends.restore`, as the
plugin does, one process per pod), that is four processes before the pod's state is even read
(legacy save, nft save, probe add, probe delete), and a `--version` for a forced binary, then
the save of the chosen flavour (the state `program` compares), then the restore.

Which of these facts change from one pod to the next?

- **The node's** (kept in `NodeFacts`, learned by the first cold detection, for the life of the
  process): whether the nft binaries work with this kernel (the probe's answer: the kernel's
  support, not the netns's), and each binary's `--version` (with it, `--wait` and
  `XTABLES_LOCKFILE` support). Forgotten when an operation that used them fails: the backend
  then detects again in full and retries once (`RestoreBackend`).
- **The netns's** (read in-process, exactly what the save would have said):
  - legacy tables: `iptables-legacy-save` prints one section (3 lines or more) per table this
    netns's `ip_tables_names` lists (`ip6_tables_names`), and nothing when the list is empty or
    absent. So an empty list means "no legacy rules here" *and* "the legacy save is empty".
    It is read from `/proc/thread-self/net/` (this thread's netns: the agent's threads enter
    pod netns). libiptc is not asked: initialising a table handle makes the kernel instantiate
    that table in the netns, which would turn the next detection to legacy.
  - nftables tables: `iptables-nft-save` prints the netns's nftables tables of family `ip`
    (`ip6`) and nothing else; the kernel's table list for that family (one nfnetlink dump,
    read message by message: `nft_tables`) says whether there is any: none, and the nft save
    would print nothing. (Not libnftables: loading it would add ~1.6 MiB to an agent that,
    in iptables mode, has no other use for it. In native nftables mode it is the way rules
    are written, loaded once per process: `NodeFacts.libnftables`.)

A fresh sandbox netns, what an ADD almost always meets, holds no table at all: the state is
then known to be empty without a process, and the ADD is one restore. Anything else (a table
of the kind exists, a list cannot be read, the kernel does not answer) runs the save as the
cold path does, so a netns that holds anything is read exactly as before (`cni.live_state`).

Shared by the agent's threads without a lock: each access is one dict operation (atomic in
CPython), and a value learned twice is the same value. A forked child (a pod's user namespace,
`cni.userns`) reads the parent's snapshot; what it learns dies with it.
"""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cni.nft_exec import LibNftables

TABLE_NAMES = {False: "/proc/thread-self/net/ip_tables_names",
               True: "/proc/thread-self/net/ip6_tables_names"}
"""The legacy tables the kernel has instantiated in this thread's netns (what
`iptables-legacy-save` reads to know which tables to print)."""
MAX_TABLE_NAMES = 4096
_UNSET = object()

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_NEWTABLE = NFNL_SUBSYS_NFTABLES << 8 | 0  # NFT_MSG_NEWTABLE: one table of the dump
NFT_GETTABLE = NFNL_SUBSYS_NFTABLES << 8 | 1  # NFT_MSG_GETTABLE
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_NOOP, NLMSG_DONE = 1, 3
NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
NFGENMSG = struct.Struct("=BBH")  # family, version, resource id (big-endian, 0 here)
NFPROTO = {False: 2, True: 10}
"""NFPROTO_IPV4 / NFPROTO_IPV6: the nftables families `ip` and `ip6`, whose tables
`iptables-nft-save` and `ip6tables-nft-save` print."""
NETLINK_TIMEOUT = 5.0
NETLINK_BUFFER = 65536
MAX_NETLINK_READS = 1024
_GETTABLE_DUMP = {
    ipv6: NLMSG_HEADER.pack(NLMSG_HEADER.size + NFGENMSG.size, NFT_GETTABLE,
                            NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + NFGENMSG.pack(family, 0, 0)
    for ipv6, family in NFPROTO.items()}


def legacy_table_names(ipv6: bool) -> list[str]:
    """The legacy tables instantiated in this thread's netns for a family; [] when the list is
    absent (no legacy iptables module loaded). Other errors are raised (OSError)."""
    try:
        with open(TABLE_NAMES[ipv6], "rb") as f:
            return f.read(MAX_TABLE_NAMES).decode(errors="replace").split()
    except FileNotFoundError:
        return []


class NodeFacts:
    """The node's iptables facts, learned once per process (see the module docstring)."""

    def __init__(self) -> None:
        self._versions: dict[str, tuple[tuple[int, int, int], bool]] = {}
        self._nft_usable: dict[str, bool] = {}
        self._nft_lib: object = _UNSET
        self.forgotten = 0
        """How many times the facts were dropped after a failed operation (for tests and
        metrics)."""

    def version(self, binary: str) -> tuple[tuple[int, int, int], bool] | None:
        """`binary`'s version and whether it says it is legacy (no `nf_tables`), if known."""
        return self._versions.get(binary)

    def learn_version(self, binary: str, version: tuple[int, int, int], legacy: bool) -> None:
        self._versions[binary] = (version, legacy)

    def nft_usable(self, prefix: str) -> bool | None:
        """Whether `<prefix>-nft` works on this node (its save runs, the probe rule goes in
        and out), if known."""
        return self._nft_usable.get(prefix)

    def learn_nft(self, prefix: str, usable: bool) -> None:
        self._nft_usable[prefix] = usable

    def forget(self) -> None:
        """Drop every node fact: the next detection is a cold one."""
        self._versions.clear()
        self._nft_usable.clear()
        self.forgotten += 1

    def libnftables(self) -> LibNftables | None:
        """libnftables, loaded once per process (None when it cannot be loaded)."""
        lib = self._nft_lib
        if lib is _UNSET:
            from cni.nft_exec import LibNftables

            lib = self._nft_lib = LibNftables.load()
        return lib  # type: ignore[return-value]


def nft_tables(ipv6: bool) -> bool | None:
    """Does this thread's netns hold an nftables table of the family `iptables-nft-save`
    prints for `ipv6` (`ip`, `ip6`)? The kernel's own list: one `NFT_MSG_GETTABLE` dump over
    nfnetlink for that family (the kernel leaves the others out), read message by message.
    None when the kernel does not answer it (no nf_tables, an error, no end in sight): the
    caller then runs the save."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_NETFILTER)  # in this thread's netns, like a child's
    except OSError:
        return None
    with sock:
        try:
            sock.settimeout(NETLINK_TIMEOUT)
            sock.sendto(_GETTABLE_DUMP[ipv6], (0, 0))
            for _ in range(MAX_NETLINK_READS):
                answer = _tables_in(sock.recv(NETLINK_BUFFER))
                if answer is not _UNSET:
                    return answer  # type: ignore[return-value]
        except OSError:
            return None
    return None


def _tables_in(data: bytes) -> bool | None | object:
    """True at the first table of the dump, False at its end, None at an error or a message
    that is not a dump's; `_UNSET` when this part of the dump holds none of these."""
    offset = 0
    while offset + NLMSG_HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size:
            return None
        if kind == NFT_NEWTABLE:
            return True
        if kind == NLMSG_DONE:
            return False
        if kind != NLMSG_NOOP:
            return None  # NLMSG_ERROR (no nf_tables, no permission) or anything unexpected
        offset += (length + 3) & ~3
    return _UNSET


NODE = NodeFacts()
"""The process's node facts: the node agent's served ADDs, repairs and drift checks share
them (`cni.backends.RuleMode.warm`)."""
