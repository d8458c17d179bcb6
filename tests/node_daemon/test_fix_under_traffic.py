"""A running pod's rules are fixed in one atomic step: no connection skips the proxy (#17,
class 5).

Repair and drift (`reconcile_rules`) fix a netns whose rules differ from the wanted ones: an
upgrade that changes one generated rule, an edited annotation, a node switched between
iptables and native nftables mode. On 170a823 the fix was a reset then a program, and for the
moment between them the pod had no redirection: connections went straight to their
destination, and conntrack keeps them so for their lifetime.

The pod here is a netns joined to a peer by a veth: "proxy" answers on 15001 in the pod,
"direct" on the peer's port 80, and the app (uid 1000) connects to the peer back to back,
so each connection says where it landed.

`test_every_step_of_a_fix_leaves_the_pod_redirected` is deterministic: it wraps the real
backends so that after each change they commit, real traffic flows before the next one (on
170a823 the reset's commit is followed by direct connections, every time). The back-to-back
test fixes a pod over and over under unpaced traffic, the figure of docs/reliability.md.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest

from cni import apply, backends, nft_exec
from cni.backends import RuleMode
from cni.pipeline import check_pod, plan, program_pod
from node_daemon.pod_rules import RulesState, reconcile_rules
from testbed.cleanup import Cleanup
from testbed.netns import Netns, create_netns
from testbed.pods import COMPLETED, make_pod
from testbed.procs import sh
from testbed.traffic import Server, Traffic, netns_launcher
from tests.cni.netns_fixtures import need

pytestmark = pytest.mark.root
POD_IP, PEER_IP, APP_UID = "10.79.0.2", "10.79.0.1", 1000
MODES = {
    "nft": RuleMode(iptables_backend="nft"),
    "legacy": RuleMode(iptables_backend="legacy"),
    "python-iptables": RuleMode(iptables_backend="python-iptables"),
    "nftables": RuleMode(native_nftables=True),
}
BEFORE = {"traffic.sidecar.istio.io/excludeOutboundPorts": "9"}
"""The pod as programmed; the fix's spec lacks this one exclusion (one rule differs)."""
FIXES = int(os.environ.get("ISTIO_CNI_TEST_FIXES", "8"))
"""Fixes in the back-to-back test (docs/reliability.md's figure used 200)."""


def available(*modes: str) -> None:
    for mode in modes:
        if mode == "nftables":
            if nft_exec.LibNftables.load() is None and nft_exec.NftBinary.find() is None:
                pytest.skip("neither libnftables nor nft is installed")
        else:
            tool = "iptables-legacy" if mode == "python-iptables" else f"iptables-{mode}"
            need(f"{tool}-save", f"{tool}-restore")


@pytest.fixture
def pod(cleanup: Cleanup) -> Netns:
    """A pod netns joined to a peer; the servers that tell where a connection landed."""
    need("ip")
    pod, peer = create_netns(cleanup, "icni-f"), create_netns(cleanup, "icni-f")
    sh("ip", "-n", pod.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
       "netns", peer.name)
    for ns, ip in ((pod.name, POD_IP), (peer.name, PEER_IP)):
        sh("ip", "-n", ns, "-batch", "-", input=f"addr add {ip}/24 dev eth0\nlink set eth0 up\n")
    Server(netns_launcher(peer.name), 80, "direct", cleanup)
    Server(netns_launcher(pod.name), 15001, "proxy", cleanup)
    return pod


def spec(annotations: dict[str, str] | None = None) -> Any:
    return plan(make_pod("app", ip=POD_IP, init_status=COMPLETED, annotations=annotations))[2]


class Paced:
    """A real backend after each of whose changes real traffic flows before anything else
    happens: what a busy pod sees between two commits, every time."""

    def __init__(self, inner: backends.Backend, traffic: Traffic) -> None:
        self._inner, self._traffic = inner, traffic

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _then_traffic(self, name: str, *args: Any) -> Any:
        result = getattr(self._inner, name)(*args)
        self._traffic.more(3)
        return result

    def program(self, ruleset: Any) -> Any:
        return self._then_traffic("program", ruleset)

    def reset(self, ruleset: Any = None) -> Any:
        return self._then_traffic("reset", ruleset)

    def replace(self, ruleset: Any) -> Any:
        return self._then_traffic("replace", ruleset)


SCENARIOS = {  # (programmed in, fixed in, what differs)
    "nft": ("nft", "nft"),
    "legacy": ("legacy", "legacy"),
    "python-iptables": ("python-iptables", "python-iptables"),
    "nftables": ("nftables", "nftables"),
    "iptables-to-nftables": ("nft", "nftables"),
    "nftables-to-iptables": ("nftables", "nft"),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_step_of_a_fix_leaves_the_pod_redirected(pod: Netns, cleanup: Cleanup,
                                                       mocker, scenario: str) -> None:  # noqa: ANN001
    before, after = SCENARIOS[scenario]
    available(before, after)
    switch = before != after
    wanted = spec(BEFORE if switch else None)
    program_pod(pod.path, spec(BEFORE), MODES[before])
    traffic = Traffic(netns_launcher(pod.name), PEER_IP, 80, APP_UID, cleanup)
    traffic.more(3)  # redirected before the fix

    real_select = backends.select_backend
    paced = lambda *a, **k: Paced(real_select(*a, **k), traffic)  # noqa: E731
    mocker.patch.object(backends, "select_backend", paced)
    mocker.patch.object(apply, "select_backend", paced)
    outcome = reconcile_rules(pod.path, wanted, MODES[after])
    mocker.stopall()

    traffic.more(3)
    landed = traffic.stop()
    assert outcome.state == RulesState.REPAIRED, outcome
    assert landed == Counter(proxy=landed["proxy"]), landed  # not one "direct", no failure
    diff = check_pod(pod.path, wanted, MODES[after])
    assert (diff.missing, diff.extra) == ((), ()), diff


@pytest.mark.parametrize("mode", ["nft", "legacy", "nftables"])
def test_back_to_back_fixes_under_continuous_traffic(pod: Netns, cleanup: Cleanup, mode: str,
                                                     record_property) -> None:  # noqa: ANN001
    """FIXES fixes, each a real change (the exclusion on, off, on...), while the app
    connects as fast as it can; not one connection may go direct."""
    available(mode)
    specs = [spec(BEFORE), spec()]
    program_pod(pod.path, specs[0], MODES[mode])
    traffic = Traffic(netns_launcher(pod.name), PEER_IP, 80, APP_UID, cleanup)
    for i in range(1, FIXES + 1):
        traffic.more(1)
        outcome = reconcile_rules(pod.path, specs[i % 2], MODES[mode])
        assert outcome.state == RulesState.REPAIRED, outcome
    landed = traffic.stop()
    record_property("landed", dict(landed))
    print(f"{mode}: {FIXES} fixes, {sum(landed.values())} connections: {dict(landed)}")
    assert landed["direct"] == 0 and landed["proxy"] > 0, landed
    assert set(landed) == {"proxy"}, landed
