"""The frozen agent started exactly as upstream's `istio-cni` chart starts it.

The chart's rendered DaemonSet and ConfigMap (istio-cni-chart.yaml) give the command
(`install-cni`, found on the image's PATH), the args (`--log_output_level=...`,
`--log_as_json`) and the environment (envFrom the ConfigMap, then the pod env with the
downward API resolved); `testbed.chartpod` gives the mount layout: a node's filesystem and the
container's, the chart's hostPath mounts onto the node's dirs, the image's bundles at the
Containerfile's paths, in a private mount namespace. The kubelet's own additions are the API
service address and the service account. Then, against the API stand-in (TLS, in-cluster
config): the plugin is installed on the node, the agent is ready on 8000 with metrics on 15014,
a meshed pod added through the CNI protocol (bridge + host-local, then the installed frozen
plugin, run on the node) is redirected with real traffic, its plugin logs reach the agent at
the `cni-plugin` scope's level, and SIGTERM takes the plugin off the node. With the chart's
`ambient.enabled=true` (`AMBIENT_ENABLED=true`) the same agent stays not ready with the reason
on `/readyz` and in one error line, and neither installs anything nor calls the API.

The bundles come from ISTIO_CNI_DIST (a dist dir holding `istio-cni/` and `istio-cni-node/`)
or a fresh build of build.spec (1-2 min).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed import netns as nsutil
from testbed.chartpod import IMAGE_PATH, ChartPod, chart_pod, copy_service_account
from testbed.cleanup import Cleanup
from testbed.cnirun import Runtime
from testbed.frozen import build_bundles
from testbed.kubeapi import KubeApiServer
from testbed.node import Node, assert_app_traffic_redirected, istio_lines, missing_prerequisites
from testbed.pods import workload
from testbed.procs import Proc
from testbed.wait import wait_for
from tests.chart import chart

pytest.importorskip("PyInstaller", reason="PyInstaller is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.root

NODE = "node-chart"
SUBNET = 251
TOKEN = "chart-sa-token"


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("ISTIO_CNI_DIST")
    if given:
        return Path(given)
    return build_bundles(tmp_path_factory.mktemp("chart-dist"))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def _primary_conflist(ipam_dir: Path) -> dict:
    return {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
        {"type": "bridge", "bridge": "icnibr0", "isGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "dataDir": str(ipam_dir),
                  "ranges": [[{"subnet": f"10.99.{SUBNET}.0/24"}]],
                  "routes": [{"dst": "0.0.0.0/0"}]}}]}


@dataclass
class Started:
    pod: ChartPod
    agent: Proc
    primary: Path
    cleanup: Cleanup


@contextmanager
def chart_agent(tmp_path: Path, api: KubeApiServer, dist: Path,
                configmap: dict[str, str] | None = None) -> Iterator[Started]:
    """The frozen agent started as the chart starts it, on a node whose primary CNI config is
    bridge + host-local; stopped (and everything it mounted gone) afterwards."""
    if reason := missing_prerequisites():
        pytest.skip(reason)
    busy = [p for p in (8000, 15014) if not _port_free(p)]
    assert not busy, f"ports {busy} are taken on this host: the chart's agent binds them"
    with Cleanup() as cleanup:
        sa = copy_service_account(tmp_path / "sa", TOKEN, api.ca_pem or b"", chart.NAMESPACE)
        pod = chart_pod(cleanup, tmp_path / "root", plugin_bundle=dist / "istio-cni",
                        agent_bundle=dist / "istio-cni-node", service_account=sa)
        primary = pod.net_dir / "10-k8s.conflist"
        primary.write_text(json.dumps(_primary_conflist(tmp_path / "ipam"), indent=2))
        env = {"PATH": IMAGE_PATH, "HOSTNAME": chart.POD_NAME,
               **chart.pod_env(NODE, configmap),
               "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}
        argv = ["env", "-i", *(f"{k}={v}" for k, v in env.items()),
                *pod.container_argv(*chart.argv())]
        agent = Proc("install-cni", argv)
        cleanup.add("stop the agent", agent.stop)
        yield Started(pod, agent, primary, cleanup)


def _stop(agent: Proc) -> list[dict]:
    """SIGTERM, the exit status checked, and every line it wrote as JSON."""
    os.killpg(agent.popen.pid, signal.SIGTERM)
    agent.rest()
    assert agent.popen.returncode == 0, "\n".join(agent.lines[-20:])
    return [json.loads(ln) for ln in agent.lines if ln.strip()]


def test_frozen_agent_as_the_chart_runs_it(tmp_path: Path, kube_api_tls: KubeApiServer,
                                           dist: Path) -> None:
    with chart_agent(tmp_path, kube_api_tls, dist) as started:
        pod, agent, primary, cleanup = (started.pod, started.agent, started.primary,
                                        started.cleanup)

        def ready() -> bool:
            assert agent.popen.poll() is None, "\n".join(agent.lines[-30:])
            return _get("http://127.0.0.1:8000/readyz")[0] == 200

        wait_for(ready, 90, "the agent ready on :8000/readyz")

        # installed on the node: the entry in the primary config, the binary, the kubeconfig
        conflist = json.loads(primary.read_text())
        entry = conflist["plugins"][-1]
        assert entry["type"] == "istio-cni"
        assert entry["plugin_log_level"] == "debug"  # --log_output_level's cni-plugin scope
        assert entry["exclude_namespaces"] == ["kube-system"]
        assert os.access(pod.bin_dir / "istio-cni", os.X_OK)
        assert (pod.run_dir / "istio-cni-kubeconfig").is_file()
        status, metrics = _get("http://127.0.0.1:15014/metrics")
        assert status == 200 and "istio_cni_install_ready 1.0" in metrics

        # a meshed pod on this node, through the CNI protocol with the installed plugin
        node_ns = nsutil.create_netns(cleanup, "icni-chart-node").name
        runtime = Runtime(binaries={"istio-cni": pod.node_argv("/opt/cni/bin/istio-cni")},
                          node_netns=node_ns)
        node = Node(node_ns, pod.run_dir, kube_api_tls, runtime, conflist, SUBNET, cleanup,
                    prefix="icni-chart")
        meshed = kube_api_tls.add_pod(workload(name="app-chart", node=NODE))
        pod_ns = node.new_pod_netns()
        calls = node.add(pod_ns, meshed)
        assert [c.status for c in calls] == [0, 0], [c.error for c in calls]
        assert any("ISTIO_OUTPUT" in ln for ln in istio_lines(pod_ns))
        assert_app_traffic_redirected(node, pod_ns, calls)

        # the plugin's debug lines reached the agent at the cni-plugin scope's level
        agent.wait_line(lambda ln: '"scope": "cni-plugin"' in ln and '"level": "debug"' in ln,
                        30, "the plugin's debug lines in the agent's log")

        # SIGTERM: the agent takes the plugin off the node and exits 0
        records = _stop(agent)
        after = json.loads(primary.read_text())
        assert [p["type"] for p in after["plugins"]] == ["bridge"]
        assert not (pod.bin_dir / "istio-cni").exists()

        # every line it wrote is JSON with upstream's keys; none is an error
        assert all(set(r) >= {"time", "level", "scope", "msg"} for r in records)
        assert any("set by the chart, not used by this agent" in r["msg"]
                   and "GOMEMLIMIT" in r["msg"] for r in records)
        assert not [r for r in records if r["level"] in ("error", "fatal")], records[-10:]


def test_frozen_agent_under_an_ambient_chart_stays_not_ready_and_installs_nothing(
        tmp_path: Path, kube_api_tls: KubeApiServer, dist: Path) -> None:
    with chart_agent(tmp_path, kube_api_tls, dist,
                     {**chart.configmap_data(), "AMBIENT_ENABLED": "true"}) as started:
        agent = started.agent
        line = agent.wait_line(lambda ln: '"level": "error"' in ln, 60, "the refusal")
        reason = json.loads(line)["msg"].removeprefix("not ready: ")
        assert reason.startswith("AMBIENT_ENABLED=true: ambient mode is not supported")
        assert _get("http://127.0.0.1:8000/readyz") == (503, reason + "\n")
        assert _get("http://127.0.0.1:8000/healthz")[0] == 200
        records = _stop(agent)
        # nothing was installed, and nothing was asked of the API
        assert [p["type"] for p in json.loads(started.primary.read_text())["plugins"]] == [
            "bridge"]
        assert os.listdir(started.pod.bin_dir) == [] == os.listdir(started.pod.run_dir)
        assert kube_api_tls.requests == []
        assert [r["msg"] for r in records if r["level"] == "error"] == [f"not ready: {reason}"]
