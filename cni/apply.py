"""Program, check and reset a pod netns: its backend's rules plus routes and addresses.

`PodNetns` is one visit to one pod netns (the calling thread is inside it): the rule set, the
backend, and the three operations every caller uses. The backend does the packet filter (see
`cni.backends.Backend`: idempotent, all or nothing, conflicts refused); TPROXY routes and the
`::6` address come last and are backend-independent ("exists" is fine). `program`, `check`
and `reset` are the same operations for a caller that is not inside the netns yet.

Each operation runs as the netns's owner (`cni.userns.as_owner`): right here for a netns owned
by our own user namespace, else in a child inside the pod's user namespace (`hostUsers: false`),
whatever the backend, for every caller (ADD, CHECK, repair, the drift check, `explain`).

Hot path: pyroute2 is imported only when a rule set needs routes or `::6`.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from cni import netns
from cni.backends import Backend, select_backend
from cni.errors import RulesApplyFailed
from cni.live_state import StateDiff
from cni.ruleset import RuleSet, TproxyRoutes
from cni.userns import as_owner

PASSTHROUGH_V6 = "::6"
RT_SCOPE_HOST = 254  # what `ip route add local ...` sets for RTN_LOCAL routes


class PodNetns:
    """A pod netns the current thread has entered, with the rules it should hold."""

    def __init__(self, path: str, ruleset: RuleSet, backend: str | Backend = "auto") -> None:
        self.path = path
        self.ruleset = ruleset
        self.backend = select_backend(backend, path) if isinstance(backend, str) else backend

    def program(self) -> str:
        """Make the netns hold the rule set; "applied" or "already-programmed"."""
        return as_owner(self.path, self._program)

    def check(self) -> StateDiff:
        """What the netns lacks or has beyond the rule set; empty = in sync."""
        return as_owner(self.path, self._check)

    def reset(self) -> None:
        """Remove our rules (routes and `::6` stay: `program` only adds what is missing)."""
        as_owner(self.path, self.backend.reset, self.ruleset)

    def _program(self) -> str:
        changed = self.backend.program(self.ruleset)
        changed = _program_links(self.path, self.ruleset) or changed
        return "applied" if changed else "already-programmed"

    def _check(self) -> StateDiff:
        diff = self.backend.check(self.ruleset)
        return StateDiff(diff.missing + _missing_links(self.ruleset), diff.extra, diff.clean)


def program(netns_path: str, ruleset: RuleSet, backend: str = "auto") -> str:
    """Enter the netns and `PodNetns.program` there."""
    with netns.in_netns(netns_path):
        return PodNetns(netns_path, ruleset, backend).program()


def check(netns_path: str, ruleset: RuleSet, backend: str = "auto") -> StateDiff:
    """Enter the netns and `PodNetns.check` there."""
    with netns.in_netns(netns_path):
        return PodNetns(netns_path, ruleset, backend).check()


def reset(netns_path: str, ruleset: RuleSet, backend: str = "auto") -> None:
    """Enter the netns and `PodNetns.reset` there."""
    with netns.in_netns(netns_path):
        PodNetns(netns_path, ruleset, backend).reset()


def _families(ruleset: RuleSet) -> list[int]:
    return [socket.AF_INET] if ruleset.v6 is None else [socket.AF_INET, socket.AF_INET6]


def _program_links(netns_path: str, ruleset: RuleSet) -> bool:
    """TPROXY policy routing and `::6` on lo; True if anything was added."""
    if ruleset.tproxy_routes is None and not ruleset.ipv6_passthrough_addr:
        return False
    from pyroute2 import IPRoute, NetlinkError

    changed = False
    with IPRoute() as ipr:  # a netlink socket of this thread's netns
        lo = ipr.link_lookup(ifname="lo")[0]
        ops: list[tuple[str, Any]] = []
        if ruleset.tproxy_routes is not None:
            ops += _route_ops(ipr, lo, ruleset.tproxy_routes, _families(ruleset))
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


def _missing_links(ruleset: RuleSet) -> tuple[str, ...]:
    missing: list[str] = []
    if ruleset.ipv6_passthrough_addr and not _has_passthrough():
        missing.append("ip -6 addr ::6/128 dev lo")
    if ruleset.tproxy_routes is not None:
        from pyroute2 import IPRoute

        r = ruleset.tproxy_routes
        fams = _families(ruleset)
        with IPRoute() as ipr:
            have_rules, have_routes = _tproxy_present(ipr, r, fams)
        for fam in fams:
            v = "-4" if fam == socket.AF_INET else "-6"
            if fam not in have_rules:
                missing.append(f"ip {v} rule fwmark {r.mark} lookup {r.table}")
            if fam not in have_routes:
                missing.append(f"ip {v} route local default dev lo table {r.table}")
    return tuple(missing)
