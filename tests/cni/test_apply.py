"""cni.apply in real netns: program is idempotent, all-or-nothing, and really redirects."""

from __future__ import annotations

import fcntl
import os
import socket
import struct

import pytest

from cni.apply import check, program
from cni.errors import InvalidNetNS, RulesApplyFailed, RulesConflict
from cni.netns import in_netns, read_facts
from cni.ruleset import FamilyRules, Rule, RuleSet
from tests.cni.netns_fixtures import need, ruleset

pytestmark = pytest.mark.root
BACKENDS = ["nft", "legacy", "python-iptables"]
SAVE = {"nft": "iptables-nft-save", "legacy": "iptables-legacy-save",
        "python-iptables": "iptables-legacy-save"}
SO_ORIGINAL_DST = 80


def test_missing_netns_is_invalid_netns() -> None:
    with pytest.raises(InvalidNetNS):
        program("/var/run/netns/icni-b-does-not-exist", ruleset("basic"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_program_is_idempotent(netns, backend: str) -> None:  # noqa: ANN001
    need(SAVE[backend])
    rs = ruleset("basic")
    assert program(netns.path, rs, backend) == "applied"
    first = netns.run(SAVE[backend])
    assert "-A OUTPUT -j ISTIO_OUTPUT" in first
    assert program(netns.path, rs, backend) == "already-programmed"
    assert rule_lines(netns.run(SAVE[backend])) == rule_lines(first)
    assert check(netns.path, rs, backend).state == "identical"


def rule_lines(save: str) -> list[str]:
    return [line for line in save.splitlines() if line.startswith(("-A", ":ISTIO"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_conflicting_leftovers_change_nothing(netns, backend: str) -> None:  # noqa: ANN001
    need(SAVE[backend])
    program(netns.path, ruleset("dns"), backend)
    before = rule_lines(netns.run(SAVE[backend]))
    with pytest.raises(RulesConflict) as err:
        program(netns.path, ruleset("basic"), backend)
    assert "extra: -t nat -N ISTIO_OUTPUT_DNS" in err.value.details
    assert rule_lines(netns.run(SAVE[backend])) == before


@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_check_reports_flushed_chain(netns, backend: str) -> None:  # noqa: ANN001
    rs = ruleset("basic")
    program(netns.path, rs, backend)
    netns.run(f"iptables-{backend}", "-t", "nat", "-F", "ISTIO_OUTPUT")
    diff = check(netns.path, rs, backend)
    assert diff.state == "conflict" and diff.extra == ()
    assert "-t nat -A ISTIO_OUTPUT -j ISTIO_REDIRECT" in diff.missing
    assert all("ISTIO_OUTPUT" in m for m in diff.missing)


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_v6_rolls_back_v4(netns, backend: str) -> None:  # noqa: ANN001
    need(SAVE[backend])
    bad_v6 = FamilyRules(True, (
        Rule("nat", "ISTIO_OUTPUT", ("-A", "ISTIO_OUTPUT", "-d", "10.0.0.0/8", "-j", "RETURN")),))
    rs = RuleSet(v4=ruleset("basic").v4, v6=bad_v6)
    with pytest.raises(RulesApplyFailed):
        program(netns.path, rs, backend)
    assert "ISTIO" not in netns.run(SAVE[backend])


def test_tproxy_routes_and_passthrough_address(make_netns) -> None:  # noqa: ANN001
    ns = make_netns(v4="10.78.0.2", v6="fd00:78::2")
    rs = ruleset("ipv6")
    assert program(ns.path, rs) == "applied"
    assert "fwmark 0x539 lookup 133" in ns.run("ip", "rule")
    assert "fwmark 0x539 lookup 133" in ns.run("ip", "-6", "rule")
    assert "local default dev lo" in ns.run("ip", "route", "show", "table", "133")
    assert "local default dev lo" in ns.run("ip", "-6", "route", "show", "table", "133")
    assert "inet6 ::6/128" in ns.run("ip", "-6", "addr", "show", "dev", "lo")
    assert check(ns.path, rs).state == "identical"
    assert program(ns.path, rs) == "already-programmed"
    ns.run("ip", "rule", "del", "fwmark", "1337", "lookup", "133")
    assert check(ns.path, rs).missing == ("ip -4 rule fwmark 1337 lookup 133",)


def test_detect_ipv6_in_netns(make_netns) -> None:  # noqa: ANN001
    ns = make_netns(v4="10.79.0.2", v6="fd00:79::2")
    with in_netns(ns.path):
        facts = read_facts()
    assert facts.ipv6(dual_stack=False) is False
    assert facts.ipv6(dual_stack=True) is True


def test_legacy_never_waits_for_the_host_lock(netns) -> None:  # noqa: ANN001
    """kube-proxy holding /run/xtables.lock must not block a pod's ADD (pod-scoped lock)."""
    need("iptables-legacy-restore")
    if not os.path.exists("/run/xtables.lock"):
        pytest.skip("no host xtables lock file on this machine")
    with open("/run/xtables.lock") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pytest.skip("the host xtables lock is busy: cannot take it for the test")
        try:
            assert program(netns.path, ruleset("basic"), "legacy") == "applied"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    assert "ISTIO_OUTPUT" in netns.run("iptables-legacy-save")


@pytest.mark.parametrize("backend", BACKENDS)
def test_outbound_tcp_is_redirected_to_15001(netns, backend: str) -> None:  # noqa: ANN001
    need(SAVE[backend])
    program(netns.path, ruleset("basic"), backend)
    with in_netns(netns.path):
        listener = socket.create_server(("0.0.0.0", 15001))
        client = socket.socket()
        try:
            client.settimeout(5)
            client.connect(("10.77.0.99", 80))  # a remote address on the veth subnet
            conn, _ = listener.accept()
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            conn.close()
        finally:
            client.close()
            listener.close()
    port, addr = struct.unpack("!2xH4s8x", raw)
    assert (socket.inet_ntoa(addr), port) == ("10.77.0.99", 80)
