"""node-policy.yaml, evaluated: the agent's token writes only its own node's startup taint and
condition, and the readiness gate's own writes pass.

The API stand-in loads the real RBAC of daemonset.yaml and the real ValidatingAdmissionPolicy
of node-policy.yaml, whose CEL it evaluates with cel-python as kube-apiserver does with cel-go,
over the same `object`, `oldObject`, `request` and `variables`. The agent's token is the one
the kubelet projects into its pod on node-a (bound to that pod, with the node's name in its
user info extra, Kubernetes 1.30+). Every write in the issue's list (another node; a label, a
taint, a cordon on its own; a status with another address, Ready=False, no allocatable pods)
goes over HTTP with that token and must be refused; the gate's real writes must pass; and the
gate proves the policy before its first write (`policy_confines`), staying off without it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from node_daemon.config import NodeGateConfig
from node_daemon.kubeapi import ApiError, NodeApi
from node_daemon.node_gate import READY, NodeGate, policy_confines
from node_daemon.selfapi import SelfApi
from testbed.kubeapi import KubeApiServer, kubernetes_api_client
from testbed.nodes import READINESS_TAINT, make_node
from testbed.wait import wait_for
from tests.deploy.manifest import NAMESPACE, REPO, documents

pytest.importorskip("celpy", reason="cel-python is not installed (pip install -e '.[dev]')")

POLICY = documents(REPO / "node-policy.yaml")
NODE, OTHER = "node-a", "node-b"
CONDITION = "IstioCNIReady"
OTHER_TAINT = {"key": "dedicated", "value": "mesh", "effect": "NoSchedule"}
DENIED = "ValidatingAdmissionPolicy 'istio-cni-node-writes'"


@pytest.fixture
def api(kube_api: KubeApiServer) -> KubeApiServer:
    kube_api.auth.load_rbac(documents())
    kube_api.admission.load(POLICY)
    for name in (NODE, OTHER):
        kube_api.add_node(make_node(name, taints=[READINESS_TAINT, OTHER_TAINT]))
    return kube_api


def agent_token(api: KubeApiServer, node: str = NODE) -> str:
    pod = api.add_pod({"metadata": {"name": f"istio-cni-node-{node}", "namespace": NAMESPACE},
                       "spec": {"nodeName": node, "serviceAccountName": "istio-cni"}})
    return api.auth.pod_token(NAMESPACE, "istio-cni", pod)


@pytest.fixture
def nodes(api: KubeApiServer) -> Iterator[NodeApi]:
    client = kubernetes_api_client(api, agent_token(api))
    yield NodeApi(client)
    client.close()


def refused(write: Any) -> str:
    with pytest.raises(ApiError) as denied:
        write()
    assert denied.value.status == 403, denied.value.message
    return denied.value.message


@pytest.mark.parametrize("doc", POLICY, ids=lambda d: d["kind"])
@pytest.mark.parametrize("version", ["1.30.0", latest_version()])
def test_the_policy_is_schema_valid(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_gate_s_own_writes_pass(api: KubeApiServer, nodes: NodeApi) -> None:
    gate = NodeGate(nodes, NODE, NodeGateConfig(condition_type=CONDITION), lambda: READY,
                    poll=0.01, backoff=(0.01, 0.05))
    gate.start()
    try:
        wait_for(gate.taint_removed.is_set, 15, "the taint removed")
        wait_for(lambda: gate.synced == READY, 15, "the condition set")
        gate.sync(READY, heartbeat=True)  # a heartbeat renews the condition: allowed too
    finally:
        gate.stop()
    node = api.get_node(NODE)
    assert node["spec"]["taints"] == [OTHER_TAINT]
    assert [c["status"] for c in node["status"]["conditions"] if c["type"] == CONDITION] == [
        "True"]
    assert api.get_node(OTHER)["spec"]["taints"] == [READINESS_TAINT, OTHER_TAINT]


def test_another_node_is_refused(api: KubeApiServer, nodes: NodeApi) -> None:
    before = api.get_node(OTHER)
    ops = [{"op": "replace", "path": "/spec/taints", "value": [OTHER_TAINT]}]
    message = refused(lambda: nodes.json_patch_node(OTHER, ops))
    assert DENIED in message and "only the node its own pod runs on" in message
    refused(lambda: nodes.patch_node_status(OTHER, {"status": {"conditions": [
        {"type": CONDITION, "status": "True", "reason": "AgentReady"}]}}))
    assert api.get_node(OTHER) == before


@pytest.mark.parametrize("what, ops", [
    ("a control-plane label", [{"op": "add", "path": "/metadata/labels/node-role.kubernetes.io~1"
                                "control-plane", "value": ""}]),
    ("a NoExecute taint", [{"op": "add", "path": "/spec/taints/-",
                            "value": {"key": "evict", "effect": "NoExecute"}}]),
    ("another taint removed", [{"op": "replace", "path": "/spec/taints",
                                "value": [READINESS_TAINT]}]),
    ("a cordon", [{"op": "add", "path": "/spec/unschedulable", "value": True}]),
    ("an annotation", [{"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}]),
    ("the pod CIDR", [{"op": "replace", "path": "/spec/podCIDR", "value": "10.9.0.0/24"}]),
])
def test_other_fields_of_its_own_node_are_refused(api: KubeApiServer, nodes: NodeApi,
                                                  what: str, ops: list[dict[str, Any]]) -> None:
    before = api.get_node(NODE)
    assert DENIED in refused(lambda: nodes.json_patch_node(NODE, ops)), what
    assert api.get_node(NODE) == before


@pytest.mark.parametrize("what, patch", [
    ("another InternalIP", {"status": {"addresses": [
        {"type": "InternalIP", "address": "203.0.113.66"}]}}),
    ("Ready=False", {"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "Forged"}]}}),
    ("no allocatable pods", {"status": {"allocatable": {"pods": "0"}}}),
    ("a condition of another type", {"status": {"conditions": [
        {"type": "NetworkUnavailable", "status": "True", "reason": "Forged"}]}}),
])
def test_other_status_fields_are_refused(api: KubeApiServer, nodes: NodeApi, what: str,
                                         patch: dict[str, Any]) -> None:
    before = api.get_node(NODE)
    message = refused(lambda: nodes.patch_node_status(NODE, patch))
    assert DENIED in message and "only set its own condition" in message, what
    assert api.get_node(NODE) == before


def test_a_token_without_its_node_is_refused(api: KubeApiServer) -> None:
    """A token from before Kubernetes 1.30 (no node name in its user info) writes nothing."""
    pod = api.add_pod({"metadata": {"name": "istio-cni-node-old", "namespace": NAMESPACE},
                       "spec": {"serviceAccountName": "istio-cni"}})
    client = kubernetes_api_client(api, api.auth.pod_token(NAMESPACE, "istio-cni", pod))
    try:
        ops = [{"op": "replace", "path": "/spec/taints", "value": [OTHER_TAINT]}]
        refused(lambda: NodeApi(client).json_patch_node(NODE, ops))
    finally:
        client.close()


def test_the_gate_proves_the_policy_and_is_off_without_it(kube_api: KubeApiServer,
                                                          api: KubeApiServer) -> None:
    client = kubernetes_api_client(api, agent_token(api))
    try:
        cfg = NodeGateConfig(condition_type=CONDITION)
        before = copy.deepcopy(api.get_node(NODE))
        assert policy_confines(SelfApi(client), NODE, cfg) is True
        api.admission.policies.clear()  # the policy not applied
        assert policy_confines(SelfApi(client), NODE, cfg) is False
        assert policy_confines(SelfApi(client), NODE, NodeGateConfig()) is False  # taint only
        assert api.get_node(NODE) == before, "dry runs store nothing"
    finally:
        client.close()


def test_the_manifest_points_at_the_policy() -> None:
    text = (REPO / "daemonset.yaml").read_text()
    assert "node-policy.yaml" in text
    names = {d["metadata"]["name"] for d in POLICY}
    assert names == {"istio-cni-node-writes"}
    assert Path(REPO / "node-policy.yaml").read_text().count("istio-system:istio-cni'") == 1
