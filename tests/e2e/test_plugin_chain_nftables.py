"""Native nftables mode through the CNI protocol: istio-cni (`native_nftables: true`) chained
after the real bridge + host-local plugins in a sandboxed node, both ways of talking to
nftables, with real TCP proving the redirection; re-ADD is a no-op, CHECK really checks, and
a CHECK in the other mode names the mode the pod was programmed in."""

from __future__ import annotations

import re

import pytest

from cni import nft_exec
from testbed import netns as nsutil
from testbed.cnirun import pod_ip
from testbed.node import Node, assert_app_traffic_redirected, gateway, istio_lines
from testbed.pods import workload
from testbed.traffic import Listener, connect

pytestmark = pytest.mark.root
WAYS = ["libnftables", "nft"]


def nftables_node(way: str) -> pytest.ParameterSet:
    return pytest.param({"native_nftables": True, "nftables_backend": way}, id=way)


@pytest.fixture(autouse=True)
def _ways_available(request: pytest.FixtureRequest) -> None:
    way = request.node.callspec.params["node"]["nftables_backend"]
    if way == "libnftables" and nft_exec.LibNftables.load() is None:
        pytest.skip(f"{nft_exec.LIBRARY} not installed")
    if nft_exec.NftBinary.find() is None:
        pytest.skip("nft not installed (the test lists the pod's tables with it)")


def ruleset(pod_ns: str) -> str:
    """`nft -a list ruleset` in the pod, counter values dropped (traffic moves them)."""
    text = nsutil.ns_exec(pod_ns, "nft", "-a", "list", "ruleset")
    return re.sub(r"counter packets \d+ bytes \d+", "counter", text)


def add_meshed(node: Node) -> tuple[str, dict, list]:
    pod = node.api.add_pod(workload("meshed-pod"))
    pod_ns = node.new_pod_netns()
    return pod_ns, pod, node.add(pod_ns, pod)


@pytest.mark.parametrize("node", [nftables_node(w) for w in WAYS], indirect=True)
def test_meshed_pod_gets_upstreams_tables_and_traffic_is_redirected(node: Node):
    pod_ns, _, calls = add_meshed(node)
    assert [c.status for c in calls] == [0, 0], calls[-1].stdout + calls[-1].stderr
    tables = nsutil.ns_exec(pod_ns, "nft", "list", "tables")
    assert "table inet istio-proxy-nat" in tables
    assert istio_lines(pod_ns) == []  # no iptables rules at all
    assert_app_traffic_redirected(node, pod_ns, calls)

    gw = gateway(node)  # the proxy's own traffic (uid 1337) bypasses capture
    upstream = Listener(node.name, 8080, cleanup=node.cleanup)
    status, out = connect(pod_ns, gw, 8080, uid=1337)
    assert status == 0, out
    [line] = upstream.lines()
    assert line.startswith(f"conn {pod_ip(calls)} ")


@pytest.mark.parametrize("node", [nftables_node(w) for w in WAYS], indirect=True)
def test_second_add_is_a_no_op_and_check_really_checks(node: Node):
    pod_ns, pod, calls = add_meshed(node)
    assert calls[-1].status == 0, calls[-1].stdout
    before = ruleset(pod_ns)  # with rule handles: a rebuild would renumber them
    again = node.call_istio(pod_ns, pod, "ADD", prev=calls[0].result)
    assert again.status == 0, again.stdout
    assert ruleset(pod_ns) == before

    check = node.call_istio(pod_ns, pod, "CHECK", prev=calls[-1].result)
    assert (check.status, check.stdout) == (0, "")

    nsutil.ns_exec(pod_ns, "nft", "flush", "chain", "inet", "istio-proxy-nat", "istio-output")
    check = node.call_istio(pod_ns, pod, "CHECK", prev=calls[-1].result)
    assert check.status == 1
    err = check.result
    assert err["code"] == 104
    assert "missing" in err["msg"] and "istio-proxy-nat istio-output" in err["details"]


@pytest.mark.parametrize("node", [nftables_node("auto")], indirect=True)
def test_check_in_the_other_mode_names_the_mode_the_pod_was_programmed_in(node: Node):
    pod_ns, pod, calls = add_meshed(node)
    assert calls[-1].status == 0, calls[-1].stdout
    check = node.call_istio(pod_ns, pod, "CHECK", prev=calls[-1].result,
                            conf_changes={"native_nftables": False})
    assert check.status == 1
    err = check.result
    assert err["code"] == 104
    assert ("it holds native nftables mode's rules, but the plugin config selects iptables "
            "mode") in err["msg"]
    assert "extra: native nftables mode: table inet istio-proxy-nat" in err["details"]
    assert "missing: -t nat -A OUTPUT -j ISTIO_OUTPUT" in err["details"]

    # A re-ADD after the switch programs iptables mode beside the tables (an ADD looks at its
    # own mode only); CHECK, with every iptables rule in place, still names the leftovers.
    readd = node.call_istio(pod_ns, pod, "ADD", prev=calls[0].result,
                            conf_changes={"native_nftables": False})
    assert readd.status == 0, readd.stdout
    assert any("-A OUTPUT -j ISTIO_OUTPUT" in ln for ln in istio_lines(pod_ns))
    check = node.call_istio(pod_ns, pod, "CHECK", prev=calls[-1].result,
                            conf_changes={"native_nftables": False})
    assert check.status == 1
    assert "holds native nftables mode's rules" in check.result["msg"]
    assert "missing:" not in check.result["details"]


@pytest.mark.parametrize("node", [nftables_node("auto")], indirect=True)
def test_tproxy_dual_stack_pod_gets_the_mangle_table_routes_and_passthrough_address(node: Node):
    """TPROXY policy routing and `::6` come from the same link step as in iptables mode."""
    pod = node.api.add_pod(workload(
        "meshed-pod", annotations={"sidecar.istio.io/interceptionMode": "TPROXY"},
        proxy_env={"ISTIO_DUAL_STACK": "true"}))
    pod_ns = node.new_pod_netns()
    calls = node.add(pod_ns, pod)
    assert [c.status for c in calls] == [0, 0], calls[-1].stdout + calls[-1].stderr
    mangle = nsutil.ns_exec(pod_ns, "nft", "list", "table", "inet", "istio-proxy-mangle")
    assert "tproxy ip to :15006" in mangle and "tproxy ip6 to :15006" in mangle
    assert "::6/128" in nsutil.ns_exec(pod_ns, "ip", "-6", "addr", "show", "dev", "lo")
    for fam in ("-4", "-6"):
        assert "lookup 133" in nsutil.ns_exec(pod_ns, "ip", fam, "rule")
        assert "local default dev lo" in nsutil.ns_exec(pod_ns, "ip", fam, "route", "show",
                                                        "table", "133")
    check = node.call_istio(pod_ns, pod, "CHECK", prev=calls[-1].result)
    assert (check.status, check.stdout) == (0, "")
