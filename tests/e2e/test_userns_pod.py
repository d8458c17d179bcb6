"""A pod with `hostUsers: false`, end to end: its netns is owned by its own user namespace (uid
and gid map `0 100000 65536`), and the kernel takes owner-match rules for it only from inside.

Through the CNI protocol (bridge + host-local, then istio-cni, pod from the API stand-in), for
every backend: the ADD programs it, the proxy stand-in running *inside* as the pod's uid 1337
gets the app's (uid 1000 inside) outbound connection on 15001 with its original destination
and an inbound one on 15006, and its own connections leave unredirected; CHECK passes. Then
the node agent, a multi-threaded process, works on such pods: the drift check puts back rules
the pod's own root flushed, and repair in place programs a pod whose ADD never had istio-cni.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from cni.pipeline import check_pod, plan
from node_daemon.config import RepairConfig
from node_daemon.netns_finder import NetnsFinder
from testbed.cnirun import CniCall, pod_ip
from testbed.controller import start_controller
from testbed.kubeapi import kubernetes_api_client
from testbed.node import Node, gateway, istio_lines
from testbed.pods import BROKEN_WAITING, COMPLETED, NODE, make_pod
from testbed.procs import Proc
from testbed.traffic import Listener, connect
from testbed.userns import UsernsNetns, create_userns_netns, inside, inside_binary, ns_key, owner_of
from testbed.wait import wait_for

pytestmark = pytest.mark.root
BACKENDS = ["nft", "legacy", "python-iptables"]
PROXY_UID, APP_UID = 1337, 1000
CFG = RepairConfig(node_name=NODE)


def userns_pod(node: Node) -> UsernsNetns:
    ns = create_userns_netns(node.cleanup, f"{node.prefix}-pod")
    assert owner_of(ns.path) == ns_key(ns.userns) != ns_key("/proc/self/ns/user")
    return ns


def add_meshed(node: Node, name: str) -> tuple[UsernsNetns, dict, str, dict]:
    """A meshed pod `name` ADDed through the whole conflist into a fresh userns pod netns,
    then reported by the API as running on this node with its IP (as the kubelet would);
    the last result is what CHECK gets as prevResult."""
    ns = userns_pod(node)
    pod = node.api.add_pod(make_pod(name, ip="10.0.0.0", init_status=COMPLETED,
                                    phase="Running"))
    calls = node.add(ns.name, pod)
    assert [c.status for c in calls] == [0, 0], calls[-1].stdout + calls[-1].stderr
    ip = pod_ip(calls)
    pod = node.api.update_pod("shop", name, {"status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
    return ns, pod, ip, calls[-1].result


def started(proc: Proc) -> Proc:
    proc.wait_line(lambda ln: ln == "ready", 30, "ready")
    return proc


def assert_redirected_inside(node: Node, ns: UsernsNetns, ip: str) -> None:
    """Real TCP with the proxy and the app both inside the pod's user namespace."""
    gw = gateway(node)
    upstream = Listener(node.name, 8080, cleanup=node.cleanup)
    proxy = Proc("proxy stand-in", inside(ns, 0, "companions.proxy", "--uid", str(PROXY_UID)))
    node.cleanup.add("stop the proxy stand-in", proxy.stop)
    app = Proc("app listener", inside(ns, APP_UID, "testbed.sockets", "listen", "9080"))
    node.cleanup.add("stop the app listener", app.stop)
    started(proxy), started(app)

    out = subprocess.run(inside(ns, APP_UID, "testbed.sockets", "connect", gw, "8080"),
                         capture_output=True, text=True, timeout=30, check=False)
    assert (out.returncode, out.stdout.strip()) == (0, f"connected {ip}"), out.stderr
    line = proxy.wait_line(lambda ln: ln.startswith("outbound"), 30, "outbound line")
    assert re.fullmatch(rf"outbound {re.escape(ip)}:\d+ -> {re.escape(gw)}:8080", line), line
    # the proxy, uid 1337 of the pod, forwarded it: its own connection was not redirected
    [arrived] = upstream.lines()
    assert arrived.startswith(f"conn {ip} "), arrived

    status, said = connect(node.name, ip, 9080)
    assert status == 0, said
    line = proxy.wait_line(lambda ln: ln.startswith("inbound"), 30, "inbound line")
    assert re.fullmatch(rf"inbound {re.escape(gw)}:\d+ -> {re.escape(ip)}:9080", line), line
    assert app.rest() == [f"conn 127.0.0.6 orig {ip}:9080"]  # from the passthrough source


def check(node: Node, ns: UsernsNetns, pod: dict, prev: dict) -> CniCall:
    return node.call_istio(ns.name, pod, "CHECK", prev=prev)


@pytest.mark.parametrize("node", BACKENDS, indirect=True)
def test_user_namespaced_pod_is_redirected_checked_and_kept(node: Node, request):
    backend = request.node.callspec.params["node"]
    ns, pod, ip, prev = add_meshed(node, "userns-app")
    if node.agent is not None:  # the run with the agent serving: it did this pod's ADD
        assert node.agent.served("ADD", "ok") == 1
    assert any("--uid-owner 1337" in ln for ln in istio_lines(ns.name))
    assert_redirected_inside(node, ns, ip)
    assert (check(node, ns, pod, prev).status, check(node, ns, pod, prev).stdout) == (0, "")
    # what `explain --live` compares, from this (multi-threaded) process
    assert check_pod(ns.path, plan(pod)[2], backend).state == "identical"

    controller = start_controller(node.cleanup, kubernetes_api_client(node.api),
                                  replace(CFG, repair_pods=True),
                                  finder=NetnsFinder(Path("/proc")), backend=backend,
                                  drift=True)
    controller.check_drift_now()
    wait_for(lambda: controller.metrics.value("istio_cni_drift_pods_total",
                                              result="in_sync") == 1, what="in sync")

    # the pod's root, with NET_ADMIN in its own user namespace, flushes its redirection
    binary = "iptables-legacy" if backend == "python-iptables" else f"iptables-{backend}"
    # (its xtables lock is its own: a container has its own /run, this test shares the host's)
    subprocess.run(inside_binary(ns, 0, binary, "-t", "nat", "-F", "ISTIO_OUTPUT"),
                   env={**os.environ, "XTABLES_LOCKFILE": "/proc/self/ns/net"},
                   check=True, timeout=30, capture_output=True)
    flushed = check(node, ns, pod, prev)
    assert (flushed.status, flushed.result.get("code")) == (1, 104), flushed.stdout
    controller.check_drift_now()
    wait_for(lambda: controller.metrics.value("istio_cni_drift_pods_total",
                                              result="success") == 1, what="drift repaired")
    assert check(node, ns, pod, prev).status == 0

    # a pod whose sandbox was made before istio-cni was in the chain: repaired in place
    late = userns_pod(node)
    bridge_only = {**node.conflist, "plugins": node.conflist["plugins"][:1]}
    [call] = node.runtime.run_list(bridge_only, "ADD", late.path, f"c-{late.name}")
    assert call.status == 0, call.stderr
    late_ip = pod_ip([call])
    assert istio_lines(late.name) == []
    broken = node.api.add_pod(make_pod("userns-late", ip=late_ip, init_status=BROKEN_WAITING))
    wait_for(lambda: controller.metrics.value("istio_cni_repair_pods_repaired_total",
                                              type="repair", result="success") == 1,
             what="repaired in place")
    assert check(node, late, broken, call.result).status == 0
    assert_redirected_inside(node, late, late_ip)


NFTABLES = {"native_nftables": True}


@pytest.mark.parametrize("node", [NFTABLES], indirect=True, ids=["nftables"])
def test_user_namespaced_pod_in_native_nftables_mode(node: Node):
    """The same pod in native nftables mode: upstream's tables written from inside the pod's
    user namespace (the owner match `skuid 1337` is refused from outside it), real traffic with
    the proxy and app inside, CHECK, and the drift check putting back what the pod's root
    flushed."""
    from cni.backends import RuleMode

    mode = RuleMode(native_nftables=True)
    ns, pod, ip, prev = add_meshed(node, "userns-nft")
    if node.agent is not None:
        assert node.agent.served("ADD", "ok") == 1
    listing = subprocess.run(["ip", "netns", "exec", ns.name, "nft", "list", "ruleset"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    assert "table inet istio-proxy-nat" in listing and "skuid 1337" in listing
    assert istio_lines(ns.name) == []  # no iptables rules in this mode
    assert_redirected_inside(node, ns, ip)
    assert check(node, ns, pod, prev).status == 0
    assert check_pod(ns.path, plan(pod)[2], mode).state == "identical"

    controller = start_controller(node.cleanup, kubernetes_api_client(node.api),
                                  replace(CFG, repair_pods=True),
                                  finder=NetnsFinder(Path("/proc")), backend=mode, drift=True)
    subprocess.run(inside_binary(ns, 0, "nft", "flush", "chain", "inet", "istio-proxy-nat",
                                 "istio-output"), check=True, timeout=30, capture_output=True)
    flushed = check(node, ns, pod, prev)
    assert (flushed.status, flushed.result.get("code")) == (1, 104), flushed.stdout
    controller.check_drift_now()
    wait_for(lambda: controller.metrics.value("istio_cni_drift_pods_total",
                                              result="success") == 1, what="drift repaired")
    assert check(node, ns, pod, prev).status == 0
