"""The native nftables backend: upstream's `inet istio-proxy-*` tables, one transaction each.

`NftablesBackend(way)` talks to nftables one of two ways (`cni.nft_exec`: libnftables
in-process, or the host's `nft -f -`); both leave the same `nft list ruleset`. Like every
backend it works on the netns the calling thread has entered and takes the pod's whole rule
set, here an `NftRuleSet` (one rule list for both families).

- `program`: a netns without our tables gets upstream's transaction as is. One whose tables
  already list exactly like the wanted ones is left alone (a re-ADD is a no-op: counters keep
  counting). Otherwise our tables are replaced the way upstream does it, add + flush + rebuild,
  in the same single transaction, plus what upstream leaves behind: a chain of ours the new
  rule set does not use is deleted after the flush, a table of ours it does not use is
  deleted, and one holding objects a flush keeps (a set someone added) is deleted and rebuilt.
  Anything else in the netns (other tables, other families) is never touched. Unlike the
  iptables backends, other tables of ours are not a conflict: replacing them is upstream's way.
- `check`: the live tables compared with the wanted ones (`cni.nft_state`), missing and extra
  lines as `StateDiff`, the type CHECK, repair and the drift check consume.
- `replace` (the fix of repair and drift): `program`, whose one transaction already replaces
  our tables as a whole, so no packet sees them half way or missing.
- `reset`: delete our tables (a node switched back to iptables mode).

How "exactly like" is decided: the kernel prints rules in its own canonical form, so the
wanted tables are applied in a throwaway netns (`cni.netns.scratch_netns`), listed, and the
two listings compared. The result is cached per transaction text, so a repair sweep over many
pods with the same rule set pays for it once.

Its caller (`cni.apply.PodNetns`) runs every step as the netns's owner (`cni.userns`): in a
forked child inside the pod's user namespace when the netns belongs to one, so the locks here
are made anew in a forked child.

TPROXY policy routing and the `::6` address are not nftables objects: `NftRuleSet` carries
them (`tproxy_routes`, `ipv6_passthrough_addr`) for the link step every mode shares
(`cni.apply`).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

from cni.errors import RulesApplyFailed
from cni.live_state import StateDiff
from cni.netns import scratch_netns
from cni.nft_exec import Nft, NftError, select_nft
from cni.nft_ruleset import FAMILY, TABLES, NftRuleSet
from cni.nft_state import LiveTable, StateUnreadable, diff_tables, parse_table, table_names

if TYPE_CHECKING:
    from cni.backends.node_facts import NodeFacts

LIST_TABLES = f"list tables {FAMILY}"
READ_ATTEMPTS = 5
CANONICAL_CACHE_SIZE = 64
PROGRAM_ATTEMPTS = 5
NETNS_LOCKS = 64
THREAD_NETNS = "/proc/thread-self/ns/net"

_canonical: OrderedDict[str, dict[str, LiveTable]] = OrderedDict()
_canonical_lock = threading.Lock()  # the node agent programs pods from several threads
_netns_locks = tuple(threading.Lock() for _ in range(NETNS_LOCKS))


def _fresh_locks() -> None:
    """In a forked child (a step run in a pod's user namespace, `cni.userns`), locks another
    thread of the agent held at the fork would stay held forever: the child gets new ones."""
    global _canonical_lock, _netns_locks
    _canonical_lock = threading.Lock()
    _netns_locks = tuple(threading.Lock() for _ in range(NETNS_LOCKS))


os.register_at_fork(after_in_child=_fresh_locks)


def _netns_lock() -> threading.Lock:
    """One of a fixed set of locks, picked by the identity of the netns this thread is in (a
    bounded table however many pods come and go)."""
    st = os.stat(THREAD_NETNS)
    return _netns_locks[hash((st.st_dev, st.st_ino)) % NETNS_LOCKS]


class NftablesBackend:
    """A `cni.backends.Backend` for native nftables mode; `way` is one of `cni.nft_exec.WAYS`."""

    native_nftables = True

    def __init__(self, way: str = "auto", where: str = "", facts: NodeFacts | None = None) -> None:
        self.way = way
        self.where = where or "current netns"
        self.facts = facts
        """Warm (the node agent): libnftables is loaded once per process (`NodeFacts`)."""
        self._nft: Nft | None = None

    @property
    def nft(self) -> Nft:
        """The chosen way, resolved on first use (ValueError / RulesApplyFailed if none)."""
        if self._nft is None:
            try:
                kept = (self.facts.libnftables() if self.facts is not None
                        and self.way in ("auto", "libnftables") else None)
                self._nft = kept or select_nft(self.way)
            except NftError as exc:
                raise RulesApplyFailed(f"native nftables ({self.way}): {exc}") from exc
        return self._nft

    def program(self, ruleset: NftRuleSet) -> bool:
        """Make the netns hold `ruleset`; True when anything changed.

        Writers in this process (the agent's threads) take turns per netns. A transaction
        that fails is retried from a fresh read, up to PROGRAM_ATTEMPTS in all: nft resolves
        `insert ... index N` against the rules it read before committing, so a writer in
        another process (the plugin's ADD racing the agent's repair) can make a correct
        transaction fail with ENOENT; the failed one changed nothing, so trying again is safe."""
        with _netns_lock():
            for attempt in range(1, PROGRAM_ATTEMPTS + 1):
                try:
                    return self._program_once(ruleset)
                except RulesApplyFailed:
                    if attempt == PROGRAM_ATTEMPTS:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _program_once(self, ruleset: NftRuleSet) -> bool:
        live = self._read(self.where)
        if not live:
            self._run(self.where, ruleset.transaction(), "program")
            return True
        wanted = self._wanted(ruleset)
        diff = diff_tables(live, wanted)
        if not diff.missing and not diff.extra:
            return False
        self._run(self.where, replacement(ruleset, live, wanted), "replace our tables in")
        return True

    def replace(self, ruleset: NftRuleSet) -> bool:
        """`program`: it already replaces our tables in the one transaction it commits."""
        return self.program(ruleset)

    def check(self, ruleset: NftRuleSet) -> StateDiff:
        """What the netns lacks (`missing`) or has beyond (`extra`) `ruleset`."""
        return diff_tables(self._read(self.where), self._wanted(ruleset))

    def reset(self, ruleset: NftRuleSet | None = None) -> bool:
        """Delete our tables, whatever they hold (`ruleset` is not needed to find them); True
        if there were any."""
        with _netns_lock():
            live = self._read(self.where)
            if live:
                text = "".join(f"delete table {FAMILY} {name}\n" for name in live)
                self._run(self.where, text, "delete our tables from")
        return bool(live)

    def _read(self, where: str) -> dict[str, LiveTable]:
        """Our tables, each listed by name in nftables' JSON form (`cni.nft_state`). A table
        deleted between `list tables` and its own listing (another writer) makes the read
        start over, up to READ_ATTEMPTS in all."""
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                return self._read_once(where)
            except RulesApplyFailed:
                if attempt == READ_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _read_once(self, where: str) -> dict[str, LiveTable]:
        tables: dict[str, LiveTable] = {}
        try:
            names = table_names(self._run(where, LIST_TABLES, "list the tables of", json=True))
            for name in (n for n in TABLES if n in names):
                text = self._run(where, f"list table {FAMILY} {name}",
                                 f"list table {FAMILY} {name} of", json=True)
                tables[name] = parse_table(text, name)
        except StateUnreadable as exc:
            raise RulesApplyFailed(f"nftables ({self.nft.name}): read {where}: {exc}") from exc
        return tables

    def _run(self, where: str, commands: str, what: str, json: bool = False) -> str:
        try:
            return self.nft.run(commands, json=json)
        except NftError as exc:
            raise RulesApplyFailed(f"nftables ({self.nft.name}): {what} {where}: {exc}",
                                   details=commands) from exc

    def _wanted(self, ruleset: NftRuleSet) -> dict[str, LiveTable]:
        """The wanted tables as the kernel lists them (see the module docstring)."""
        text = ruleset.transaction()
        if not text:
            return {}
        with _canonical_lock:
            cached = _canonical.get(text)
            if cached is not None:
                _canonical.move_to_end(text)
                return cached
        with scratch_netns():
            self._run("a scratch netns", text, "program")
            listed = self._read("a scratch netns")
        with _canonical_lock:
            _canonical[text] = listed
            while len(_canonical) > CANONICAL_CACHE_SIZE:
                _canonical.popitem(last=False)
        return listed


def replacement(
    ruleset: NftRuleSet, live: dict[str, LiveTable], wanted: dict[str, LiveTable]
) -> str:
    """Upstream's transaction, plus deleting what it would leave behind of ours in `live`:
    chains the new rule set does not create, or whose type, hook, priority or policy differ
    from the wanted ones (`add chain` would not change them), deleted after the table's flush
    so nothing jumps to them any more, and whole tables it does not use. A table of ours
    holding objects a flush keeps (sets, maps, ...: never ours) is deleted and rebuilt
    instead, still in the one transaction, and so is one whose own fields differ (flags such
    as `dormant`, a comment: `add table` would not change them). Every delete follows an
    `add` of the same object (upstream's own cleanup idiom): if another writer removed it
    since `live` was read, the add recreates it for the delete, instead of failing the whole
    transaction."""
    lines: list[str] = []
    for table in ruleset.tables:
        commands = table.commands()
        stale = live.get(table.name)
        want = wanted.get(table.name)
        if stale is not None and (stale.other or stale.attrs != (want.attrs if want else "{}")):
            commands[1:1] = [f"delete table {FAMILY} {table.name}",
                             f"add table {FAMILY} {table.name}"]
        elif stale is not None:
            want_chains = want.chains if want is not None else {}
            gone = [name for name, chain in stale.chains.items()
                    if name not in want_chains or chain.header != want_chains[name].header]
            commands[2:2] = [line for c in gone for line in (
                f"add chain {FAMILY} {table.name} {c}", f"delete chain {FAMILY} {table.name} {c}")]
        lines += commands
    used = {t.name for t in ruleset.tables}
    for name in live:
        if name not in used:
            lines += [f"add table {FAMILY} {name}", f"delete table {FAMILY} {name}"]
    return "".join(line + "\n" for line in lines)
