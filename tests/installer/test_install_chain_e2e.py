"""What the installer wrote is what the runtime runs: the *installed* conflist file, fed to a
libcni-like runtime (bridge + host-local in a node netns, then our plugin), redirects a meshed
pod. Root tier: real network namespaces, the real bridge/host-local plugins, real iptables."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest

from installer import Installer
from testbed import netns as nsutil
from testbed.cleanup import Cleanup
from testbed.cnirun import Runtime, k8s_args
from testbed.kubeapi import DEFAULT_TOKEN, KubeApiServer
from testbed.node import missing_prerequisites
from testbed.nodedirs import NodeDirs
from testbed.pods import workload

pytestmark = pytest.mark.root


@pytest.fixture
def netns_pair(cleanup: Cleanup) -> tuple[str, str]:
    """A node netns and a pod netns, deleted after the test."""
    if reason := missing_prerequisites():
        pytest.skip(reason)
    node, pod = (nsutil.create_netns(cleanup, f"icni-i-{role}").name for role in ("node", "pod"))
    return node, pod


def test_installed_conflist_redirects_a_meshed_pod(node_dirs: NodeDirs, kube_api: KubeApiServer,
                                                   netns_pair: tuple[str, str], tmp_path: Path):
    node_ns, pod_ns = netns_pair
    (node_dirs.sa_dir / "..data" / "token").write_text(kube_api.token or DEFAULT_TOKEN)
    bridge = f"icnibr{uuid.uuid4().hex[:6]}"
    primary = {
        "cniVersion": "1.0.0", "name": "icni-install",
        "plugins": [{"type": "bridge", "bridge": bridge, "isGateway": True,
                     "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                              "ranges": [[{"subnet": "10.98.7.0/24"}]],
                              "routes": [{"dst": "0.0.0.0/0"}]}}],
    }
    node_dirs.put("10-bridge.conflist", text=json.dumps(primary, indent=2))
    url = kube_api.url.split("://", 1)[1]
    host, port = url.rsplit(":", 1)
    installer = Installer(node_dirs.config(
        k8s_service_protocol="http", k8s_service_host=host, k8s_service_port=port,
        skip_tls_verify=True, exclude_namespaces=("kube-system",)))
    installer.install()
    assert installer.config_path is not None
    installed = json.loads(installer.config_path.read_text())

    pod = kube_api.add_pod(workload("meshed-pod"))
    meta = pod["metadata"]
    runtime = Runtime(binaries={"istio-cni": [sys.executable, "-m", "cni"]}, node_netns=node_ns)
    args = k8s_args(meta["namespace"], meta["name"])
    calls = runtime.run_list(installed, "ADD", nsutil.path(pod_ns), "c-install", args)
    try:
        assert [c.argv[-1] for c in calls][-1] == "cni"
        assert [c.status for c in calls] == [0, 0], calls[-1].stdout + calls[-1].stderr
        saved = nsutil.ns_exec(pod_ns, "iptables-save")
        assert "-A OUTPUT -j ISTIO_OUTPUT" in saved
        assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in saved
    finally:
        runtime.run_list(installed, "DEL", nsutil.path(pod_ns), "c-install", args,
                         prev=calls[0].result if calls and calls[0].status == 0 else None)
        installer.uninstall()
    assert json.loads((node_dirs.net_dir / "10-bridge.conflist").read_text()) == primary
