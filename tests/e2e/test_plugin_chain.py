"""istio-cni chained after the real bridge + host-local plugins, driven through the CNI protocol
in a sandboxed node (network namespaces), with real TCP proving the redirection."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from cni.results import encode_result
from node_daemon.logsink import LogSink
from node_daemon.metrics import Metrics
from testbed import netns as nsutil
from testbed.cnirun import pod_ip
from testbed.netns import delete_netns
from testbed.node import Node, assert_app_traffic_redirected, gateway, istio_lines, saved_rules
from testbed.pods import workload
from testbed.traffic import Listener, connect
from testbed.wait import wait_for
from tests.e2e.conftest import AGENT_SERVES

pytestmark = pytest.mark.root
BACKENDS = ["nft", "legacy", "python-iptables"]


def add_meshed(node: Node, **changes) -> tuple[str, dict, list]:
    pod = node.api.add_pod(workload("meshed-pod", **changes))
    pod_ns = node.new_pod_netns()
    calls = node.add(pod_ns, pod)
    return pod_ns, pod, calls


@pytest.mark.parametrize("node", BACKENDS, indirect=True)
def test_meshed_pod_traffic_is_redirected(node: Node):
    pod_ns, _, calls = add_meshed(node)
    assert [c.status for c in calls] == [0, 0], calls[-1].stdout + calls[-1].stderr
    # the chained result is the bridge's, re-encoded at the list's version
    assert calls[1].result == encode_result(calls[0].result, "1.0.0")
    assert any("-A OUTPUT -j ISTIO_OUTPUT" in ln for ln in istio_lines(pod_ns))
    assert_app_traffic_redirected(node, pod_ns, calls)

    # the proxy's own traffic (uid 1337) is not redirected: it reaches the node's listener
    gw = gateway(node)
    upstream = Listener(node.name, 8080)
    status, out = connect(pod_ns, gw, 8080, uid=1337)
    assert status == 0, out
    [line] = upstream.lines()
    assert line.startswith(f"conn {pod_ip(calls)} ")


def test_dual_stack_pod_gets_ipv6_rules_and_redirects_ipv6(node: Node):
    pod_ns, _, calls = add_meshed(node, proxy_env={"ISTIO_DUAL_STACK": "true"})
    assert [c.status for c in calls] == [0, 0], calls[-1].stdout + calls[-1].stderr
    assert "::6/128" in nsutil.ns_exec(pod_ns, "ip", "-6", "addr", "show", "dev", "lo")
    gw6 = gateway(node, "6")
    proxy = Listener(pod_ns, 15001)
    status, out = connect(pod_ns, gw6, 8080)
    assert status == 0, out
    assert proxy.lines() == [f"conn {pod_ip(calls, '6')} orig [{gw6}]:8080"]


def test_plain_pod_gets_no_rules(node: Node):
    pod = node.api.add_pod(workload("plain-pod"))
    if AGENT_SERVES:  # the pod reaches the agent's watch cache after its creation: wait for it
        key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        wait_for(lambda: node.agent.informer.current(key) is not None, 15,
                 "the pod in the agent's watch cache")
    pod_ns = node.new_pod_netns()
    calls = node.add(pod_ns, pod)
    assert [c.status for c in calls] == [0, 0], calls[-1].stdout
    assert istio_lines(pod_ns) == []
    # one GET by the plugin, or none when the agent serves it from its watch cache
    assert node.api.count("GET", r"/pods/busybox") == (0 if AGENT_SERVES else 1)


def test_excluded_namespace_and_agent_pod_never_touch_the_api(node: Node):
    (node.run_dir / "istio-cni-kubeconfig").unlink()  # not even a kubeconfig is needed
    for pod in (workload("meshed-pod", namespace="kube-system"),
                workload("plain-pod", name="istio-cni-node-x7k2p", namespace="istio-system")):
        pod_ns = node.new_pod_netns()
        calls = node.add(pod_ns, pod)
        assert [c.status for c in calls] == [0, 0], calls[-1].stdout
        assert istio_lines(pod_ns) == []
    # nothing asked about a pod (a serving agent's own watch of all pods is not the plugin's)
    assert [r for r in node.api.requests if r.path != "/api/v1/pods"] == []


def test_second_add_is_idempotent_and_check_really_checks(node: Node):
    pod_ns, pod, calls = add_meshed(node)
    assert calls[-1].status == 0
    before = saved_rules(pod_ns)
    again = node.call_istio(pod_ns, pod, "ADD", prev=calls[0].result)
    assert again.status == 0, again.stdout
    assert saved_rules(pod_ns) == before

    check = node.call_istio(pod_ns, pod, "CHECK", prev=calls[-1].result)
    assert (check.status, check.stdout) == (0, "")

    nsutil.ns_exec(pod_ns, "iptables", "-t", "nat", "-F", "ISTIO_OUTPUT")
    check = node.call_istio(pod_ns, pod, "CHECK", prev=calls[-1].result)
    assert check.status == 1
    err = check.result
    assert err["code"] == 104
    assert "missing" in err["msg"] and "ISTIO_OUTPUT" in err["details"]


def test_del_succeeds_without_netns_and_without_api(node: Node):
    pod_ns, pod, calls = add_meshed(node)
    node.api.stop()
    delete_netns(pod_ns)
    call = node.call_istio(pod_ns, pod, "DEL", prev=calls[-1].result)
    assert (call.status, call.stdout) == (0, "")


def test_status_reports_not_ready_without_kubeconfig(node: Node):
    pod = workload("plain-pod")
    ns_name = node.new_pod_netns()
    ok = node.call_istio(ns_name, pod, "STATUS", conf_changes={"cniVersion": "1.1.0"})
    assert (ok.status, ok.stdout) == (0, "")
    (node.run_dir / "istio-cni-kubeconfig").unlink()
    bad = node.call_istio(ns_name, pod, "STATUS", conf_changes={"cniVersion": "1.1.0"})
    assert bad.status == 1
    assert bad.result["code"] == 50
    assert "istio-cni-kubeconfig" in bad.result["msg"]


# --- error paths: exact CNI error, exit 1, and nothing changed in the netns ----------------------

def _fails_cleanly(node: Node, pod: dict, code: int) -> dict:
    pod_ns = node.new_pod_netns()
    calls = node.add(pod_ns, pod)
    assert [c.status for c in calls] == [0, 1], calls[-1].stdout
    err = calls[-1].result
    assert set(err) <= {"cniVersion", "code", "msg", "details"}
    assert err["code"] == code, err
    assert err["cniVersion"] == "1.0.0"
    assert "Traceback" not in calls[-1].stdout
    assert istio_lines(pod_ns) == []
    return err


def test_invalid_annotation_fails_naming_it(node: Node):
    key = "traffic.sidecar.istio.io/excludeOutboundPorts"
    pod = node.api.add_pod(workload("meshed-pod", annotations={key: "80\n-A OUTPUT -j ACCEPT"}))
    err = _fails_cleanly(node, pod, 101)
    assert err["msg"] == (f"invalid annotation {key}='80\\n-A OUTPUT -j ACCEPT': "
                          "'80\\n-A OUTPUT -j ACCEPT' is not a port number (0-65535)")


@pytest.mark.in_process
def test_api_down_fails_as_try_again_later(node: Node):
    pod = workload("meshed-pod")
    node.api.stop()
    err = _fails_cleanly(node, pod, 11)
    assert "gave up after 3 attempt(s)" in err["msg"], err  # the node's pod_lookup_attempts


@pytest.mark.in_process
def test_rejected_token_fails_at_once(node: Node):
    pod = node.api.add_pod(workload("meshed-pod"))
    node.api.require_token("another-token")
    err = _fails_cleanly(node, pod, 100)
    assert "test-sa-token" not in err["msg"] + err.get("details", "")
    assert node.api.count("GET", r"/pods/") == 1


@pytest.mark.in_process
def test_missing_kubeconfig_fails_a_pod_that_needs_the_api(node: Node):
    pod = node.api.add_pod(workload("meshed-pod"))
    (node.run_dir / "istio-cni-kubeconfig").unlink()
    err = _fails_cleanly(node, pod, 50)
    assert "istio-cni-kubeconfig" in err["msg"]


def test_missing_netns_fails_with_code_8(node: Node):
    pod = node.api.add_pod(workload("meshed-pod"))
    call = node.call_istio("icni-e2e-does-not-exist", pod, "ADD")
    assert call.status == 1
    assert call.result["code"] == 8


class _AgentSocket:
    """The node agent's own log socket server, recording what the plugin posts, in order."""

    def __init__(self, path: Path) -> None:
        self.posts: list[tuple[str, object]] = []
        self._arrived = threading.Condition()
        self._sink = LogSink(path, Metrics(), on_report=self._record)

    def _record(self, path: str, body: object) -> None:
        with self._arrived:
            self.posts.append((path, body))
            self._arrived.notify_all()

    def wait_for_posts(self, count: int, deadline: float = 30.0) -> list[tuple[str, object]]:
        """The first `count` posts, once they have arrived (or as many as did by the deadline)."""
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.posts) >= count, timeout=deadline)
            return list(self.posts)

    def close(self) -> None:
        self._sink.stop()


@pytest.mark.in_process
def test_plugin_reports_its_logs_then_its_add_event_to_the_agent(node: Node):
    """The promise: one report per call, its lines (`/log`) before its event (`/event`)."""
    agent = _AgentSocket(node.run_dir / "log.sock")
    try:
        pod_ns, pod, calls = add_meshed(node)
        assert calls[-1].status == 0, calls[-1].stdout
        posts = agent.wait_for_posts(2)
    finally:
        agent.close()
    assert [p for p, _ in posts] == ["/log", "/event"]
    lines = [json.loads(line) for line in posts[0][1]]
    assert any(entry["msg"].startswith("redirected:") for entry in lines)
    event = posts[1][1]
    meta = pod["metadata"]
    assert event["pod"] == f"{meta['namespace']}/{meta['name']}"
    assert event["outcome"] == "redirected"
    assert set(event["phases"]) == {"lookup", "rules", "apply", "total"}
    # the rotating log file in the run dir got the same decision
    assert "redirected:" in (node.run_dir / "istio-cni.log").read_text()
