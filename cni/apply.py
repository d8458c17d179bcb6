"""Program, check and probe a pod netns: the entry points of the plugin, repair and admin CLI.

`program` is idempotent and all-or-nothing across families: the live state of every family is
read first; identical families are left alone, a family holding other ISTIO_* rules is a
`RulesConflict` before anything changes, clean families are applied (one atomic restore or
libiptc commit each), and if a later family fails the earlier ones are removed again so a pod is
never half-programmed. TPROXY routes and the `::6` address come last ("exists" is fine).

Hot path: pyroute2 is imported only when a rule set needs routes or `::6`.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

from cni import netns
from cni.backends import RuleApplier, select_backend
from cni.errors import RulesApplyFailed, RulesConflict
from cni.live_state import StateDiff, diff_state
from cni.ruleset import FamilyRules, RuleSet, TproxyRoutes

PASSTHROUGH_V6 = "::6"
RT_SCOPE_HOST = 254  # what `ip route add local ...` sets for RTN_LOCAL routes


def program(netns_path: str, ruleset: RuleSet, backend: str = "auto") -> str:
    """Make the netns hold `ruleset`; returns "applied" or "already-programmed"."""
    with netns.in_netns(netns_path):
        applier = select_backend(backend, netns_path)
        diffs = [(fam, diff_state(applier.save(fam.ipv6), fam)) for fam in ruleset.families()]
        _refuse_conflicts(netns_path, [d for _, d in diffs])
        todo = [fam for fam, d in diffs if d.state == "clean" and fam.rules]
        _apply_all(applier, todo)
        changed = _program_links(netns_path, ruleset)
    return "applied" if todo or changed else "already-programmed"


def check(netns_path: str, ruleset: RuleSet, backend: str = "auto") -> StateDiff:
    """What the netns lacks (`missing`) or has beyond (`extra`) `ruleset`; empty = in sync."""
    with netns.in_netns(netns_path):
        applier = select_backend(backend, netns_path)
        diffs = [diff_state(applier.save(fam.ipv6), fam) for fam in ruleset.families()]
        links = _check_links(ruleset)
    result = sum(diffs, StateDiff()) + links
    return StateDiff(result.missing, result.extra, all(d.clean for d in diffs), result.notes)


def detect_ipv6(netns_path: str, dual_stack: bool) -> bool:
    """Does the pod get ip6tables rules? Upstream's `getLocalIP` on the netns's addresses."""
    with netns.in_netns(netns_path):
        return netns.detect_ipv6(netns.pod_addresses(), dual_stack)


def _refuse_conflicts(netns_path: str, diffs: list[StateDiff]) -> None:
    bad = [d for d in diffs if d.state == "conflict"]
    if not bad:
        return
    lines = [f"missing: {r}" for d in bad for r in d.missing]
    lines += [f"extra: {r}" for d in bad for r in d.extra]
    raise RulesConflict(
        f"program {netns_path}: netns already has ISTIO_* rules that differ from this pod's "
        f"({sum(len(d.missing) for d in bad)} missing, {sum(len(d.extra) for d in bad)} extra)",
        details="\n".join(lines))


def _apply_all(applier: RuleApplier, families: list[FamilyRules]) -> None:
    applied: list[FamilyRules] = []
    for fam in families:
        try:
            applier.apply(fam)
        except RulesApplyFailed:
            for done in reversed(applied):
                applier.delete(done)
            raise
        applied.append(fam)


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


def _check_links(ruleset: RuleSet) -> StateDiff:
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
    return StateDiff(missing=tuple(missing))
