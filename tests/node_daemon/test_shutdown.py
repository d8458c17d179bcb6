"""The shutdown decision and its budget, against the API stand-in with real RBAC (pure tier).

The agent's token is its pod's, bound to that pod; the RBAC is daemonset.yaml's (which grants
`get daemonsets`) or upstream's chart's (which does not). Each case sets up what a cluster does
(a restart leaves everything; `helm uninstall` deletes the DaemonSet, then the RBAC and the
ServiceAccount; a foreground delete leaves a deletionTimestamp) and checks the verdict:
only the absence of the DaemonSet (or its deletionTimestamp), a 401, or a grant withdrawn since
start mean "going away"; a 403 on something never granted means nothing; no answer in time is
"remove" (the safe side), always by the deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from node_daemon.permissions import Need, Permissions, review
from node_daemon.selfapi import AccessQuestion, SelfApi
from node_daemon.shutdown import (
    DEFAULT_GRACE_SECONDS,
    Clock,
    GraceBudget,
    ShutdownPolicy,
    decide,
    read_grace,
)
from testbed.agentpod import NAMESPACE, uninstall_release
from testbed.kubeapi import KubeApiServer, kubernetes_api_client
from tests.chart import chart
from tests.deploy.manifest import documents

POLICY = ShutdownPolicy("auto", NAMESPACE, "istio-cni-node")
POD = "istio-cni-node-x1"
WINDOW = 1.0


@pytest.fixture
def api(kube_api: KubeApiServer) -> KubeApiServer:
    kube_api.add_daemonset(NAMESPACE, "istio-cni-node")
    return kube_api


def agent_api(api: KubeApiServer, docs: list[dict[str, Any]], grace: int | None = 30
              ) -> Iterator[SelfApi]:
    api.auth.load_rbac(docs)
    spec: dict[str, Any] = {"nodeName": "node-a", "serviceAccountName": "istio-cni"}
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    pod = api.add_pod({"metadata": {"name": POD, "namespace": NAMESPACE}, "spec": spec})
    client = kubernetes_api_client(api, api.auth.pod_token(NAMESPACE, "istio-cni", pod))
    yield SelfApi(client)
    client.close()


@pytest.fixture
def ours(api: KubeApiServer) -> Iterator[SelfApi]:
    yield from agent_api(api, documents())


@pytest.fixture
def charts(api: KubeApiServer) -> Iterator[SelfApi]:
    yield from agent_api(api, chart.DOCS)


def learned(selfapi: SelfApi) -> Permissions:
    return review(selfapi, [Need(POLICY.daemonset_question(), "shutdown"),
                            Need(AccessQuestion("get", "pods"), "repair"),
                            Need(AccessQuestion("list", "pods"), "repair")])


def verdict(selfapi: SelfApi, permissions: Permissions, seconds: float = 20.0) -> tuple[bool, str]:
    decision = decide(POLICY, selfapi, permissions, Clock(time.monotonic() + seconds), WINDOW)
    return decision.keep, decision.reason


# --- with `get daemonsets` (daemonset.yaml) ----------------------------------------------------

def test_a_restart_keeps_the_plugin_at_once(api: KubeApiServer, ours: SelfApi) -> None:
    permissions = learned(ours)
    assert permissions.allows(POLICY.daemonset_question()) is True
    start = time.monotonic()
    keep, reason = verdict(ours, permissions)
    assert keep and "stays" in reason
    assert time.monotonic() - start < WINDOW, "no waiting when the DaemonSet can be asked"


@pytest.mark.parametrize("what", ["gone", "being deleted", "its ServiceAccount deleted",
                                  "its Role deleted"])
def test_the_install_going_away_removes_the_plugin(api: KubeApiServer, ours: SelfApi,
                                                   what: str) -> None:
    permissions = learned(ours)
    if what == "gone":
        api.delete_daemonset(NAMESPACE, "istio-cni-node")
    elif what == "being deleted":
        api.delete_daemonset(NAMESPACE, "istio-cni-node", foreground=True)
    elif what == "its ServiceAccount deleted":
        api.auth.delete("ServiceAccount", "istio-cni", NAMESPACE)
    else:
        api.auth.delete("RoleBinding", "istio-cni-node", NAMESPACE)
    keep, reason = verdict(ours, permissions)
    assert not keep, reason
    assert not reason.startswith("cannot tell"), reason


# --- without it (upstream's chart) ---------------------------------------------------------------

def test_a_403_on_what_was_never_granted_is_not_an_uninstall(api: KubeApiServer,
                                                             charts: SelfApi) -> None:
    permissions = learned(charts)
    assert permissions.allows(POLICY.daemonset_question()) is False
    keep, reason = verdict(charts, permissions)
    assert keep, reason
    assert "still held" in reason


def test_helm_uninstall_under_the_chart_removes_the_plugin(api: KubeApiServer,
                                                           charts: SelfApi) -> None:
    permissions = learned(charts)
    api.delete_daemonset(NAMESPACE, "istio-cni-node")
    uninstall_release(api, chart.DOCS)
    keep, reason = verdict(charts, permissions)
    assert not keep and "ServiceAccount is gone" in reason, reason


def test_a_binding_withdrawn_during_the_window_removes_the_plugin(api: KubeApiServer,
                                                                  charts: SelfApi) -> None:
    permissions = learned(charts)
    api.auth.delete("ClusterRoleBinding", "istio-cni-repair-rolebinding")
    api.auth.delete("ClusterRoleBinding", "istio-cni")
    keep, reason = verdict(charts, permissions)
    assert not keep and "withdrawn" in reason, reason


# --- no answer ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["hang", "500"])
def test_no_answer_in_time_removes_the_plugin_by_the_deadline(
        api: KubeApiServer, ours: SelfApi, fault: str, caplog: pytest.LogCaptureFixture
        ) -> None:
    permissions = learned(ours)
    if fault == "hang":
        api.hang(".*")
    else:
        api.fail_next(".*", 500, count=10_000)
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="node_daemon.shutdown"):
        keep, reason = verdict(ours, permissions, seconds=2.0)
    assert not keep and reason.startswith("cannot tell"), reason
    # a client retrying a timed-out GET (urllib3 does, 3 times) would take 8 s
    assert time.monotonic() - start < 2.0 + 4.0, "bounded by the deadline"
    assert "removing the plugin: cannot tell" in caplog.text


def test_explicit_policies_ask_nothing(api: KubeApiServer, ours: SelfApi) -> None:
    before = len(api.requests)
    for setting, keep in (("true", False), ("false", True)):
        policy = ShutdownPolicy(setting, NAMESPACE, "istio-cni-node")
        assert decide(policy, ours, Permissions(), Clock(time.monotonic() + 5)).keep is keep
    assert len(api.requests) == before


# --- the budget ---------------------------------------------------------------------------------

@pytest.mark.parametrize("grace", [5, 30, 0])
def test_the_grace_period_is_read_from_the_agent_s_own_pod(api: KubeApiServer, grace: int
                                                           ) -> None:
    for selfapi in agent_api(api, documents(), grace=grace):
        budget = read_grace(selfapi, NAMESPACE, POD)
        assert budget.seconds == grace and budget.source == f"pod {NAMESPACE}/{POD}"
        assert budget.deadline(100.0) <= 100.0 + grace
        assert budget.decision_deadline(100.0) < budget.deadline(100.0)


def test_without_the_pod_the_chart_s_default_is_used(api: KubeApiServer, ours: SelfApi,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="node_daemon.shutdown"):
        budget = read_grace(ours, NAMESPACE, "no-such-pod")
        assert read_grace(None, NAMESPACE, POD) == GraceBudget()
    assert budget.seconds == DEFAULT_GRACE_SECONDS == 30
    assert "taken as 30s (the chart's default)" in caplog.text
