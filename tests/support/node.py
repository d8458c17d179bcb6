"""A sandboxed node for end-to-end tests: its netns, run dir, conflist and CNI runtime, and the
companion workloads as fixtures."""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support import netns as nsutil
from support.cnirun import CNI_BIN_DIR, CniCall, Runtime, k8s_args
from tests.kubeapi.fixtures import write_kubeconfig
from tests.kubeapi.server import KubeApiServer

REPO = Path(__file__).resolve().parents[2]
WORKLOADS = REPO / "companions" / "workloads"


def plugin_argv() -> list[str]:
    """The plugin under test: ISTIO_CNI_BINARY (e.g. the frozen build) or the source entry."""
    binary = os.environ.get("ISTIO_CNI_BINARY")
    return [binary] if binary else [sys.executable, "-m", "cni"]


def workload(fixture: str, **changes) -> dict:
    pod = json.loads((WORKLOADS / f"{fixture}.json").read_text())
    pod = copy.deepcopy(pod)
    meta = pod["metadata"]
    for key in ("name", "namespace"):
        if key in changes:
            meta[key] = changes.pop(key)
    meta.setdefault("annotations", {}).update(changes.pop("annotations", {}))
    proxy_env = changes.pop("proxy_env", None)
    if proxy_env:
        for c in pod["spec"]["containers"]:
            if c["name"] == "istio-proxy":
                env = c.setdefault("env", [])
                env.extend({"name": k, "value": v} for k, v in proxy_env.items())
    assert not changes, changes
    return pod


@dataclass
class Node:
    """One sandboxed node: its netns, run dir, conflist, runtime and the API it talks to."""

    name: str
    run_dir: Path
    api: KubeApiServer
    runtime: Runtime
    conflist: dict
    subnet_index: int
    pods: list[str] = field(default_factory=list)
    prefix: str = "icni-e2e"
    """Name prefix of the netns this node creates (its own is `<prefix>-node-*`)."""

    def istio_entry(self) -> dict:
        return self.conflist["plugins"][-1]

    def new_pod_netns(self) -> str:
        name = nsutil.unique(f"{self.prefix}-pod")
        nsutil.run("ip", "netns", "add", name)
        self.pods.append(name)
        nsutil.run("ip", "-n", name, "link", "set", "lo", "up")
        nsutil.ns_exec(name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                       "net.ipv6.conf.default.accept_dad=0")
        return name

    def add(self, ns_name: str, pod: dict, command: str = "ADD",
            prev: dict | None = None) -> list[CniCall]:
        meta = pod["metadata"]
        return self.runtime.run_list(self.conflist, command, nsutil.path(ns_name),
                                     container_id=f"c-{ns_name}",
                                     cni_args=k8s_args(meta["namespace"], meta["name"]),
                                     prev=prev)

    def call_istio(self, ns_name: str, pod: dict, command: str, prev: dict | None = None,
                   env: dict | None = None, conf_changes: dict | None = None) -> CniCall:
        meta = pod["metadata"]
        conf = {**self.istio_entry(), "name": self.conflist["name"],
                "cniVersion": self.conflist["cniVersion"], **(conf_changes or {})}
        if prev is not None:
            conf["prevResult"] = prev
        return self.runtime.call("istio-cni", command, nsutil.path(ns_name), f"c-{ns_name}",
                                 conf, k8s_args(meta["namespace"], meta["name"]), env=env)




@contextmanager
def sandboxed_node(tmp_path: Path, api: KubeApiServer, *, prefix: str, subnet_index: int,
                   subnet_v4: str, subnet_v6: str | None = None,
                   istio: dict | None = None) -> Iterator[Node]:
    """A node of network namespaces: bridge + host-local (run inside the node netns) chained
    with istio-cni (run on the host, so it reaches the API stand-in on loopback), a run dir
    with the kubeconfig for `api`; every netns it or its pods created is deleted afterwards.
    `istio` adds or overrides keys of the istio-cni entry."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces")
    if not (CNI_BIN_DIR / "bridge").exists():
        pytest.skip(f"needs the bridge/host-local CNI plugins in {CNI_BIN_DIR} "
                    "(Debian package containernetworking-plugins)")
    name = nsutil.unique(f"{prefix}-node")
    nsutil.run("ip", "netns", "add", name)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_kubeconfig(run_dir, api)
    ranges = [[{"subnet": subnet_v4}]] + ([[{"subnet": subnet_v6}]] if subnet_v6 else [])
    routes = [{"dst": "0.0.0.0/0"}] + ([{"dst": "::/0"}] if subnet_v6 else [])
    conflist = {
        "cniVersion": "1.0.0",
        "name": prefix,
        "plugins": [
            {"type": "bridge", "bridge": "icnibr0", "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                      "ranges": ranges, "routes": routes}},
            {"type": "istio-cni", "plugin_log_level": "debug", "cni_agent_run_dir": str(run_dir),
             "exclude_namespaces": ["kube-system"], "pod_namespace": "istio-system",
             **(istio or {})},
        ],
    }
    runtime = Runtime(binaries={"istio-cni": plugin_argv()}, node_netns=name)
    node = Node(name, run_dir, api, runtime, conflist, subnet_index, prefix=prefix)
    try:
        nsutil.run("ip", "-n", name, "link", "set", "lo", "up")
        nsutil.ns_exec(name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                       "net.ipv6.conf.default.accept_dad=0")
        yield node
    finally:
        for pod_ns in node.pods:
            nsutil.run("ip", "netns", "delete", pod_ns, check=False)
        nsutil.run("ip", "netns", "delete", name, check=False)
        shutil.rmtree(tmp_path / "ipam", ignore_errors=True)


# --- what the e2e tiers look at in a pod ----------------------------------------------------------

def saved_rules(pod_ns: str) -> str:
    """Everything iptables holds in the pod netns, from both backends and both families
    (without the "# Generated ... <time>" comments and the packet counters)."""
    out = []
    for tool in ("iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save",
                 "ip6tables-legacy-save"):
        for line in nsutil.ns_exec(pod_ns, tool, check=False).splitlines():
            if not line.startswith("#"):
                out.append(line.split(" [", 1)[0] if line.startswith(":") else line)
    return "\n".join(out)


def istio_lines(pod_ns: str) -> list[str]:
    return [ln for ln in saved_rules(pod_ns).splitlines() if "ISTIO" in ln]


def pod_ip(calls: list[CniCall], family: str = "4") -> str:
    """The pod's address of `family` from the primary plugin's result."""
    for ip in calls[0].result["ips"]:
        if (":" in ip["address"]) == (family == "6"):
            return ip["address"].split("/")[0]
    raise AssertionError(f"no IPv{family} address in {calls[0].result}")


def gateway(node: Node, family: str = "4") -> str:
    """The bridge's address on the node (as sandboxed_node's callers number their subnets)."""
    return f"10.99.{node.subnet_index}.1" if family == "4" else f"fd00:99:{node.subnet_index}::1"


def assert_app_traffic_redirected(node: Node, pod_ns: str, calls: list[CniCall]) -> None:
    """Real TCP: the app's outbound connection lands on 15001 and an inbound one on 15006,
    each with its original destination read through SO_ORIGINAL_DST."""
    gw = gateway(node)
    proxy = nsutil.Listener(pod_ns, 15001)
    status, out = nsutil.connect(pod_ns, gw, 8080)
    assert status == 0, out
    assert proxy.lines() == [f"conn {pod_ip(calls)} orig {gw}:8080"]

    inbound = nsutil.Listener(pod_ns, 15006)
    status, out = nsutil.connect(node.name, pod_ip(calls), 9080)
    assert status == 0, out
    assert inbound.lines() == [f"conn {gw} orig {pod_ip(calls)}:9080"]
