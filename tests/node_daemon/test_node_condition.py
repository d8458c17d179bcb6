"""The node condition cannot outlive the agent as a claim, and a restart that keeps the plugin
is not reported as a missing plugin (the gate against the API stand-in, pure tier).

- A running agent renews the condition's lastHeartbeatTime on every heartbeat; readers treat a
  condition not renewed for `STALE_AFTER_SECONDS` as Unknown (`condition_current`), so an
  agent whose last update never landed (its RBAC deleted first) cannot leave a True behind.
- A new agent that finds a condition an earlier one left does not flip it to
  PluginNotInstalled while its first install runs; its first write renews it. A node with no
  condition still hears why it is not ready.
- Without an admission policy confining it, the gate writes nothing and says so once.

Names added with these behaviours are imported inside the tests, so this module also runs
against code that predates them (and fails there).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from node_daemon.agent import Agent
from node_daemon.config import DaemonConfig
from node_daemon.kubeapi import NodeApi, PodApi
from node_daemon.node_gate import READY, NodeGate, Readiness, Reason
from testbed.kubeapi import KubeApiServer, kubernetes_api_client
from testbed.nodes import READINESS_TAINT, make_node
from testbed.wait import wait_for
from tests.node_daemon.test_node_gate import (
    BOTH,
    CONDITION,
    NODE,
    GatedInstaller,
    agent_client,
    condition,
    condition_is,
    writes,
)


@pytest.fixture
def nodes(kube_api: KubeApiServer) -> Iterator[NodeApi]:
    api_client = kubernetes_api_client(kube_api)
    yield NodeApi(api_client)
    api_client.close()


def status_patches(api: KubeApiServer) -> list[dict[str, Any]]:
    return [r.body for r in api.requests if r.method == "PATCH" and not r.query.get("dryRun")
            and r.path == f"/api/v1/nodes/{NODE}/status"]


def test_the_heartbeat_is_renewed_while_nothing_changes(kube_api: KubeApiServer,
                                                        nodes: NodeApi) -> None:
    """A running agent keeps renewing lastHeartbeatTime; one that is gone stops, and its
    condition reads as stale past the bound, whatever it last said."""
    from node_daemon.node_gate import HEARTBEAT_SECONDS, STALE_AFTER_SECONDS, condition_current

    kube_api.add_node(make_node(NODE))
    gate = NodeGate(nodes, NODE, BOTH, lambda: READY, poll=0.01, heartbeat=0.05,
                    backoff=(0.01, 0.05))
    gate.start()
    try:
        wait_for(lambda: len(status_patches(kube_api)) >= 3, 15, "three heartbeats")
    finally:
        gate.stop()
    bodies = status_patches(kube_api)
    assert all(b["status"]["conditions"][0]["status"] == "True" for b in bodies)
    current = condition(kube_api)
    assert current is not None and condition_current(current)
    later = datetime.now(UTC) + timedelta(seconds=STALE_AFTER_SECONDS + 1)
    assert not condition_current(current, later), "no heartbeat for the bound: stale"
    assert HEARTBEAT_SECONDS * 2 < STALE_AFTER_SECONDS


def test_a_new_agent_keeps_the_condition_it_finds_while_it_installs(
        kube_api: KubeApiServer, tmp_path: Path) -> None:
    """A restart that kept the plugin: the new agent does not flip the condition to
    PluginNotInstalled while its first install runs; it renews it once ready."""
    node = make_node(NODE)
    node["status"]["conditions"].append({
        "type": CONDITION, "status": "True", "reason": "AgentReady",
        "message": READY.message, "lastHeartbeatTime": "2026-01-01T00:00:00Z",
        "lastTransitionTime": "2026-01-01T00:00:00Z"})
    kube_api.add_node(node)
    installer = GatedInstaller()
    cfg = DaemonConfig.from_env({  # as the manifest configures it (POD_NAMESPACE included)
        "REPAIR_NODE_NAME": NODE, "POD_NAMESPACE": "istio-system", "CNI_AGENT_RUN_DIR":
        str(tmp_path), "READINESS_PORT": "0", "MONITORING_PORT": "0",
        "HEALTH_BIND_ADDRESS": "127.0.0.1", "NODE_READINESS_CONDITION_TYPE": CONDITION})
    agent = Agent(cfg, installer, PodApi(agent_client(kube_api)))
    stop = threading.Event()
    thread = threading.Thread(target=lambda: agent.run(stop, keep_plugin=True))
    thread.start()
    try:
        wait_for(lambda: agent.node_gate is not None and agent.node_gate.synced is not None,
                 15, "the gate's first look at the node")
        assert status_patches(kube_api) == [] and condition_is(kube_api, "True", "AgentReady")
        installer.release.set()
        wait_for(lambda: status_patches(kube_api), 15, "the condition renewed once ready")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert [b["status"]["conditions"][0]["status"] for b in status_patches(kube_api)] == [
        "True"]
    current = condition(kube_api)
    assert current is not None and current["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert current["lastHeartbeatTime"] != "2026-01-01T00:00:00Z"


def test_a_fresh_node_still_says_why_while_the_install_waits(kube_api: KubeApiServer,
                                                             nodes: NodeApi) -> None:
    kube_api.add_node(make_node(NODE))
    starting = Readiness(False, Reason.PLUGIN_NOT_INSTALLED, "CNI plugin not installed",
                         starting=True)
    gate = NodeGate(nodes, NODE, BOTH, lambda: starting, poll=0.01, backoff=(0.01, 0.05))
    gate.start()
    try:
        wait_for(lambda: condition_is(kube_api, "False", "PluginNotInstalled"), 15,
                 "the condition on a node that has none")
    finally:
        gate.stop()


def test_without_an_admission_policy_the_gate_is_off_and_writes_nothing(
        kube_api: KubeApiServer, nodes: NodeApi, caplog: pytest.LogCaptureFixture) -> None:
    kube_api.add_node(make_node(NODE, taints=[READINESS_TAINT]))
    gate = NodeGate(nodes, NODE, BOTH, lambda: READY, poll=0.01, confined=lambda: False)
    with caplog.at_level(logging.WARNING, logger="node_daemon.node_gate"):
        gate.start()
        wait_for(gate.off.is_set, 15, "the gate off")
        gate.stop()
    assert writes(kube_api) == []
    lines = [r.message for r in caplog.records if "node readiness gate off" in r.message]
    assert len(lines) == 1 and "node-policy.yaml" in lines[0]
