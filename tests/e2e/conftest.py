"""The end-to-end tier: a sandboxed node made of network namespaces, the real bridge and
host-local plugins, the API stand-in, and istio-cni run through the CNI protocol."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import netns as nsutil
from support.cnirun import CNI_BIN_DIR, Runtime
from support.node import Node, plugin_argv

from tests.kubeapi.fixtures import write_kubeconfig
from tests.kubeapi.server import KubeApiServer

_SUBNETS = iter(range(10, 250))


@pytest.fixture
def node(tmp_path: Path, kube_api: KubeApiServer, request) -> Iterator[Node]:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces")
    if not (CNI_BIN_DIR / "bridge").exists():
        pytest.skip(f"needs the bridge/host-local CNI plugins in {CNI_BIN_DIR} "
                    "(Debian package containernetworking-plugins)")
    backend = getattr(request, "param", "auto")
    idx = next(_SUBNETS)
    name = nsutil.unique("icni-e2e-node")
    nsutil.run("ip", "netns", "add", name)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_kubeconfig(run_dir, kube_api)
    conflist = {
        "cniVersion": "1.0.0",
        "name": "icni-e2e",
        "plugins": [
            {"type": "bridge", "bridge": "icnibr0", "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                      "ranges": [[{"subnet": f"10.99.{idx}.0/24"}],
                                 [{"subnet": f"fd00:99:{idx}::/64"}]],
                      "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
            {"type": "istio-cni", "plugin_log_level": "debug", "cni_agent_run_dir": str(run_dir),
             "exclude_namespaces": ["kube-system"], "pod_namespace": "istio-system",
             "iptables_backend": backend, "pod_lookup_attempts": 3,
             "pod_lookup_interval_seconds": 0.05, "pod_lookup_deadline_seconds": 5},
        ],
    }
    runtime = Runtime(binaries={"istio-cni": plugin_argv()}, node_netns=name)
    node = Node(name, run_dir, kube_api, runtime, conflist, idx)
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
