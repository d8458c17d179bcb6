"""networkpolicy.yaml: schema-valid, selecting the agent's pods, and admitting exactly what
docs/deploy.md says (#21 item 2): the metrics port from the monitoring namespace only, the
health port from no pod at all (the kubelet probes from the node, which a NetworkPolicy never
blocks), and the agent's own egress untouched.

`admits` is Kubernetes' NetworkPolicy semantics for TCP ingress to a selected pod, for the
selector forms the policy may use; the table is who may reach which port.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version

from tests.deploy.manifest import NAMESPACE, REPO, container, documents, find, pod_env

POLICY_FILE = REPO / "networkpolicy.yaml"
[POLICY] = documents(POLICY_FILE)
DOCS = documents()
POD_LABELS = find(DOCS, "DaemonSet", "istio-cni-node")["spec"]["template"]["metadata"]["labels"]
ENV = pod_env(DOCS)
HEALTH, METRICS = int(ENV["READINESS_PORT"]), int(ENV["MONITORING_PORT"])


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    assert set(selector or {}) <= {"matchLabels"}, "only matchLabels is modelled"
    return all(labels.get(k) == v for k, v in (selector or {}).get("matchLabels", {}).items())


def admits(port: int, *, from_node: bool = False, namespace: str = "",
           pod_labels: dict[str, str] | None = None) -> bool:
    """Would `POLICY` let this TCP connection reach an agent pod's `port`?"""
    assert _selects(POLICY["spec"]["podSelector"], POD_LABELS)
    if from_node:
        return True  # a pod's own node is never blocked by a NetworkPolicy
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    for rule in POLICY["spec"].get("ingress", []):
        ports = rule.get("ports")
        if ports is not None and not any(p.get("port") == port and p.get("protocol", "TCP")
                                         == "TCP" for p in ports):
            continue
        peers = rule.get("from")
        if peers is None:
            return True
        for peer in peers:
            assert "ipBlock" not in peer, "an ipBlock may admit pods: not modelled"
            in_ns = (_selects(peer["namespaceSelector"], ns_labels)
                     if "namespaceSelector" in peer else namespace == NAMESPACE)
            if in_ns and ("podSelector" not in peer
                          or _selects(peer["podSelector"], pod_labels or {})):
                return True
    return False


@pytest.mark.parametrize("version", ["1.30.0", latest_version()])
def test_the_policy_is_schema_valid(version: str) -> None:
    kubernetes_validate.validate(POLICY, version, strict=True)


def test_the_policy_selects_the_agent_s_pods_in_its_namespace() -> None:
    meta = POLICY["metadata"]
    assert (POLICY["kind"], meta["name"], meta["namespace"]) == (
        "NetworkPolicy", "istio-cni-node", NAMESPACE)
    assert meta["labels"]["app.kubernetes.io/name"] == "istio-cni"
    assert POLICY["spec"]["podSelector"]["matchLabels"].items() <= POD_LABELS.items()
    ports = {p["containerPort"] for p in container(DOCS)["ports"]}
    assert {HEALTH, METRICS} == ports
    # Ingress only: the agent's connections to the API server and DNS are not restricted
    assert POLICY["spec"]["policyTypes"] == ["Ingress"] and "egress" not in POLICY["spec"]


@pytest.mark.parametrize(("who", "port", "admitted"), [
    ({"from_node": True}, HEALTH, True),                     # the kubelet's probes
    ({"namespace": "monitoring"}, METRICS, True),            # Prometheus
    ({"namespace": "monitoring"}, HEALTH, False),
    ({"namespace": "default"}, METRICS, False),              # any other pod
    ({"namespace": "default"}, HEALTH, False),
    ({"namespace": NAMESPACE, "pod_labels": POD_LABELS}, HEALTH, False),  # another agent
    ({"namespace": NAMESPACE}, METRICS, False),
    ({"namespace": "default"}, 9999, False),
])
def test_who_may_reach_which_port(who: dict[str, Any], port: int, admitted: bool) -> None:
    assert admits(port, **who) is admitted
