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

Under the chart's own RBAC (its rendered ClusterRoles: no `get daemonsets`, no `patch nodes`,
no tokens), its 30 s grace period and the agent's pod and bound token in the stand-in: a
restart while pods keep being created (each ADD retried until it succeeds, as the kubelet
does) keeps every meshed pod redirected; `helm uninstall` (the DaemonSet, then the RBAC and the
ServiceAccount) removes the plugin; an API that stops answering at SIGTERM still sees the agent
exit within the grace period and the node able to start pods.

The bundles come from ISTIO_CNI_DIST (a dist dir holding `istio-cni/` and `istio-cni-node/`)
or a fresh build of build.spec (1-2 min).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed import netns as nsutil
from testbed.agentpod import uninstall_release
from testbed.chartpod import IMAGE_PATH, ChartPod, chart_pod, copy_service_account
from testbed.cleanup import Cleanup
from testbed.cnirun import Runtime
from testbed.frozen import build_bundles
from testbed.kubeapi import KubeApiServer
from testbed.node import Node, assert_app_traffic_redirected, istio_lines, missing_prerequisites
from testbed.nodes import make_node
from testbed.pods import workload
from testbed.procs import Proc
from testbed.wait import WaitTimeout, wait_for
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
                configmap: dict[str, str] | None = None, token: str = TOKEN) -> Iterator[Started]:
    """The frozen agent started as the chart starts it, on a node whose primary CNI config is
    bridge + host-local; stopped (and everything it mounted gone) afterwards."""
    if reason := missing_prerequisites():
        pytest.skip(reason)
    busy = [p for p in (8000, 15014) if not _port_free(p)]
    assert not busy, f"ports {busy} are taken on this host: the chart's agent binds them"
    with Cleanup() as cleanup:
        sa = copy_service_account(tmp_path / "sa", token, api.ca_pem or b"", chart.NAMESPACE)
        pod = chart_pod(cleanup, tmp_path / "root", plugin_bundle=dist / "istio-cni",
                        agent_bundle=dist / "istio-cni-node", service_account=sa)
        primary = pod.net_dir / "10-k8s.conflist"
        primary.write_text(json.dumps(_primary_conflist(tmp_path / "ipam"), indent=2))
        agent = start_in(pod, api, cleanup, configmap)
        yield Started(pod, agent, primary, cleanup)


def start_in(pod: ChartPod, api: KubeApiServer, cleanup: Cleanup,
             configmap: dict[str, str] | None = None, name: str = "install-cni") -> Proc:
    """The chart's container command in `pod`, with the chart's environment."""
    env = {"PATH": IMAGE_PATH, "HOSTNAME": chart.POD_NAME,
           **chart.pod_env(NODE, configmap),
           "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}
    argv = ["env", "-i", *(f"{k}={v}" for k, v in env.items()),
            *pod.container_argv(*chart.argv())]
    agent = Proc(name, argv)
    cleanup.add(f"stop {name}", agent.stop)
    return agent


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


# --- under the chart's RBAC and grace period ----------------------------------------------------

def chart_cluster(api: KubeApiServer) -> str:
    """The chart installed: its RBAC, its DaemonSet, the node, the agent's pod (the chart's
    grace period) and the token the kubelet projects for it, returned."""
    api.auth.load_rbac(chart.DOCS)
    api.add_daemonset(chart.NAMESPACE, "istio-cni-node")
    api.add_node(make_node(NODE))
    return new_agent_pod(api)


def new_agent_pod(api: KubeApiServer) -> str:
    grace = chart.POD["terminationGracePeriodSeconds"]
    assert grace == 30, "HEAD's chart"
    pod = api.add_pod({"metadata": {"name": chart.POD_NAME, "namespace": chart.NAMESPACE},
                       "spec": {"nodeName": NODE, "serviceAccountName": "istio-cni",
                                "terminationGracePeriodSeconds": grace}})
    return api.auth.pod_token(chart.NAMESPACE, "istio-cni", pod)


def wait_ready(agent: Proc) -> None:
    def ready() -> bool:
        assert agent.popen.poll() is None, "\n".join(agent.lines[-30:])
        return _get("http://127.0.0.1:8000/readyz")[0] == 200

    try:
        wait_for(ready, 90, "the agent ready on :8000/readyz")
    except WaitTimeout:
        raise AssertionError("not ready: " + _get("http://127.0.0.1:8000/readyz")[1] + "\n"
                             + "\n".join(agent.lines[-30:])) from None


def terminate_within_grace(agent: Proc) -> int | None:
    """SIGTERM, then SIGKILL at the chart's grace period as the kubelet would; the exit code,
    or None when it had to be killed."""
    os.killpg(agent.popen.pid, signal.SIGTERM)
    try:
        code: int | None = agent.popen.wait(timeout=chart.POD["terminationGracePeriodSeconds"])
    except subprocess.TimeoutExpired:
        os.killpg(agent.popen.pid, signal.SIGKILL)
        agent.popen.wait(timeout=10)
        code = None
    agent.rest(timeout=10)
    return code


def sandbox(started: Started, api: KubeApiServer) -> Node:
    """The chart's node as a CNI runtime sees it: bridge + host-local in a node netns, then
    the installed frozen plugin, run on the node."""
    pod, cleanup = started.pod, started.cleanup
    node_ns = nsutil.create_netns(cleanup, "icni-chart-node").name
    runtime = Runtime(binaries={"istio-cni": pod.node_argv("/opt/cni/bin/istio-cni")},
                      node_netns=node_ns)
    conflist = json.loads(started.primary.read_text())
    return Node(node_ns, pod.run_dir, api, runtime, conflist, SUBNET, cleanup,
                prefix="icni-chart")


class Churn:
    """Meshed pods created one after another until stopped, each ADD retried (after a DEL)
    until it succeeds, as the kubelet does; what each successful ADD left is recorded."""

    def __init__(self, node: Node, api: KubeApiServer) -> None:
        self.node, self.api = node, api
        self.stop = threading.Event()
        self.started: list[tuple[str, bool]] = []
        """(pod, redirected) of every ADD that succeeded."""
        self.failed_attempts = 0
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, name="churn", daemon=True)

    def _run(self) -> None:
        try:
            i = 0
            while not self.stop.is_set():
                i += 1
                meshed = self.api.add_pod(workload(name=f"churn-{i}", node=NODE))
                pod_ns = self.node.new_pod_netns()
                for _ in range(120):
                    calls = self.node.add(pod_ns, meshed)
                    if all(c.status == 0 for c in calls):
                        self.started.append((f"churn-{i}", any(
                            "ISTIO_OUTPUT" in ln for ln in istio_lines(pod_ns))))
                        break
                    self.failed_attempts += 1
                    self.node.add(pod_ns, meshed, "DEL")
                    self.stop.wait(0.5)  # the kubelet's back-off between sandbox attempts
                else:
                    raise AssertionError(f"churn-{i} never started")
        except BaseException as exc:  # surfaced in the test thread
            self.errors.append(exc)

    def count(self) -> int:
        return len(self.started)


def test_under_the_charts_rbac_a_restart_under_churn_keeps_every_pod_redirected(
        tmp_path: Path, kube_api_tls: KubeApiServer, dist: Path) -> None:
    api = kube_api_tls
    first_token = chart_cluster(api)
    with chart_agent(tmp_path, api, dist, token=first_token) as started:
        wait_ready(started.agent)
        node = sandbox(started, api)
        churn = Churn(node, api)
        churn.thread.start()
        try:
            wait_for(lambda: churn.count() >= 2 or churn.errors, 120, "pods starting")
            # the restart: SIGTERM, the pod object deleted, a new pod with its own token
            assert terminate_within_grace(started.agent) == 0, "\n".join(
                started.agent.lines[-20:])
            during = churn.count()
            api.delete_pod(chart.NAMESPACE, chart.POD_NAME)
            (tmp_path / "sa" / "token").write_text(new_agent_pod(api))
            second = start_in(started.pod, api, started.cleanup, name="install-cni-2")
            wait_ready(second)
            wait_for(lambda: churn.count() >= during + 3 or churn.errors, 180,
                     "pods starting after the restart")
        finally:
            churn.stop.set()
            churn.thread.join(180)
        assert not churn.errors, churn.errors
        logging.getLogger(__name__).info(
            "churn: %d meshed pods started, %d redirected; %d ADD attempts failed (retried), "
            "%d pods started before the restart", churn.count(),
            sum(r for _, r in churn.started), churn.failed_attempts, during)
        records = [json.loads(ln) for ln in started.agent.lines if ln.strip()]
        assert any("keeping the plugin" in r["msg"] for r in records), records[-10:]
        unredirected = [name for name, redirected in churn.started if not redirected]
        assert unredirected == [], f"{len(unredirected)} of {churn.count()} meshed pods " \
                                   f"started without redirection"
        assert "istio-cni" in [p["type"] for p in json.loads(started.primary.read_text())[
            "plugins"]]
        terminate_within_grace(second)


def test_helm_uninstall_under_the_charts_rbac_removes_the_plugin(
        tmp_path: Path, kube_api_tls: KubeApiServer, dist: Path) -> None:
    api = kube_api_tls
    token = chart_cluster(api)
    with chart_agent(tmp_path, api, dist, token=token) as started:
        wait_ready(started.agent)
        api.delete_daemonset(chart.NAMESPACE, "istio-cni-node")
        uninstall_release(api, chart.DOCS)
        assert terminate_within_grace(started.agent) == 0
        after = json.loads(started.primary.read_text())
        assert [p["type"] for p in after["plugins"]] == ["bridge"]
        assert not (started.pod.bin_dir / "istio-cni").exists()
        assert not (started.pod.run_dir / "istio-cni-kubeconfig").exists()


def test_a_hanging_api_at_shutdown_stays_within_the_charts_grace_period(
        tmp_path: Path, kube_api_tls: KubeApiServer, dist: Path) -> None:
    api = kube_api_tls
    token = chart_cluster(api)
    with chart_agent(tmp_path, api, dist, token=token) as started:
        wait_ready(started.agent)
        api.hang(".*")
        code = terminate_within_grace(started.agent)
        api.clear_faults()
        api.delete_pod(chart.NAMESPACE, chart.POD_NAME)
        assert code == 0, "\n".join(started.agent.lines[-20:])
        # the node can start pods: istio-cni is gone from the config the runtime loads, or
        # still there with a credential the API accepts
        plugins = [p["type"] for p in json.loads(started.primary.read_text())["plugins"]]
        if "istio-cni" in plugins:
            kubeconfig = json.loads((started.pod.run_dir / "istio-cni-kubeconfig").read_text())
            api.auth.authenticate(f"Bearer {kubeconfig['users'][0]['user']['token']}")
