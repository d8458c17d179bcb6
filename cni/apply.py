"""Program, check and reset a pod netns: its backend's rules plus routes and addresses.

`PodNetns` is one visit to one pod netns (the calling thread is inside it): the rule set, the
backend, and the three operations every caller uses. The backend does the packet filter (see
`cni.backends.Backend`: idempotent, all or nothing, conflicts refused); TPROXY routes and the
`::6` address come last and are backend-independent ("exists" is fine), the same in iptables
and native nftables mode. `program`, `check` and `reset` are the same operations for a caller
that is not inside the netns yet. `replace` is the fix: what the netns holds becomes the rule
set in one atomic step (`Backend.replace`), never a reset followed by a program, which would
leave a running pod without redirection in between.

A node switched between modes (`NATIVE_NFTABLES` turned on or off) has pods programmed in the
other one. `PodNetns` may be given that `OtherMode`: `check` then also asks the other mode's
backend what of its state is there (`StateDiff.other_mode`, its lines in `extra`, never
`clean`), and `reset` and `replace` remove that state too, so CHECK reports a conflict naming
the other mode and repair/drift (check, then replace) leave the pod in the configured mode only,
the configured mode's rules in place before the other mode's are removed.
`program` (the ADD) looks at its own mode only: a new sandbox holds nothing, and the ADD's hot
path must not load the other mode's tools. When the other mode's tools cannot read the netns
(no iptables binaries in nftables mode, no nftables in iptables mode), its state is not
looked at.

Each operation runs as the netns's owner (`cni.userns.as_owner`): right here for a netns owned
by our own user namespace, else in a child inside the pod's user namespace (`hostUsers: false`),
whatever the backend, for every caller (ADD, CHECK, repair, the drift check, `explain`).

Hot path: pyroute2 is imported only when a rule set needs routes or `::6`.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

from cni import netns
from cni.backends import AnyRuleSet, Backend, RuleMode, select_backend
from cni.errors import RulesApplyFailed
from cni.live_state import StateDiff
from cni.ruleset import FamilyRules, RuleSet, TproxyRoutes
from cni.userns import as_owner

log = logging.getLogger("istio-cni")

PASSTHROUGH_V6 = "::6"
RT_SCOPE_HOST = 254  # what `ip route add local ...` sets for RTN_LOCAL routes


class OtherMode:
    """The mode a pod netns is not configured for, as a switch between modes needs it. Its
    backend is created on first use: `program` (the ADD) never uses it."""

    def __init__(self, mode: RuleMode, where: str,
                 ruleset: Callable[[], AnyRuleSet]) -> None:
        self.mode = mode
        self.where = where
        self.ruleset = ruleset
        """The other mode's rule set for the same pod (built only for a reset: an iptables
        reset needs it to tell our rules in built-in chains from foreign ones)."""
        self._backend: Backend | None = None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = select_backend(self.mode, self.where)
        return self._backend

    def leftovers(self, ipv6: bool) -> tuple[str, ...]:
        """What of the other mode's state the netns holds, as `<mode> mode: <line>`."""
        try:
            diff = self.backend.check(nothing(self.mode.native_nftables, ipv6))
        except RulesApplyFailed as exc:  # its tools cannot read this netns: nothing to see
            log.debug("not looking for %s mode's rules: %s", self.mode.label, exc.msg)
            return ()
        return tuple(f"{self.mode.label} mode: {line}" for line in diff.extra)


def nothing(native_nftables: bool, ipv6: bool) -> AnyRuleSet:
    """An empty rule set of a mode: checked against it, a netns's state of ours is all extra."""
    if native_nftables:
        from cni.nft_ruleset import NftRuleSet

        return NftRuleSet(())
    return RuleSet(FamilyRules(False), FamilyRules(True) if ipv6 else None)


class PodNetns:
    """A pod netns the current thread has entered, with the rules it should hold.

    `ipv6`: whether the pod gets IPv6 (TPROXY routes per family); `other`: the mode it is not
    in, when a node may have been switched (see the module docstring)."""

    def __init__(self, path: str, ruleset: AnyRuleSet, backend: str | RuleMode | Backend = "auto",
                 ipv6: bool | None = None, other: OtherMode | None = None) -> None:
        self.path = path
        self.ruleset = ruleset
        self.backend = (select_backend(backend, path) if isinstance(backend, str | RuleMode)
                        else backend)
        self.ipv6 = _ipv6_of(ruleset) if ipv6 is None else ipv6
        self.other = other

    def program(self) -> str:
        """Make the netns hold the rule set; "applied" or "already-programmed"."""
        return as_owner(self.path, self._program)

    def check(self) -> StateDiff:
        """What the netns lacks or has beyond the rule set; empty = in sync."""
        return as_owner(self.path, self._check)

    def reset(self) -> None:
        """Remove our rules, and the other mode's state when there is any (routes and `::6`
        stay: `program` only adds what is missing)."""
        as_owner(self.path, self._reset)

    def replace(self) -> str:
        """Make the netns hold exactly the rule set, whatever it holds now, without a moment
        in which the pod has no redirection (the fix of repair and drift); "applied" or
        "already-programmed".

        Routes and `::6` come first (they change nothing until a rule uses them), then the
        backend's one atomic replace, then the other mode's state is removed, once this
        mode's rules are in place (both redirect the same way meanwhile)."""
        return as_owner(self.path, self._replace)

    def _replace(self) -> str:
        changed = _program_links(self.path, self.ruleset, self.ipv6)
        changed = self.backend.replace(self.ruleset) or changed
        if self.other is not None and self.other.leftovers(self.ipv6):
            self.other.backend.reset(self.other.ruleset())
            changed = True
        return "applied" if changed else "already-programmed"

    def _program(self) -> str:
        changed = self.backend.program(self.ruleset)
        changed = _program_links(self.path, self.ruleset, self.ipv6) or changed
        return "applied" if changed else "already-programmed"

    def _check(self) -> StateDiff:
        diff = self.backend.check(self.ruleset)
        missing = diff.missing + _missing_links(self.ruleset, self.ipv6)
        left = self.other.leftovers(self.ipv6) if self.other is not None else ()
        if not left:
            return StateDiff(missing, diff.extra, diff.clean)
        assert self.other is not None
        return StateDiff(missing, diff.extra + left, False, self.other.mode.label)

    def _reset(self) -> None:
        self.backend.reset(self.ruleset)
        if self.other is not None and self.other.leftovers(self.ipv6):
            self.other.backend.reset(self.other.ruleset())


def _ipv6_of(ruleset: AnyRuleSet) -> bool:
    """An iptables rule set says whether the pod has IPv6; an nftables one cannot (one rule
    list for both families), so its caller must."""
    if not isinstance(ruleset, RuleSet):
        raise ValueError("an nftables rule set needs the pod's IPv6 fact (ipv6=...)")
    return ruleset.v6 is not None


def program(netns_path: str, ruleset: AnyRuleSet, backend: str | RuleMode = "auto",
            ipv6: bool | None = None) -> str:
    """Enter the netns and `PodNetns.program` there."""
    with netns.in_netns(netns_path):
        return PodNetns(netns_path, ruleset, backend, ipv6).program()


def check(netns_path: str, ruleset: AnyRuleSet, backend: str | RuleMode = "auto",
          ipv6: bool | None = None) -> StateDiff:
    """Enter the netns and `PodNetns.check` there."""
    with netns.in_netns(netns_path):
        return PodNetns(netns_path, ruleset, backend, ipv6).check()


def reset(netns_path: str, ruleset: AnyRuleSet, backend: str | RuleMode = "auto",
          ipv6: bool | None = None) -> None:
    """Enter the netns and `PodNetns.reset` there."""
    with netns.in_netns(netns_path):
        PodNetns(netns_path, ruleset, backend, ipv6).reset()


def _families(ipv6: bool) -> list[int]:
    return [socket.AF_INET, socket.AF_INET6] if ipv6 else [socket.AF_INET]


def _program_links(netns_path: str, ruleset: AnyRuleSet, ipv6: bool) -> bool:
    """TPROXY policy routing and `::6` on lo; True if anything was added."""
    if ruleset.tproxy_routes is None and not ruleset.ipv6_passthrough_addr:
        return False
    from pyroute2 import IPRoute, NetlinkError

    changed = False
    with IPRoute() as ipr:  # a netlink socket of this thread's netns
        lo = ipr.link_lookup(ifname="lo")[0]
        ops: list[tuple[str, Any]] = []
        if ruleset.tproxy_routes is not None:
            ops += _route_ops(ipr, lo, ruleset.tproxy_routes, _families(ipv6))
        if ruleset.ipv6_passthrough_addr and not _has_passthrough():
            ops.append(("add ::6/128 dev lo", lambda: ipr.addr(
                "add", index=lo, address=PASSTHROUGH_V6, prefixlen=128)))
        for what, op in ops:
            try:
                op()
                changed = True
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise RulesApplyFailed(f"{what} in {netns_path}: {exc}") from exc
    return changed


def _route_ops(ipr: Any, lo: int, routes: TproxyRoutes, fams: list[int]) -> list[tuple[str, Any]]:
    """The missing `ip rule` / `ip route` operations, as (description, thunk)."""
    have_rules, have_routes = _tproxy_present(ipr, routes, fams)
    ops: list[tuple[str, Any]] = []
    for fam in fams:
        dst = "0.0.0.0/0" if fam == socket.AF_INET else "::/0"
        if fam not in have_rules:
            ops.append((f"ip rule add fwmark {routes.mark} lookup {routes.table}",
                        lambda f=fam: ipr.rule("add", family=f, fwmark=routes.mark,
                                               table=routes.table)))
        if fam not in have_routes:
            ops.append((f"ip route add local {dst} dev lo table {routes.table}",
                        lambda f=fam: ipr.route("add", family=f, dst_len=0, type="local",
                                                scope=RT_SCOPE_HOST, oif=lo,
                                                table=routes.table)))
    return ops


def _tproxy_present(ipr: Any, routes: TproxyRoutes, fams: list[int]) -> tuple[set, set]:
    have_rules: set[int] = set()
    have_routes: set[int] = set()
    for fam in fams:
        for rule in ipr.get_rules(family=fam):
            if (rule.get_attr("FRA_FWMARK") == routes.mark
                    and rule.get_attr("FRA_TABLE") == routes.table):
                have_rules.add(fam)
        for route in ipr.get_routes(family=fam, table=routes.table):
            if route["type"] == 2 and route["dst_len"] == 0:  # RTN_LOCAL default
                have_routes.add(fam)
    return have_rules, have_routes


def _has_passthrough() -> bool:
    """Is ::6 on lo? Cheap: this thread's /proc view, no netlink library needed."""
    return any(addr == socket.inet_pton(socket.AF_INET6, PASSTHROUGH_V6)
               for _, addr in _lo_v6())


def _lo_v6() -> list[tuple[int, bytes]]:
    lo = socket.if_nametoindex("lo")
    return [(i, a.packed) for i, a in netns._ipv6_addresses() if i == lo]


def _missing_links(ruleset: AnyRuleSet, ipv6: bool) -> tuple[str, ...]:
    missing: list[str] = []
    if ruleset.ipv6_passthrough_addr and not _has_passthrough():
        missing.append("ip -6 addr ::6/128 dev lo")
    if ruleset.tproxy_routes is not None:
        from pyroute2 import IPRoute

        r = ruleset.tproxy_routes
        fams = _families(ipv6)
        with IPRoute() as ipr:
            have_rules, have_routes = _tproxy_present(ipr, r, fams)
        for fam in fams:
            v = "-4" if fam == socket.AF_INET else "-6"
            if fam not in have_rules:
                missing.append(f"ip {v} rule fwmark {r.mark} lookup {r.table}")
            if fam not in have_routes:
                missing.append(f"ip {v} route local default dev lo table {r.table}")
    return tuple(missing)
