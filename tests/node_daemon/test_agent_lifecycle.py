"""The agent's lifecycle as a cluster lives it: restarts, uninstalls, a hanging API at SIGTERM,
a rollout whose new image never comes.

Each test runs `istio-cni-node run` from this tree as a process (`testbed.agentpod`) with the
environment, the pod object, the bound token and the RBAC a cluster gives it, against the API
stand-in with authentication and RBAC on, on a node laid out by `testbed.nodedirs`. What is
checked is what the node is left with: the config the runtime loads, the plugin, and whether
the plugin's credential is still accepted once the agent's pod object is gone.

- Under upstream's chart (its rendered RBAC: no `get daemonsets`), a restart keeps the plugin,
  and `helm uninstall` (the DaemonSet, then the RBAC and the ServiceAccount) removes it, whether
  the RBAC goes before the SIGTERM or during the decision.
- With the pod's grace period at 5 s and every API request hanging from SIGTERM on, the agent
  exits before the SIGKILL and leaves a node that can start pods.
- With daemonset.yaml (the plugin's own ServiceAccount), a failed rollout (the agent stopped,
  its pod deleted, no new agent) leaves meshed pods starting redirected, through the real
  plugin with bridge + host-local in network namespaces, for the plugin token's lifetime minus
  one renewal interval; past its expiry the plugin fails closed.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from testbed import netns as nsutil
from testbed.agentpod import (
    NAMESPACE,
    AgentPod,
    delete_pod,
    kubeconfig_token,
    plugin_works,
    start_agent_pod,
    terminate,
    uninstall_release,
)
from testbed.cleanup import Cleanup
from testbed.cnirun import Runtime
from testbed.kubeapi import KubeApiServer
from testbed.kubeapi.auth import Attributes
from testbed.node import Node, istio_lines, missing_prerequisites, plugin_argv
from testbed.nodedirs import NodeDirs, loaded_plugins, make_node_dirs
from testbed.nodes import make_node
from testbed.pods import workload
from testbed.wait import wait_for
from tests.chart import chart
from tests.deploy.manifest import documents, pod_env

NODE = "node-life"
PRIMARY = {"cniVersion": "1.0.0", "name": "k8s-pod-network",
           "plugins": [{"type": "bridge", "bridge": "cni0"}]}


def chart_env() -> dict[str, str]:
    """The chart's environment for a pod on NODE (paths come from the node dirs)."""
    return {k: v for k, v in chart.pod_env(NODE).items() if k != "POD_NAME"}


def manifest_env() -> dict[str, str]:
    env = pod_env(documents(), NODE)
    for key in ("MOUNTED_CNI_NET_DIR", "CNI_BIN_TARGET_DIRS", "CNI_AGENT_RUN_DIR",
                "CNI_BIN_SOURCE_DIR", "HOST_PROC", "READINESS_PORT", "MONITORING_PORT",
                "POD_NAME"):
        env.pop(key, None)
    return env


@pytest.fixture
def cluster(kube_api_tls: KubeApiServer) -> KubeApiServer:
    kube_api_tls.add_node(make_node(NODE))
    kube_api_tls.add_daemonset(NAMESPACE, "istio-cni-node")
    return kube_api_tls


@pytest.fixture
def dirs(tmp_path: Path) -> NodeDirs:
    (tmp_path / "node").mkdir()
    dirs = make_node_dirs(tmp_path / "node")
    dirs.put("10-bridge.conflist", text=json.dumps(PRIMARY))
    return dirs


def installed(agent: AgentPod, dirs: NodeDirs) -> bool:
    assert agent.proc.popen.poll() is None, "\n".join(agent.proc.lines[-30:])
    return "istio-cni" in (loaded_plugins(dirs.net_dir) or []) and (
        dirs.run_dir / "istio-cni-kubeconfig").exists()


def start(cleanup: Cleanup, api: KubeApiServer, dirs: NodeDirs, name: str,
          env: dict[str, str], grace: int = 30) -> AgentPod:
    agent = start_agent_pod(cleanup, api, dirs, node=NODE, name=name, env=env, grace=grace)
    wait_for(lambda: installed(agent, dirs), 60, f"{name} installed the plugin")
    return agent


def log_of(agent: AgentPod) -> str:
    return "\n".join(agent.proc.lines)


# --- under upstream's chart ------------------------------------------------------------------

def test_a_restart_under_the_charts_rbac_keeps_the_plugin(cluster: KubeApiServer,
                                                          dirs: NodeDirs, cleanup: Cleanup
                                                          ) -> None:
    cluster.auth.load_rbac(chart.DOCS)
    first = start(cleanup, cluster, dirs, "istio-cni-node-aaaaa", chart_env())
    stopped = terminate(first)
    delete_pod(cluster, first)
    assert stopped.exit_code == 0, log_of(first)[-3000:]
    assert "istio-cni" in (loaded_plugins(dirs.net_dir) or []), log_of(first)[-3000:]
    assert (dirs.bin_dst / "istio-cni").exists()
    assert "shutdown: keeping the plugin" in log_of(first)
    # the next agent takes the plugin over (a new pod, its own token in the kubeconfig)
    second = start(cleanup, cluster, dirs, "istio-cni-node-bbbbb", chart_env())
    wait_for(lambda: kubeconfig_token(dirs) == second.token, 30, "the new pod's token")
    assert plugin_works(cluster, dirs)


@pytest.mark.parametrize("rbac_goes", ["before SIGTERM", "during the decision"])
def test_helm_uninstall_under_the_charts_rbac_removes_the_plugin(
        cluster: KubeApiServer, dirs: NodeDirs, cleanup: Cleanup, rbac_goes: str) -> None:
    cluster.auth.load_rbac(chart.DOCS)
    agent = start(cleanup, cluster, dirs, "istio-cni-node-ccccc", chart_env())
    cluster.delete_daemonset(NAMESPACE, "istio-cni-node")
    if rbac_goes == "before SIGTERM":
        uninstall_release(cluster, chart.DOCS)
        stopped = terminate(agent)
    else:
        reviews = cluster.count("POST", "selfsubjectaccessreviews")
        result: list[Any] = []
        thread = threading.Thread(target=lambda: result.append(terminate(agent)))
        thread.start()
        # the agent watches its grants: the RBAC goes while it does
        wait_for(lambda: cluster.count("POST", "selfsubjectaccessreviews") > reviews, 30,
                 "the agent watching its grants")
        uninstall_release(cluster, chart.DOCS)
        thread.join(60)
        stopped = result[0]
    delete_pod(cluster, agent)
    assert stopped.exit_code == 0, log_of(agent)[-3000:]
    assert loaded_plugins(dirs.net_dir) == ["bridge"], log_of(agent)[-3000:]
    assert not (dirs.bin_dst / "istio-cni").exists()
    assert "shutdown: removing the plugin" in log_of(agent)


def test_permissions_are_learned_once_at_start_in_one_line(cluster: KubeApiServer,
                                                           dirs: NodeDirs, cleanup: Cleanup
                                                           ) -> None:
    cluster.auth.load_rbac(chart.DOCS)
    agent = start(cleanup, cluster, dirs, "istio-cni-node-ddddd", chart_env())
    agent.wait_line("repair controller watching pods")
    lines = [ln for ln in agent.proc.lines if "API permissions, learned at start" in ln]
    assert len(lines) == 1
    line = lines[0]
    assert "granted: get pods/istio-cni-node-ddddd in istio-system, list pods" in line
    assert "not granted: get daemonsets.apps/istio-cni-node in istio-system" in line
    assert "patch nodes/node-life (removing the startup taint)" in line
    # and the gate says once what it will not do, and how to grant it
    gate = [ln for ln in agent.proc.lines if "the startup taint cni.istio.io/not-ready is not "
            "removed: this agent may not patch nodes" in ln]
    assert len(gate) == 1
    terminate(agent)


# --- the grace period -------------------------------------------------------------------------

def test_a_hanging_api_at_sigterm_ends_within_the_grace_period(cluster: KubeApiServer,
                                                                dirs: NodeDirs,
                                                                cleanup: Cleanup) -> None:
    """terminationGracePeriodSeconds: 5 (upstream's chart before 1.28, or any user's) and an API
    that accepts every request and never answers: the kubelet's SIGKILL must find the node
    able to start pods, whatever the agent decided."""
    cluster.auth.load_rbac(chart.DOCS)
    agent = start(cleanup, cluster, dirs, "istio-cni-node-eeeee", chart_env(), grace=5)
    agent.wait_line("repair controller watching pods")
    cluster.hang(".*")
    stopped = terminate(agent)
    cluster.clear_faults()
    delete_pod(cluster, agent)  # the pod object goes: its token is void
    logging.getLogger(__name__).info("exit %s, %.2f s after SIGTERM", stopped.exit_code,
                                     stopped.seconds)
    assert stopped.exit_code is not None, (
        f"SIGKILLed at the grace period:\n{log_of(agent)[-3000:]}")
    assert plugin_works(cluster, dirs), log_of(agent)[-3000:]


# --- a failed rollout -------------------------------------------------------------------------

def _sandbox(cleanup: Cleanup, tmp_path: Path, dirs: NodeDirs) -> Runtime:
    """bridge + host-local as the node's primary CNI (in a node netns), the plugin on the host."""
    if reason := missing_prerequisites():
        pytest.skip(reason)
    node_ns = nsutil.create_netns(cleanup, "icni-life-node").name
    ipam = tmp_path / "ipam"
    primary = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
        {"type": "bridge", "bridge": "icnibr0", "isGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "dataDir": str(ipam),
                  "ranges": [[{"subnet": "10.99.237.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}}]}
    (dirs.net_dir / "10-bridge.conflist").write_text(json.dumps(primary))
    return Runtime(binaries={"istio-cni": plugin_argv()}, node_netns=node_ns)


def _loaded_conflist(dirs: NodeDirs) -> dict[str, Any]:
    for name in sorted(p.name for p in dirs.net_dir.iterdir()):
        if name.endswith(".conflist"):
            return json.loads((dirs.net_dir / name).read_text())
    raise AssertionError("no conflist")


@pytest.mark.root
def test_a_failed_rollout_leaves_pods_starting_redirected_for_the_token_lifetime(
        cluster: KubeApiServer, dirs: NodeDirs, cleanup: Cleanup, tmp_path: Path) -> None:
    runtime = _sandbox(cleanup, tmp_path, dirs)
    docs = documents()
    cluster.auth.load_rbac(docs)
    env = manifest_env()
    lifetime = int(env.get("PLUGIN_TOKEN_SECONDS", "86400"))
    agent = start(cleanup, cluster, dirs, "istio-cni-node-fffff", env)
    # the rollout: the old pod stops (the DaemonSet stays), its pod object goes, the new
    # image is never pulled: no agent on the node from here on
    stopped = terminate(agent)
    delete_pod(cluster, agent)
    assert stopped.exit_code == 0 and "keeping the plugin" in log_of(agent)

    conflist = _loaded_conflist(dirs)
    node = Node(nsutil.create_netns(cleanup, "icni-life-n").name, dirs.run_dir, cluster,
                runtime, conflist, 237, cleanup, prefix="icni-life")

    def add(name: str) -> list[Any]:
        pod = cluster.add_pod(workload(name=name, node=NODE))
        pod_ns = node.new_pod_netns()
        calls = node.add(pod_ns, pod)
        if all(c.status == 0 for c in calls):
            assert any("ISTIO_OUTPUT" in ln for ln in istio_lines(pod_ns)), name
        return calls

    calls = add("app-after-rollout")
    assert [c.status for c in calls] == [0, 0], [c.error for c in calls]
    # the plugin's credential is its own (not the deleted pod's): a token that may only read
    # pods
    token = kubeconfig_token(dirs)
    assert token != agent.token
    plugin = cluster.auth.authenticate(f"Bearer {token}")
    assert plugin.username == "system:serviceaccount:istio-system:istio-cni-plugin"
    assert cluster.auth.allowed(plugin, Attributes("get", "", "pods", "", "shop", "x"))
    for verb, resource, sub in (("patch", "nodes", ""), ("patch", "nodes", "status"),
                                ("list", "pods", ""), ("create", "events", "")):
        assert not cluster.auth.allowed(plugin, Attributes(verb, "", resource, sub, "", NODE))

    # the documented lifetime: the last renewal's token still works an hour before it ends
    cluster.auth.advance_clock(lifetime - 3600 - 60)
    calls = add("app-a-day-later")
    assert [c.status for c in calls] == [0, 0], [c.error for c in calls]
    # past it, the plugin fails closed (the kubelet retries; a new agent writes a new token)
    cluster.auth.advance_clock(3600 + 120)
    calls = add("app-expired")
    assert calls[-1].status != 0 and "401" in calls[-1].error, calls[-1].error
