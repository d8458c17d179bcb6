"""cni.apply in real netns: program is idempotent, all-or-nothing, and really redirects."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct

import pytest

from cni.apply import check, program, reset
from cni.errors import InvalidNetNS, RulesApplyFailed, RulesConflict
from cni.netns import in_netns, read_facts
from cni.ruleset import FamilyRules, Rule, RuleSet
from testbed.wait import wait_for
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


def _take(lock) -> bool:  # noqa: ANN001 - an open file
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def test_legacy_never_waits_for_the_host_lock(netns) -> None:  # noqa: ANN001
    """kube-proxy holding /run/xtables.lock must not block a pod's ADD (pod-scoped lock).

    The lock file is made the way iptables makes it (O_CREAT, 0600) when no iptables command
    has run on this host yet, and taken when whoever holds it lets go: the test does not depend
    on what ran before it."""
    need("iptables-legacy-restore")
    fd = os.open("/run/xtables.lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd) as lock:
        wait_for(lambda: _take(lock), timeout=120, what="the host xtables lock to be free")
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


FOREIGN = ("-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "ACCEPT")
TOOL = {"nft": "iptables-nft", "legacy": "iptables-legacy", "python-iptables": "iptables-legacy"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_reset_removes_our_state_and_keeps_foreign_rules(netns, backend: str) -> None:  # noqa: ANN001
    """Reset takes away whatever of ours the netns holds (here a conflicting rule set), so
    that the wanted rules can be programmed; a foreign rule in a built-in chain stays."""
    need(SAVE[backend], TOOL[backend])
    netns.run(TOOL[backend], *FOREIGN)
    program(netns.path, ruleset("dns"), backend)
    with pytest.raises(RulesConflict):
        program(netns.path, ruleset("basic"), backend)
    reset(netns.path, ruleset("basic"), backend)
    after = netns.run(SAVE[backend])
    assert "ISTIO" not in after
    assert "-A OUTPUT -p udp -m udp --dport 9 -j ACCEPT" in after
    assert check(netns.path, ruleset("basic"), backend).clean
    assert program(netns.path, ruleset("basic"), backend) == "applied"
    assert check(netns.path, ruleset("basic"), backend).state == "identical"


def test_python_iptables_needs_no_iptables_binary(netns, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """program, check and reset through python-iptables with no iptables binary on PATH."""
    need("iptables-legacy", "iptables-legacy-save")
    netns.run("iptables-legacy", *FOREIGN)
    program(netns.path, ruleset("dns"), "python-iptables")
    programmed = sorted(rule_lines(netns.run("iptables-legacy-save")))
    netns.run("iptables-legacy", "-t", "nat", "-I", "ISTIO_OUTPUT", "1", "-p", "tcp",
              "--dport", "9999", "-j", "RETURN")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("iptables-legacy-restore") is None
    assert shutil.which("iptables-legacy-save") is None
    rs = ruleset("dns")
    assert "-t nat -A ISTIO_OUTPUT -p tcp -m tcp --dport 9999 -j RETURN" in check(
        netns.path, rs, "python-iptables").extra
    reset(netns.path, rs, "python-iptables")
    assert check(netns.path, rs, "python-iptables").clean
    assert program(netns.path, rs, "python-iptables") == "applied"
    assert check(netns.path, rs, "python-iptables").state == "identical"
    monkeypatch.undo()
    after = netns.run("iptables-legacy-save")
    assert "--dport 9999" not in after
    assert "-A OUTPUT -p udp -m udp --dport 9 -j ACCEPT" in after
    assert sorted(rule_lines(after)) == programmed  # our jumps removed, then put back once
