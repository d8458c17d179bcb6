"""The warm apply (the node agent's: `cni.backends.node_facts`) decides exactly as the cold one
(the plugin's, upstream's `DetectIptablesVersion` run per pod), and starts no process to learn
what it already knows.

The differential: every netns state the backend tests build (empty, ours identical, ours
conflicting, foreign rules, legacy rules, a legacy table with no rules, another tool's nftables
table, the other mode's tables; in a netns of our own user namespace and in a pod's own one),
built twice or three times over, then observed through a cold backend, a warm one that learns
the node's facts on the way, and a warm one whose facts were learned before: the flavour each
family's `program` chose, what `check` said before, what `program` did (or refused, and why),
what `check` says after, and the rule lines every tool lists. All must be equal.

Processes are counted with shims on PATH that log their own name and exec the real binary.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cni import apply, userns
from cni.backends import RuleMode
from cni.backends.node_facts import NodeFacts
from cni.backends.restore import RestoreBackend
from cni.errors import CNIError
from cni.live_state import StateDiff
from cni.netns import in_netns
from cni.nft_rules import build_nft_ruleset
from cni.ruleset import RuleSet
from testbed.cleanup import Cleanup
from testbed.netns import create_netns, temporary_netns
from testbed.userns import create_userns_netns
from tests.cni.netns_fixtures import CONFIGS, need, ruleset

pytestmark = pytest.mark.root
WANTED = "ipv6"
"""The rule set every case programs: both families, TPROXY routes, DNS capture."""
FOREIGN = ("-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "9", "-j", "ACCEPT")
TOOLS = ("iptables", "ip6tables")
VARIANTS = ("", "-nft", "-legacy")
ROLES = ("", "-save", "-restore")
SAVES = ("iptables-nft-save", "ip6tables-nft-save", "iptables-legacy-save",
         "ip6tables-legacy-save")


def _tool(backend: str) -> str:
    return "iptables-legacy" if backend == "legacy" else "iptables-nft"


def _other_mode(ns: object, backend: str) -> None:
    need("nft")
    rs = build_nft_ruleset(CONFIGS["basic"])
    apply.program(ns.path, rs, RuleMode(native_nftables=True, nftables_backend="nft"),  # type: ignore[attr-defined]
                  ipv6=True)


STATES: dict[str, Callable[[object, str], None]] = {
    "empty": lambda ns, b: None,
    "ours identical": lambda ns, b: apply.program(ns.path, ruleset(WANTED), b),  # type: ignore[attr-defined]
    "ours conflicting": lambda ns, b: apply.program(ns.path, ruleset("wide"), b),  # type: ignore[attr-defined]
    "foreign rules": lambda ns, b: ns.run(_tool(b), *FOREIGN),  # type: ignore[attr-defined]
    "legacy rules": lambda ns, b: ns.run("iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-p",  # type: ignore[attr-defined]
                                         "255", "-j", "RETURN"),
    "legacy table, no rules": lambda ns, b: ns.run("ip6tables-legacy", "-t", "mangle", "-S"),  # type: ignore[attr-defined]
    "another tool's ip table": lambda ns, b: ns.run("nft", "add", "table", "ip", "filter"),  # type: ignore[attr-defined]
    "other mode's tables": _other_mode,
}
USERNS_STATES = ("empty", "ours identical", "legacy rules")


def _prime(facts: NodeFacts) -> NodeFacts:
    """What an agent learns from its first pods: each binary's version, nft's usability."""
    need("iptables-nft-save", "iptables-legacy-save", "ip6tables-legacy", "nft")
    with temporary_netns("icni-bw") as ns, in_netns(ns.path):
        for force in (None, "nft", "legacy"):
            b = RestoreBackend(force, ns.path, facts)
            b.flavor(False), b.flavor(True)
    assert facts.nft_usable("iptables") and facts.version("iptables-legacy")
    return facts


@pytest.fixture(scope="module")
def primed() -> NodeFacts:
    """Node facts learned once for the module (each test checks it caused no retry)."""
    return _prime(NodeFacts())


def _own_netns(cleanup: Cleanup) -> object:
    return create_netns(cleanup, "icni-bw")


def _userns_netns(cleanup: Cleanup) -> object:
    return create_userns_netns(cleanup, "icni-bwu")


def _diff(d: StateDiff) -> tuple:
    return d.state, tuple(sorted(d.missing)), tuple(sorted(d.extra))


def _steps(where: str, backend: Callable[[], RestoreBackend], rs: RuleSet) -> tuple:
    """Inside the netns, as its owner: check, program, the flavours program chose, check."""
    before = _diff(backend().check(rs))
    b = backend()
    try:
        outcome: tuple = ("ok", b.program(rs))
    except CNIError as exc:
        outcome = (type(exc).__name__, exc.msg.replace(where, "NS"), exc.details)
    chosen = tuple((f.binary, f.legacy, f.version) for f in (b.flavor(fam.ipv6)
                                                             for fam in rs.families()))
    return before, outcome, chosen, _diff(backend().check(rs))


def _rule_lines(ns: object) -> dict[str, list[str]]:
    return {save: [line for line in ns.run(save).splitlines()  # type: ignore[attr-defined]
                   if line.startswith(("-A", ":ISTIO"))] for save in SAVES}


def observe(ns: object, force: str | None, facts: NodeFacts | None) -> tuple:
    rs = ruleset(WANTED)
    where = ns.path  # type: ignore[attr-defined]
    with in_netns(where):
        seen = userns.as_owner(where, lambda: _steps(
            where, lambda: RestoreBackend(force, where, facts), rs))
    return (*seen, _rule_lines(ns))


def _differential(cleanup: Cleanup, make: Callable[[Cleanup], object], primed: NodeFacts,
                  state: str, backend: str) -> None:
    force = None if backend == "auto" else backend
    seen = {}
    for name, facts in (("cold", None), ("warm, learning", NodeFacts()), ("warm", primed)):
        ns = make(cleanup)
        STATES[state](ns, backend)
        seen[name] = observe(ns, force, facts)
    assert seen["warm, learning"] == seen["cold"]
    assert seen["warm"] == seen["cold"]
    assert primed.forgotten == 0  # nothing failed: no retry decided it


@pytest.mark.parametrize("backend", ["auto", "nft", "legacy"])
@pytest.mark.parametrize("state", list(STATES))
def test_warm_decides_as_cold(cleanup: Cleanup, primed: NodeFacts, state: str,
                              backend: str) -> None:
    _differential(cleanup, _own_netns, primed, state, backend)


@pytest.mark.parametrize("backend", ["auto", "legacy"])
@pytest.mark.parametrize("state", USERNS_STATES)
def test_warm_decides_as_cold_in_a_pod_user_namespace(cleanup: Cleanup, primed: NodeFacts,
                                                      state: str, backend: str) -> None:
    _differential(cleanup, _userns_netns, primed, state, backend)


# --- what is started ------------------------------------------------------------------------

@pytest.fixture
def traced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """`traced(omit=())`: PATH is a directory of shims, one per iptables binary but `omit`,
    each appending its name to the returned log and exec'ing the real binary, then the
    system's other tools (`ip`, `nft`, `sysctl`, ...) and no other iptables binary."""

    def make(omit: tuple[str, ...] = ()) -> Path:
        bindir, others, log = tmp_path / "bin", tmp_path / "others", tmp_path / "started"
        bindir.mkdir(exist_ok=True)
        others.mkdir(exist_ok=True)
        log.write_text("")
        for entry in os.scandir("/usr/sbin"):
            if not entry.name.startswith(TOOLS) and not (others / entry.name).is_symlink():
                (others / entry.name).symlink_to(entry.path)
        for name in (f"{t}{v}{r}" for t in TOOLS for v in VARIANTS for r in ROLES):
            real = next((f"{d}/{name}" for d in ("/usr/sbin", "/usr/bin")
                         if os.path.exists(f"{d}/{name}")), None)
            if real is None or name in omit:
                continue
            shim = bindir / name
            shim.write_text(f'#!/bin/sh\necho {name} >> {log}\nexec {real} "$@"\n')
            shim.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bindir}:{others}:/usr/bin:/bin")
        return log

    return make


def _started(log: Path) -> list[str]:
    return log.read_text().split()


@pytest.mark.parametrize("force", [None, "nft", "legacy"], ids=["auto", "nft", "legacy"])
def test_a_warm_add_of_a_fresh_netns_is_one_restore_per_family(
        cleanup: Cleanup, traced: Callable[..., Path], force: str | None) -> None:
    facts = _prime(NodeFacts())
    ns, cold = _own_netns(cleanup), _own_netns(cleanup)
    log = traced()
    with in_netns(ns.path):
        assert RestoreBackend(force, ns.path, facts).program(ruleset(WANTED))
    flavor = force or "nft"
    assert _started(log) == [f"iptables-{flavor}-restore", f"ip6tables-{flavor}-restore"]
    if flavor == "nft":  # and so no probe left upstream's empty `filter` table behind
        tables = ns.run("nft", "list", "tables")  # type: ignore[attr-defined]
        assert "table ip nat" in tables and "filter" not in tables
    # the same ADD cold: detection processes first (save, probe, version), as upstream
    log.write_text("")
    with in_netns(cold.path):
        assert RestoreBackend(force, cold.path).program(ruleset(WANTED))
    assert len(_started(log)) > 2


def test_a_failure_with_kept_facts_detects_again_and_retries_once(
        cleanup: Cleanup, traced: Callable[..., Path], caplog: pytest.LogCaptureFixture) -> None:
    """The node changed under the agent (here: the nft-specific binaries went away, the
    generic `iptables` stayed): the apply with the kept fact fails, the facts are forgotten,
    detection runs in full and finds the generic binary, and the ADD succeeds."""
    need("iptables-restore")
    facts = _prime(NodeFacts())
    gone = tuple(f"{t}-nft{r}" for t in TOOLS for r in ROLES)
    ns = _own_netns(cleanup)
    log = traced(omit=gone)
    rs = ruleset("basic")
    with in_netns(ns.path), caplog.at_level(logging.WARNING, logger="istio-cni"):
        assert RestoreBackend(None, ns.path, facts).program(rs) is True
    assert facts.forgotten == 1
    assert facts.nft_usable("iptables") is False  # learned again, from the cold detection
    assert "detecting again and retrying once" in caplog.text
    assert "iptables-nft-restore" in caplog.text  # why: the kept binary's failure
    started = _started(log)
    assert started[-1] == "iptables-restore" and "iptables-legacy-save" in started
    assert "-A OUTPUT -j ISTIO_OUTPUT" in ns.run("/usr/sbin/iptables-nft-save")  # type: ignore[attr-defined]


def test_a_refused_payload_is_retried_once_cold_then_reported(
        netns, traced: Callable[..., Path]) -> None:  # noqa: ANN001
    """A failure after warm reads gets one cold retry, which fails the same way and is
    reported; without kept facts (the plugin's own process) nothing is retried."""
    from cni.errors import RulesApplyFailed
    from cni.ruleset import FamilyRules, Rule

    need("iptables-nft-restore")
    log = traced()
    bad = RuleSet(FamilyRules(False, (Rule("nat", "ISTIO_X", ("-A", "ISTIO_X", "-j", "NOPE")),)))
    facts = NodeFacts()
    for kept, restores in ((None, 1), (facts, 2)):
        log.write_text("")
        with in_netns(netns.path), pytest.raises(RulesApplyFailed, match="NOPE|exit"):
            RestoreBackend("nft", netns.path, kept).program(bad)
        assert _started(log).count("iptables-nft-restore") == restores
    assert facts.forgotten == 1
    assert "ISTIO" not in netns.run("iptables-nft-save")
