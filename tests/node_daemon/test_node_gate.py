"""The node readiness gate against the API stand-in, over the official client (pure tier).

The gate is driven by a readiness it is handed (`Switch`) or by the real agent's
(`Agent.readiness()`); the stand-in records every request, so "nothing done to other nodes" and
"a node without the taint is left alone" are checked on what was really sent. Faults are
injected server-side (`fail_next`), so the gate meets them over a real socket.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node_daemon.agent import Agent
from node_daemon.config import DaemonConfig, NodeGateConfig, RepairConfig
from node_daemon.kubeapi import ApiError, NodeApi, PodApi
from node_daemon.logsink import LogSink
from node_daemon.node_gate import READY, NodeGate, Readiness, Reason, condition_patch
from testbed.kubeapi import KubeApiServer, kubernetes_api_client
from testbed.nodes import READINESS_TAINT, make_node
from testbed.wait import wait_for
from tests.deploy.manifest import NAMESPACE, REPO, documents
from tests.node_daemon.test_servers import FakeInstaller

NODE, OTHER = "node-a", "node-b"
CONDITION = "IstioCNIReady"
OTHER_TAINT = {"key": "dedicated", "value": "mesh", "effect": "NoSchedule"}
NOT_INSTALLED = Readiness(False, Reason.PLUGIN_NOT_INSTALLED, "CNI plugin not installed")
BOTH = NodeGateConfig(condition_type=CONDITION)
"""The default taint key and a condition: what daemonset.yaml ships."""


class Switch:
    """A readiness a test sets; the gate polls it."""

    def __init__(self, value: Readiness = NOT_INSTALLED) -> None:
        self.value = value

    def __call__(self) -> Readiness:
        return self.value


@pytest.fixture
def nodes(kube_api: KubeApiServer) -> Iterator[NodeApi]:
    api_client = kubernetes_api_client(kube_api)
    yield NodeApi(api_client)
    api_client.close()


@pytest.fixture
def gate(nodes: NodeApi) -> Iterator[Callable[..., NodeGate]]:
    """Factory: a started gate on NODE, polling fast, stopped after the test."""
    started: list[NodeGate] = []

    def make(readiness: Callable[[], Readiness], cfg: NodeGateConfig = BOTH,
             resync: float = 300.0) -> NodeGate:
        g = NodeGate(nodes, NODE, cfg, readiness, poll=0.01, resync=resync,
                     backoff=(0.01, 0.05))
        started.append(g)
        g.start()
        return g

    yield make
    for g in started:
        g.stop()


def condition(api: KubeApiServer, node: str = NODE) -> dict[str, Any] | None:
    conditions = api.get_node(node)["status"]["conditions"]
    return next((c for c in conditions if c["type"] == CONDITION), None)


def condition_is(api: KubeApiServer, status: str, reason: str) -> bool:
    c = condition(api)
    return c is not None and (c["status"], c["reason"]) == (status, reason)


def taints(api: KubeApiServer, node: str = NODE) -> list[dict[str, str]]:
    return api.get_node(node)["spec"].get("taints") or []


def writes(api: KubeApiServer) -> list[str]:
    return [r.path for r in api.requests if r.method != "GET"]


def test_taint_removed_only_once_ready_and_only_the_readiness_taint(
        kube_api: KubeApiServer, gate: Callable[..., NodeGate]) -> None:
    kube_api.add_node(make_node(NODE, taints=[OTHER_TAINT, READINESS_TAINT]))
    switch = Switch()
    g = gate(switch)
    # the gate records what it synced after its patch is visible: wait for both
    wait_for(lambda: condition_is(kube_api, "False", "PluginNotInstalled")
             and g.synced == NOT_INSTALLED, what="condition False while not installed")
    assert taints(kube_api) == [OTHER_TAINT, READINESS_TAINT], "not ready: taint stays"
    assert not g.taint_removed.is_set()
    switch.value = READY
    wait_for(g.taint_removed.is_set, what="the taint removed")
    assert taints(kube_api) == [OTHER_TAINT]
    c = condition(kube_api)
    assert c is not None and (c["status"], c["reason"]) == ("True", "AgentReady")
    assert c["message"] == READY.message
    kubelet = {x["type"]: x["status"] for x in kube_api.get_node(NODE)["status"]["conditions"]}
    assert kubelet["Ready"] == "True" and len(kubelet) == 5, "the kubelet's conditions stay"


def test_condition_flips_on_readiness_loss_and_recovery_and_the_taint_stays_off(
        kube_api: KubeApiServer, gate: Callable[..., NodeGate]) -> None:
    kube_api.add_node(make_node(NODE, taints=[READINESS_TAINT]))
    switch = Switch(READY)
    g = gate(switch)
    wait_for(g.taint_removed.is_set, what="ready")
    first = condition(kube_api)
    assert first is not None and first["status"] == "True"
    for lost in (Readiness(False, Reason.PLUGIN_NOT_INSTALLED, "CNI plugin not installed"),
                 Readiness(False, Reason.CONTROLLER_NOT_SYNCED, "repair controller not synced"),
                 Readiness(False, Reason.SOCKET_MISSING, "plugin log socket missing")):
        switch.value = lost
        wait_for(lambda lost=lost: condition_is(kube_api, "False", lost.reason),
                 what=f"condition False ({lost.reason})")
        assert condition(kube_api)["message"] == lost.message  # type: ignore[index]
        assert taints(kube_api) == [], "the startup taint is never added back"
        switch.value = READY
        wait_for(lambda: condition_is(kube_api, "True", "AgentReady"), what="recovered")
    assert [p for p in writes(kube_api) if p.endswith(f"/nodes/{NODE}")] == [
        f"/api/v1/nodes/{NODE}"], "one taint removal in all"


def test_transition_time_moves_only_when_the_status_flips() -> None:
    node = make_node(NODE)
    down = condition_patch(node, CONDITION, NOT_INSTALLED, "2026-01-01T00:00:01Z")
    assert down is not None
    node["status"]["conditions"] += down["status"]["conditions"]
    assert condition_patch(node, CONDITION, NOT_INSTALLED, "2026-01-01T00:00:02Z") is None
    other = Readiness(False, Reason.CONTROLLER_NOT_SYNCED, "repair controller not synced")
    same_status = condition_patch(node, CONDITION, other, "2026-01-01T00:00:03Z")
    assert same_status is not None
    [c] = same_status["status"]["conditions"]
    assert (c["lastTransitionTime"], c["lastHeartbeatTime"]) == ("2026-01-01T00:00:01Z",
                                                                 "2026-01-01T00:00:03Z")
    [up] = condition_patch(node, CONDITION, READY,
                           "2026-01-01T00:00:04Z")["status"]["conditions"]  # type: ignore[index]
    assert up["lastTransitionTime"] == "2026-01-01T00:00:04Z" and up["status"] == "True"


def test_nothing_is_done_to_other_nodes(kube_api: KubeApiServer,
                                        gate: Callable[..., NodeGate]) -> None:
    kube_api.add_node(make_node(NODE, taints=[READINESS_TAINT]))
    kube_api.add_node(make_node(OTHER, taints=[READINESS_TAINT]))
    before = kube_api.get_node(OTHER)
    g = gate(Switch(READY))
    wait_for(g.taint_removed.is_set, what="ready")
    assert kube_api.get_node(OTHER) == before
    assert {r.path for r in kube_api.requests} == {f"/api/v1/nodes/{NODE}",
                                                   f"/api/v1/nodes/{NODE}/status"}


def test_a_node_without_the_taint_is_left_alone(kube_api: KubeApiServer,
                                                gate: Callable[..., NodeGate]) -> None:
    kube_api.add_node(make_node(NODE, taints=[OTHER_TAINT]))
    before = kube_api.get_node(NODE)
    g = gate(Switch(READY), NodeGateConfig())  # the taint only, as by default
    wait_for(g.taint_removed.is_set, what="the gate's first sync")
    assert writes(kube_api) == [] and kube_api.get_node(NODE) == before


def test_a_taint_with_another_effect_is_left_alone(kube_api: KubeApiServer,
                                                   gate: Callable[..., NodeGate]) -> None:
    kube_api.add_node(make_node(NODE, taints=[READINESS_TAINT]))
    g = gate(Switch(READY), NodeGateConfig(taint_effect="NoExecute"))
    wait_for(g.taint_removed.is_set, what="the gate's first sync")
    assert taints(kube_api) == [READINESS_TAINT] and writes(kube_api) == []


def test_a_taint_added_back_while_ready_goes_on_the_next_resync(
        kube_api: KubeApiServer, gate: Callable[..., NodeGate]) -> None:
    kube_api.add_node(make_node(NODE, taints=[READINESS_TAINT]))
    g = gate(Switch(READY), NodeGateConfig(), resync=0.05)
    wait_for(lambda: taints(kube_api) == [], what="the taint removed")
    kube_api.update_node(NODE, {"spec": {"taints": [READINESS_TAINT, OTHER_TAINT]}})
    wait_for(lambda: taints(kube_api) == [OTHER_TAINT], what="removed again on resync")
    assert g.failures == 0


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", rf"/nodes/{NODE}$", 500),
    ("GET", rf"/nodes/{NODE}$", 403),
    ("PATCH", rf"/nodes/{NODE}/status$", 503),
    ("PATCH", rf"/nodes/{NODE}$", 422),  # taints changed since the read: the test op failed
    ("PATCH", rf"/nodes/{NODE}$", 409),
])
def test_api_errors_are_retried_with_backoff(kube_api: KubeApiServer,
                                             gate: Callable[..., NodeGate], method: str,
                                             path: str, status: int,
                                             caplog: pytest.LogCaptureFixture) -> None:
    kube_api.add_node(make_node(NODE, taints=[READINESS_TAINT]))
    kube_api.fail_next(path, status, count=3, method=method)
    with caplog.at_level(logging.WARNING, logger="node_daemon.node_gate"):
        g = gate(Switch(READY))
        wait_for(g.taint_removed.is_set, what="the taint removed after the failures")
    assert taints(kube_api) == [] and condition_is(kube_api, "True", "AgentReady")
    assert g.failures == 0
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 3 and all(f" {status} " in m for m in retries), retries
    delays = [float(m.rsplit("retrying in ", 1)[1].rstrip("s")) for m in retries]
    assert delays == [0.01, 0.02, 0.04], "doubling from the base"


def test_an_unreachable_api_or_a_missing_node_never_ends_the_gate(
        kube_api: KubeApiServer, gate: Callable[..., NodeGate]) -> None:
    g = gate(Switch(READY))  # no such node yet: 404 on every try
    wait_for(lambda: g.failures >= 5, what="five failed tries")
    assert g._thread is not None and g._thread.is_alive()
    kube_api.add_node(make_node(NODE, taints=[READINESS_TAINT]))
    wait_for(g.taint_removed.is_set, what="the node, once it exists")
    assert g.failures == 0


def test_an_unexpected_error_is_logged_and_retried(
        kube_api: KubeApiServer, nodes: NodeApi, gate: Callable[..., NodeGate], mocker: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    kube_api.add_node(make_node(NODE, taints=[READINESS_TAINT]))
    real = nodes.get_node
    mocker.patch.object(nodes, "get_node", side_effect=[ValueError("bad JSON"), real(NODE),
                                                        real(NODE)])
    with caplog.at_level(logging.WARNING, logger="node_daemon.node_gate"):
        g = gate(Switch(READY))
        wait_for(g.taint_removed.is_set, what="the taint removed after the error")
    assert any("bad JSON" in r.getMessage() and r.exc_info for r in caplog.records)


# --- the agent's own readiness drives it ---------------------------------------------------------

class GatedInstaller(FakeInstaller):
    """Installs only once `release` is set (a primary CNI config that is late to appear)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def install(self, stop: threading.Event | None = None) -> None:
        while not self.release.wait(0.01):
            if stop is not None and stop.is_set():
                raise RuntimeError("stopped before a primary CNI config appeared")
        super().install(stop)


def agent_client(api: KubeApiServer) -> Any:
    """The agent's client as in a cluster with daemonset.yaml and node-policy.yaml applied:
    its pod's bound token (carrying its node), its RBAC, the admission policy in force."""
    api.auth.load_rbac(documents())
    api.admission.load(documents(REPO / "node-policy.yaml"))
    pod = api.add_pod({"metadata": {"name": "istio-cni-node-g", "namespace": NAMESPACE},
                       "spec": {"nodeName": NODE, "serviceAccountName": "istio-cni"}})
    return kubernetes_api_client(api, api.auth.pod_token(NAMESPACE, "istio-cni", pod))


def _agent_cfg(tmp_path: Path) -> DaemonConfig:
    return DaemonConfig(repair=RepairConfig(node_name=NODE, enabled=True), run_dir=tmp_path,
                        health_port=0, monitoring_port=0, bind_address="127.0.0.1",
                        node_gate=BOTH, namespace=NAMESPACE)


def test_the_agent_gates_its_node_from_install_to_uninstall(
        kube_api: KubeApiServer, tmp_path: Path) -> None:
    kube_api.add_node(make_node(NODE, taints=[READINESS_TAINT, OTHER_TAINT]))
    kube_api.add_node(make_node(OTHER, taints=[READINESS_TAINT]))
    other_before = kube_api.get_node(OTHER)
    installer = GatedInstaller()
    agent = Agent(_agent_cfg(tmp_path), installer, PodApi(agent_client(kube_api)))
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(agent.run(stop)))
    thread.start()
    try:
        wait_for(lambda: condition_is(kube_api, "False", "PluginNotInstalled"), 15,
                 "condition False while the install waits")
        assert READINESS_TAINT in taints(kube_api)
        installer.release.set()
        wait_for(lambda: condition_is(kube_api, "True", "AgentReady"), 15, "ready")
        wait_for(lambda: taints(kube_api) == [OTHER_TAINT], 15, "the taint removed")
        installer.ready = False  # someone removed the plugin; the watch loop would put it back
        wait_for(lambda: condition_is(kube_api, "False", "PluginNotInstalled"), 15,
                 "readiness lost")
        installer.ready = True
        wait_for(lambda: condition_is(kube_api, "True", "AgentReady"), 15, "recovered")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert result == [0] and installer.calls[-1] == "uninstall keep=False"
    assert condition_is(kube_api, "False", "PluginUninstalled"), "published on the way out"
    assert taints(kube_api) == [OTHER_TAINT]
    assert kube_api.get_node(OTHER) == other_before
    assert not [r for r in kube_api.requests if "/nodes" in r.path and NODE not in r.path]


def test_a_restart_that_keeps_the_plugin_leaves_the_condition_true(
        kube_api: KubeApiServer, tmp_path: Path) -> None:
    kube_api.add_node(make_node(NODE))
    installer = GatedInstaller()
    installer.release.set()
    agent = Agent(_agent_cfg(tmp_path), installer, PodApi(agent_client(kube_api)))
    stop = threading.Event()
    thread = threading.Thread(target=lambda: agent.run(stop, keep_plugin=True))
    thread.start()
    try:
        wait_for(lambda: condition_is(kube_api, "True", "AgentReady"), 15, "ready")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert installer.calls[-1] == "uninstall keep=True"
    assert condition_is(kube_api, "True", "AgentReady")


def test_the_gate_is_off_without_api_access_or_settings(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    off = DaemonConfig.from_env({"NODE_READINESS_TAINT_KEY": "none", "REPAIR_NODE_NAME": NODE})
    assert not off.node_gate.enabled
    installer = FakeInstaller()
    stop = threading.Event()
    stop.set()
    with caplog.at_level(logging.WARNING, logger="node_daemon.agent"):
        agent = Agent(_agent_cfg(tmp_path), installer, None)
        assert agent.run(stop) == 0
    assert agent.node_gate is None
    assert "node readiness gate: no API access" in caplog.text


@pytest.mark.parametrize("state", ["not installed", "not synced", "watch stale",
                                   "socket missing", "ready"])
def test_the_agent_s_readiness_names_its_reason(tmp_path: Path, state: str) -> None:
    installer = FakeInstaller()
    installer.ready = state != "not installed"
    agent = Agent(_agent_cfg(tmp_path), installer, None)
    controller: Any = type("Controller", (), {
        "synced": state != "not synced", "fresh": state not in ("not synced", "watch stale")})()
    agent.controller = controller
    agent.logsink = LogSink(tmp_path / "log.sock", agent.metrics, check_interval=3600)
    try:
        if state == "socket missing":
            (tmp_path / "log.sock").unlink()
        readiness = agent.readiness()
        expected = {"not installed": Reason.PLUGIN_NOT_INSTALLED,
                    "not synced": Reason.CONTROLLER_NOT_SYNCED,
                    "watch stale": Reason.WATCH_STALE,
                    "socket missing": Reason.SOCKET_MISSING, "ready": Reason.READY}[state]
        assert readiness.reason == expected and readiness.ready == (state == "ready")
        assert agent.ready() == (readiness.ready, "" if readiness.ready else readiness.message)
    finally:
        agent.logsink.stop()


def test_settings_name_the_variable_and_value_when_bad() -> None:
    from node_daemon.config import ConfigError

    for env, words in (({"NODE_READINESS_CONDITION_TYPE": "Ready"}, "the kubelet owns"),
                       ({"NODE_READINESS_TAINT_KEY": "not ready"}, "not a qualified name"),
                       ({"NODE_READINESS_TAINT_EFFECT": "noschedule"}, "is not one of")):
        with pytest.raises(ConfigError, match=words) as err:
            DaemonConfig.from_env(env)
        [(name, value)] = env.items()
        assert str(err.value).startswith(f"{name}={value!r}: ")


def test_api_error_is_the_only_failure_type_the_node_api_raises(kube_api: KubeApiServer,
                                                                nodes: NodeApi) -> None:
    with pytest.raises(ApiError) as err:
        nodes.get_node("nowhere")
    assert err.value.not_found and "get node nowhere" in err.value.message

