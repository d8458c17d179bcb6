"""A sandboxed node: network namespaces, the real bridge + host-local plugins, a run dir with
the kubeconfig for the API stand-in, and istio-cni run through the CNI protocol.

The node is a netns; bridge + host-local run inside it (`testbed.cnirun`), istio-cni on the
host (so it reaches the stand-in on loopback). Pod netns are `<prefix>-pod-<hex>`, the node's
own `<prefix>-node-<hex>`; all are registered on the node's `Cleanup` and deleted when the
`sandboxed_node` block ends. What a test looks at in a pod (its rules, real redirected
traffic) is here too, so the e2e, hardening and installer tiers check it one way.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import netns as nsutil
from testbed.cleanup import Cleanup
from testbed.cnirun import CNI_BIN_DIR, CniCall, Runtime, k8s_args, pod_ip
from testbed.kubeapi import KubeApiServer, write_kubeconfig
from testbed.traffic import Listener, connect


def plugin_argv() -> list[str]:
    """The plugin under test: ISTIO_CNI_BINARY (e.g. the frozen build) or the source entry."""
    binary = os.environ.get("ISTIO_CNI_BINARY")
    return [binary] if binary else [sys.executable, "-m", "cni"]


def missing_prerequisites() -> str | None:
    """Why a sandboxed node cannot be made here (None: it can); tests skip with it."""
    if os.geteuid() != 0:
        return "needs root: network namespaces"
    if not (CNI_BIN_DIR / "bridge").exists():
        return (f"needs the bridge/host-local CNI plugins in {CNI_BIN_DIR} "
                "(Debian package containernetworking-plugins)")
    return None


@dataclass
class Node:
    """One sandboxed node: its netns, run dir, conflist, runtime and the API it talks to."""

    name: str
    run_dir: Path
    api: KubeApiServer
    runtime: Runtime
    conflist: dict
    subnet_index: int
    cleanup: Cleanup
    prefix: str = "icni-e2e"
    """Name prefix of the netns this node creates (its own is `<prefix>-node-*`)."""

    def __post_init__(self) -> None:
        self.pods: list[str] = []
        """The pod netns made by `new_pod_netns`, in order."""
        self.agent: Any = None
        """The node agent serving the plugin's calls (`testbed.agent.ServingAgent`), if any."""

    def istio_entry(self) -> dict:
        return self.conflist["plugins"][-1]

    def new_pod_netns(self) -> str:
        """A pod sandbox's netns (lo up, nothing else: the primary plugin adds eth0)."""
        name = nsutil.create_netns(self.cleanup, f"{self.prefix}-pod").name
        self.pods.append(name)
        return name

    def add(self, ns_name: str, pod: dict, command: str = "ADD",
            prev: dict | None = None, pod_uid: str | None = None) -> list[CniCall]:
        """`command` through the whole conflist for `pod` in `ns_name`. CNI_ARGS carry the
        pod's own K8S_POD_UID (None, as containerd and CRI-O pass it), another (a sandbox of
        an older pod), or none ("", as from cri-dockerd)."""
        meta = pod["metadata"]
        uid = meta.get("uid", "") if pod_uid is None else pod_uid
        return self.runtime.run_list(self.conflist, command, nsutil.path(ns_name),
                                     container_id=f"c-{ns_name}",
                                     cni_args=k8s_args(meta["namespace"], meta["name"], uid),
                                     prev=prev)

    def call_istio(self, ns_name: str, pod: dict, command: str, prev: dict | None = None,
                   env: dict | None = None, conf_changes: dict | None = None,
                   pod_uid: str | None = None) -> CniCall:
        """istio-cni alone, with its conflist entry (changed by `conf_changes`); `pod_uid` as
        for `add`."""
        meta = pod["metadata"]
        uid = meta.get("uid", "") if pod_uid is None else pod_uid
        conf = {**self.istio_entry(), "name": self.conflist["name"],
                "cniVersion": self.conflist["cniVersion"], **(conf_changes or {})}
        if prev is not None:
            conf["prevResult"] = prev
        return self.runtime.call("istio-cni", command, nsutil.path(ns_name), f"c-{ns_name}",
                                 conf, k8s_args(meta["namespace"], meta["name"], uid),
                                 env=env)


@contextmanager
def sandboxed_node(tmp_path: Path, api: KubeApiServer, *, prefix: str, subnet_index: int,
                   subnet_v4: str, subnet_v6: str | None = None,
                   istio: dict | None = None) -> Iterator[Node]:
    """A node of network namespaces: bridge + host-local (run inside the node netns) chained
    with istio-cni (run on the host), a run dir with the kubeconfig for `api`; every netns it
    or its pods created is deleted afterwards. `istio` adds or overrides keys of the istio-cni
    entry. Check `missing_prerequisites()` first."""
    with Cleanup() as cleanup:
        name = nsutil.create_netns(cleanup, f"{prefix}-node").name
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        write_kubeconfig(run_dir, api)
        ipam_dir = tmp_path / "ipam"
        cleanup.add(f"remove {ipam_dir}", lambda: shutil.rmtree(ipam_dir, ignore_errors=True))
        ranges = [[{"subnet": subnet_v4}]] + ([[{"subnet": subnet_v6}]] if subnet_v6 else [])
        routes = [{"dst": "0.0.0.0/0"}] + ([{"dst": "::/0"}] if subnet_v6 else [])
        conflist = {
            "cniVersion": "1.0.0",
            "name": prefix,
            "plugins": [
                {"type": "bridge", "bridge": "icnibr0", "isGateway": True, "ipMasq": False,
                 "ipam": {"type": "host-local", "dataDir": str(ipam_dir),
                          "ranges": ranges, "routes": routes}},
                {"type": "istio-cni", "plugin_log_level": "debug",
                 "cni_agent_run_dir": str(run_dir), "exclude_namespaces": ["kube-system"],
                 "pod_namespace": "istio-system", **(istio or {})},
            ],
        }
        runtime = Runtime(binaries={"istio-cni": plugin_argv()}, node_netns=name)
        yield Node(name, run_dir, api, runtime, conflist, subnet_index, cleanup, prefix=prefix)


# --- what the tiers look at in a pod -------------------------------------------------------------

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


def gateway(node: Node, family: str = "4") -> str:
    """The bridge's address on the node (as sandboxed_node's callers number their subnets)."""
    return f"10.99.{node.subnet_index}.1" if family == "4" else f"fd00:99:{node.subnet_index}::1"


def assert_app_traffic_redirected(node: Node, pod_ns: str, calls: list[CniCall]) -> None:
    """Real TCP: the app's outbound connection lands on 15001 and an inbound one on 15006,
    each with its original destination read through SO_ORIGINAL_DST."""
    gw = gateway(node)
    proxy = Listener(pod_ns, 15001, cleanup=node.cleanup)
    status, out = connect(pod_ns, gw, 8080)
    assert status == 0, out
    assert proxy.lines() == [f"conn {pod_ip(calls)} orig {gw}:8080"]

    inbound = Listener(pod_ns, 15006, cleanup=node.cleanup)
    status, out = connect(node.name, pod_ip(calls), 9080)
    assert status == 0, out
    assert inbound.lines() == [f"conn {gw} orig {pod_ip(calls)}:9080"]
