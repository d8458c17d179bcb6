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
    (`ip6`) and nothing else; libnftables' JSON `list tables` (structured, `cni.nft_state`)
    says whether there is any. None means the nft save would print nothing.

A fresh sandbox netns, what an ADD almost always meets, holds no table at all: the state is
then known to be empty without a process, and the ADD is one restore. Anything else (a table
of the kind exists, the list cannot be read, libnftables is missing) runs the save as the cold
path does, so a netns that holds anything is read exactly as before (`cni.live_state`).

Shared by the agent's threads without a lock: each access is one dict operation (atomic in
CPython), and a value learned twice is the same value. A forked child (a pod's user namespace,
`cni.userns`) reads the parent's snapshot; what it learns dies with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cni.nft_exec import LibNftables

TABLE_NAMES = {False: "/proc/thread-self/net/ip_tables_names",
               True: "/proc/thread-self/net/ip6_tables_names"}
"""The legacy tables the kernel has instantiated in this thread's netns (what
`iptables-legacy-save` reads to know which tables to print)."""
MAX_TABLE_NAMES = 4096
NFT_FAMILY = {False: "ip", True: "ip6"}
"""The nftables family whose tables `iptables-nft-save` (`ip6tables-nft-save`) prints."""
_UNSET = object()


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

    def nft_tables(self, ipv6: bool) -> bool | None:
        """Does this thread's netns hold an nftables table of the family `iptables-nft-save`
        prints for `ipv6`? None when libnftables cannot say."""
        lib = self.libnftables()
        if lib is None:
            return None
        from cni.nft_exec import NftError
        from cni.nft_state import StateUnreadable, table_families

        try:
            return NFT_FAMILY[ipv6] in table_families(lib.run("list tables", json=True))
        except (NftError, StateUnreadable):
            return None


NODE = NodeFacts()
"""The process's node facts: the node agent's served ADDs, repairs and drift checks share
them (`cni.backends.RuleMode.warm`)."""
