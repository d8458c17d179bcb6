"""Agent-served ADD and CHECK: the plugin hands the call and the pod's netns (an open
descriptor) to the node agent over `<run dir>/cni.sock`, and falls back to doing it itself
whenever the agent cannot answer. Real netns, bridge + host-local, real traffic, the agent's
real server and watch cache against the API stand-in."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cni import agent_client, wire
from node_daemon.logsink import LogSink
from node_daemon.metrics import Metrics
from testbed.agent import ServingAgent, serve_plugin_calls
from testbed.kubeapi import KubeApiServer, kubernetes_api_client
from testbed.netns import create_netns
from testbed.node import Node, assert_app_traffic_redirected, istio_lines, saved_rules
from testbed.pods import workload
from testbed.wait import wait_for
from tests.e2e.conftest import AGENT_SERVES

pytestmark = [pytest.mark.root, pytest.mark.skipif(
    AGENT_SERVES, reason="this module starts its own agent; the run with an agent adds nothing")]


def serving(node: Node, kube_api: KubeApiServer, **kwargs: object) -> ServingAgent:
    return serve_plugin_calls(node.cleanup, node.run_dir, kubernetes_api_client(kube_api),
                              **kwargs)  # type: ignore[arg-type]


def meshed(node: Node, **changes: object) -> tuple[str, dict]:
    return node.new_pod_netns(), node.api.add_pod(workload("meshed-pod", **changes))


def test_a_cached_pod_is_redirected_by_the_agent_with_no_pod_get(node: Node, kube_api):
    """containerd and CRI-O pass K8S_POD_UID: the cached pod of that UID is proof enough."""
    pod = node.api.add_pod(workload("meshed-pod"))
    agent = serving(node, kube_api)
    pod_ns = node.new_pod_netns()
    calls = node.add(pod_ns, pod)
    assert [c.status for c in calls] == [0, 0], calls[-1].stdout + calls[-1].stderr
    assert agent.served("ADD", "ok") == 1
    assert agent.metrics.value("istio_cni_agent_pod_lookups_total", source="cache") == 1
    assert node.api.count("GET", r"/namespaces/.*/pods/") == 0
    assert agent.metrics.value("istio_cni_plugin_add_total", outcome="redirected") == 1
    assert_app_traffic_redirected(node, pod_ns, calls)


# --- the cache answers only for the pod it is proven to hold (#17 class 1) ---------------------

def _stale_cache(node: Node, kube_api: KubeApiServer) -> tuple[ServingAgent, dict, dict]:
    """An agent whose watch cache holds `shop/app` as a pod without a sidecar, while the API
    has since deleted it and created a meshed pod under the same name (the watch stalled)."""
    old = node.api.add_pod(workload("plain-pod", name="app", namespace="shop"))
    agent = serving(node, kube_api)
    assert agent.informer is not None
    kube_api.stall_watches()
    node.cleanup.add("release the stalled watches", kube_api.release_watches)
    node.api.delete_pod("shop", "app")
    new = node.api.add_pod(workload("meshed-pod", name="app", namespace="shop"))
    cached = agent.informer.get("shop/app")
    assert cached is not None and cached["metadata"]["uid"] == old["metadata"]["uid"]
    return agent, old, new


def test_a_pod_re_created_under_its_name_is_read_again_not_answered_from_the_cache(
        node: Node, kube_api):
    """cri-dockerd passes no K8S_POD_UID: a name is no proof (the cache held another pod of
    it, without a sidecar; answered from it, the ADD was `ok` with no rules). One GET."""
    agent, _old, new = _stale_cache(node, kube_api)
    pod_ns = node.new_pod_netns()
    calls = node.add(pod_ns, new, pod_uid="")
    assert [c.status for c in calls] == [0, 0], calls[-1].stdout + calls[-1].stderr
    assert any("-A OUTPUT -j ISTIO_OUTPUT" in ln for ln in istio_lines(pod_ns)), "ok, no rules"
    assert agent.served("ADD", "ok") == 1
    assert agent.metrics.value("istio_cni_agent_pod_lookups_total", source="get") == 1
    assert agent.metrics.value("istio_cni_agent_pod_cache_misses_total", reason="no_uid") == 1
    assert agent.metrics.value("istio_cni_plugin_add_total", outcome="redirected") == 1
    assert_app_traffic_redirected(node, pod_ns, calls)


def test_a_runtime_uid_the_cache_does_not_hold_is_one_get(node: Node, kube_api):
    agent, _old, new = _stale_cache(node, kube_api)
    pod_ns = node.new_pod_netns()
    calls = node.add(pod_ns, new)
    assert [c.status for c in calls] == [0, 0], calls[-1].stdout + calls[-1].stderr
    assert agent.metrics.value("istio_cni_agent_pod_cache_misses_total",
                               reason="other_uid") == 1
    assert node.api.count("GET", r"/namespaces/shop/pods/app$") == 1
    assert any("-A OUTPUT -j ISTIO_OUTPUT" in ln for ln in istio_lines(pod_ns))


def test_an_uncached_pod_costs_the_agent_one_get(node: Node, kube_api):
    agent = serving(node, kube_api, watch=False)
    pod_ns, pod = meshed(node)
    calls = node.add(pod_ns, pod)
    assert calls[-1].status == 0, calls[-1].stdout
    assert agent.served("ADD", "ok") == 1
    assert node.api.count("GET", r"/namespaces/.*/pods/") == 1
    assert any("-A OUTPUT -j ISTIO_OUTPUT" in ln for ln in istio_lines(pod_ns))


def test_a_pod_the_agent_cannot_find_is_left_to_the_plugin_s_lookup(node: Node, kube_api):
    agent = serving(node, kube_api)
    pod = workload("meshed-pod", name="not-created-yet")
    pod_ns = node.new_pod_netns()
    served = node.call_istio(pod_ns, pod, "ADD")
    alone = node.call_istio(pod_ns, pod, "ADD", conf_changes={"agent_serve": False})
    assert served.status == alone.status == 1
    assert served.result["code"] == alone.result["code"]
    assert agent.served("ADD", "fallback") == 1


def test_the_agent_answers_the_error_the_plugin_would_give(node: Node, kube_api):
    pod_ns, pod = meshed(node, annotations={
        "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/33"})
    agent = serving(node, kube_api)
    served = node.call_istio(pod_ns, pod, "ADD")
    alone = node.call_istio(pod_ns, pod, "ADD", conf_changes={"agent_serve": False})
    assert served.status == alone.status == 1
    assert served.stdout == alone.stdout  # code, message and details, byte for byte
    assert "includeOutboundIPRanges" in served.result["msg"]
    assert agent.served("ADD", "error") == 1
    assert agent.metrics.value("istio_cni_plugin_add_total", outcome="failed") == 1


def test_check_is_served_and_really_checks(node: Node, kube_api):
    pod_ns, pod = meshed(node)
    agent = serving(node, kube_api)
    calls = node.add(pod_ns, pod)
    assert calls[-1].status == 0
    assert node.call_istio(pod_ns, pod, "CHECK", prev=calls[0].result).status == 0
    subprocess.run(["ip", "netns", "exec", pod_ns, "iptables", "-t", "nat", "-F",
                    "ISTIO_OUTPUT"], check=True)
    served = node.call_istio(pod_ns, pod, "CHECK", prev=calls[0].result)
    alone = node.call_istio(pod_ns, pod, "CHECK", prev=calls[0].result,
                            conf_changes={"agent_serve": False})
    assert served.status == 1 and served.stdout == alone.stdout
    assert agent.served("CHECK", "ok") == 1 and agent.served("CHECK", "error") == 1


def test_a_second_add_through_the_agent_changes_nothing(node: Node, kube_api):
    pod_ns, pod = meshed(node)
    serving(node, kube_api)
    calls = node.add(pod_ns, pod)
    before = saved_rules(pod_ns)
    again = node.call_istio(pod_ns, pod, "ADD", prev=calls[0].result)
    assert again.status == 0 and saved_rules(pod_ns) == before


# --- every fallback trigger: the plugin does the ADD itself, and says why ---------------------

def _falls_back(node: Node, pod_ns: str, pod: dict, why: str, **conf: object) -> None:
    node.istio_entry().update(conf)
    calls = node.add(pod_ns, pod)
    assert [c.status for c in calls] == [0, 0], calls[-1].stdout
    assert any("-A OUTPUT -j ISTIO_OUTPUT" in ln for ln in istio_lines(pod_ns))
    assert why in calls[-1].stderr, calls[-1].stderr


def test_no_socket_means_in_process(node: Node):
    pod_ns, pod = meshed(node)
    _falls_back(node, pod_ns, pod, "no agent socket")


@pytest.mark.parametrize("change, why", [
    (lambda p: os.chmod(p, 0o666), "has mode 0666, not 0600"),
    (lambda p: os.chown(p, 65534, 65534), "owned by uid 65534, not root"),
])
def test_a_socket_open_to_others_is_never_used(node: Node, kube_api, change, why):
    agent = serving(node, kube_api)
    change(node.run_dir / "cni.sock")
    pod_ns, pod = meshed(node)
    _falls_back(node, pod_ns, pod, why)
    assert agent.served("ADD", "ok") == 0


def test_an_agent_that_is_not_ready_defers(node: Node, kube_api):
    agent = serving(node, kube_api, ready=lambda: (False, "CNI plugin not installed"))
    pod_ns, pod = meshed(node)
    _falls_back(node, pod_ns, pod, "agent not ready: CNI plugin not installed")
    assert agent.served("ADD", "fallback") == 1


class _StuckAgent:
    """A root-owned 0600 socket whose "agent" reads the request and then hangs or hangs up."""

    def __init__(self, path: Path, hang_up: bool) -> None:
        old = os.umask(0o177)
        try:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.bind(str(path))
        finally:
            os.umask(old)
        self.sock.listen(4)
        self.release = threading.Event()
        self.hang_up = hang_up
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            socket.recv_fds(conn, 65536, 1)
            if not self.hang_up:
                self.release.wait(60)

    def close(self) -> None:
        self.release.set()
        self.thread.join(10)
        self.sock.close()


@pytest.mark.parametrize("hang_up, why", [(False, "did not answer"),
                                          (True, "closed before a complete frame")])
def test_an_agent_that_hangs_or_dies_mid_request_is_done_without(node: Node, hang_up, why):
    stuck = _StuckAgent(node.run_dir / "cni.sock", hang_up)
    try:
        pod_ns, pod = meshed(node)
        _falls_back(node, pod_ns, pod, why, agent_serve_timeout_seconds=0.5)
    finally:
        stuck.close()


def test_agent_serving_turned_off_is_one_key(node: Node, kube_api):
    agent = serving(node, kube_api)
    pod_ns, pod = meshed(node)
    node.istio_entry()["agent_serve"] = False
    calls = node.add(pod_ns, pod)
    assert calls[-1].status == 0 and agent.served("ADD", "ok") == 0
    assert node.api.count("GET", r"/namespaces/.*/pods/") == 1


# --- who may ask, and what may be handed over ------------------------------------------------

def _ask_as(uid: int, path: Path, fd: int) -> dict:
    """The agent's answer to a request sent by a process running as `uid` (a forked child that
    drops root before it connects; only socket calls between fork and exit)."""
    read, write = os.pipe()
    # the socket's directory, held open: pytest's temp dirs are 0700 to all but root, and a
    # path through an open descriptor needs no search permission on the dirs above it
    parent = os.open(path.parent, os.O_PATH)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            answer = agent_client.call(f"/proc/self/fd/{parent}/{path.name}",
                                       wire.request({b"CNI_COMMAND": b"ADD"}, b"{}"), fd, 20)
            os.write(write, json.dumps([type(answer).__name__, getattr(answer, "reason", "")])
                     .encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    os.close(parent)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0, "the non-root client failed"
    return json.loads(data)


def test_a_non_root_peer_is_refused(node: Node, kube_api):
    agent = serving(node, kube_api)
    os.chmod(node.run_dir, 0o755)
    os.chmod(node.run_dir / "cni.sock", 0o666)  # let the kernel pass the connect
    pod_ns = create_netns(node.cleanup, "icni-e2e-nr")
    fd = os.open(pod_ns.path, os.O_RDONLY)
    try:
        answer = _ask_as(65534, node.run_dir / "cni.sock", fd)
    finally:
        os.close(fd)
    assert answer == ["Fallback", "node agent deferred: only root may use this socket"]
    assert agent.served("ADD", "ok") == 0 and istio_lines(pod_ns.name) == []


def test_a_refusal_sent_before_the_request_is_read_reaches_the_client(tmp_path):
    """The agent refuses a non-root peer before reading its request and closes: the client's
    send then fails (EPIPE), and the answer already queued for it is still read, so the plugin
    logs why it was refused rather than a broken pipe. The request here is larger than the
    socket's buffers, so the send is still under way when the agent closes, every time."""
    path = str(tmp_path / "cni.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)

    def refuse() -> None:
        conn, _ = listener.accept()
        conn.sendall(wire.fallback("only root may use this socket"))
        conn.close()  # the request unread

    refuser = threading.Thread(target=refuse)
    refuser.start()
    env = {b"CNI_COMMAND": b"ADD", b"CNI_NETNS": b"/x"}
    fd = os.open("/dev/null", os.O_RDONLY)
    try:
        answer = agent_client.call(path, wire.request(env, b"x" * (wire.MAX_REQUEST - 4096)),
                                   fd, 20)
    finally:
        os.close(fd)
        refuser.join()
        listener.close()
    assert isinstance(answer, agent_client.Fallback)
    assert answer.reason == "node agent deferred: only root may use this socket"


def _ask(path: Path, fd: int) -> agent_client.Answer | agent_client.Fallback:
    """A request as a thin client would send it, but with any descriptor (`fd`) beside it."""
    env = {b"CNI_COMMAND": b"ADD", b"CNI_CONTAINERID": b"c1",
           b"CNI_NETNS": b"/what/the/runtime/said", b"CNI_IFNAME": b"eth0",
           b"CNI_ARGS": b"K8S_POD_NAMESPACE=default;K8S_POD_NAME=p", b"CNI_PATH": b"/opt/cni/bin"}
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "istio-cni"}
    return agent_client.call(str(path), wire.request(env, json.dumps(conf).encode()), fd, 20)


def test_a_descriptor_that_is_not_a_pod_netns_is_refused(node: Node, kube_api, tmp_path):
    serving(node, kube_api)
    sock = node.run_dir / "cni.sock"
    regular = tmp_path / "file"
    regular.write_text("x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, what in ((str(regular), "a regular file"), (str(fifo), "a FIFO"),
                       ("/proc/self/ns/net", "the agent's own")):
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            answer = _ask(sock, fd)
        finally:
            os.close(fd)
        assert isinstance(answer, agent_client.Answer), answer.reason
        error = json.loads(answer.stdout)
        assert answer.status == 1 and error["code"] == 8 and what in error["msg"], error
        assert "/what/the/runtime/said" in error["msg"]


def test_the_agent_programs_the_descriptor_never_the_path_the_runtime_named(node: Node, kube_api):
    """The agent enters the netns the client's descriptor holds; `CNI_NETNS` only names it in
    messages (opened again by path, it could name another netns by then, or none)."""
    node.api.add_pod(workload("meshed-pod", name="p", namespace="default"))
    serving(node, kube_api)
    pod_ns = create_netns(node.cleanup, "icni-e2e-fd", v4="10.251.0.2")
    fd = os.open(pod_ns.path, os.O_RDONLY)
    try:
        answer = _ask(node.run_dir / "cni.sock", fd)
    finally:
        os.close(fd)
    assert isinstance(answer, agent_client.Answer), answer.reason
    assert answer.status == 0, answer.stdout + answer.stderr
    lines = istio_lines(pod_ns.name)
    assert any("ISTIO_REDIRECT" in line for line in lines), lines


def test_fifty_concurrent_adds_through_the_agent_are_all_redirected(node: Node, kube_api):
    pods = [node.api.add_pod(workload("meshed-pod", name=f"m-{i}")) for i in range(50)]
    agent = serving(node, kube_api)
    netns = [node.new_pod_netns() for _ in pods]
    results: dict[int, list] = {}

    def add(i: int) -> None:
        results[i] = node.add(netns[i], pods[i])

    threads = [threading.Thread(target=add, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(results) == list(range(50))
    failed = {i: calls[-1].stdout for i, calls in results.items()
              if [c.status for c in calls] != [0, 0]}
    assert failed == {}
    for ns in netns:
        assert any("-A OUTPUT -j ISTIO_OUTPUT" in ln for ln in istio_lines(ns))
    assert agent.served("ADD", "ok") == 50


# --- a served call is logged like an in-process one ------------------------------------------

def _redirected(lines: list[str]) -> list[dict]:
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in entries if e.get("msg", "").startswith("redirected: ")]


def test_a_served_add_is_logged_like_the_in_process_one(node: Node, kube_api, caplog):
    """The same line with the same fields (pod, container id, netns), in the same three places,
    whichever path served the ADD: the plugin's stderr, the run dir's istio-cni.log and the
    agent's own log (`cni-plugin`, where the in-process call's report to log.sock lands)."""
    caplog.set_level(logging.INFO)  # the agent's default level
    sink = LogSink(node.run_dir / "log.sock", Metrics())
    node.cleanup.add("stop the log sink", sink.stop)
    agent = serving(node, kube_api)
    pod = node.api.add_pod(workload("meshed-pod"))
    served_ns, alone_ns = node.new_pod_netns(), node.new_pod_netns()
    served = node.add(served_ns, pod)
    node.istio_entry()["agent_serve"] = False
    alone = node.add(alone_ns, pod)
    assert [c.status for c in served + alone] == [0, 0, 0, 0]
    assert agent.served("ADD", "ok") == 1
    name = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
    fields = {ns: {"pod": name, "container_id": f"c-{ns}", "netns": f"/var/run/netns/{ns}"}
              for ns in (served_ns, alone_ns)}

    def same_line(entries: list[dict], ns: str) -> dict:
        assert len(entries) == 1, entries
        assert {k: entries[0].get(k) for k in ("pod", "container_id", "netns")} == fields[ns]
        return {k: v for k, v in entries[0].items() if k not in ("time", *fields[ns])}

    stderr = {ns: same_line(_redirected(call[-1].stderr.splitlines()), ns)
              for ns, call in ((served_ns, served), (alone_ns, alone))}
    assert stderr[served_ns] == stderr[alone_ns]
    assert stderr[served_ns]["msg"] == "redirected: sidecar injected; redirecting (applied)"
    logged = (node.run_dir / "istio-cni.log").read_text().splitlines()
    for ns in (served_ns, alone_ns):
        same_line([e for e in _redirected(logged) if e.get("netns", "").endswith(ns)], ns)

    def agent_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "cni-plugin" and r.getMessage().startswith("redirected: ")]

    wait_for(lambda: len(agent_lines()) == 2, 20, "both calls' lines in the agent's log")
    assert sorted(agent_lines()) == sorted(
        f"redirected: sidecar injected; redirecting (applied) pod={name} "
        f"container_id=c-{ns} netns=/var/run/netns/{ns}" for ns in (served_ns, alone_ns))


def test_a_plugin_of_the_earlier_protocol_is_told_to_fall_back(node: Node, kube_api):
    """A rolling upgrade: a plugin that still frames its request as a length and a JSON object
    gets "fallback" in that framing (and does the ADD itself), never a hang or a closed socket."""
    agent = serving(node, kube_api)
    pod_ns = create_netns(node.cleanup, "icni-e2e-old")
    body = json.dumps({"command": "ADD", "netns": pod_ns.path}).encode()
    fd = os.open(pod_ns.path, os.O_RDONLY)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(20)
            sock.connect(str(node.run_dir / "cni.sock"))
            sock.sendmsg([len(body).to_bytes(4, "big") + body],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder))])
            length = int.from_bytes(wire.read_exactly(sock, 4, time.monotonic() + 20),
                                    "big")
            answer = json.loads(wire.read_exactly(sock, length, time.monotonic() + 20))
    finally:
        os.close(fd)
    assert answer["result"] == "fallback", answer
    assert agent.served("ADD", "ok") == 0 and istio_lines(pod_ns.name) == []
