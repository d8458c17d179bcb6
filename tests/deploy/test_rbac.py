"""The RBAC in daemonset.yaml is exactly what the code asks the API for: no more, no less.

The verbs are observed, not read from the YAML: each component runs its real code path against
the API stand-in (`KubeApiServer`, which records every request), with the environment the
manifest gives it and the service account token, and each recorded request is mapped to the
(apiGroup, resource, verb) the API server would authorize. Per component:

- the plugin: the agent asks for a token of the plugin's own ServiceAccount (TokenRequest, the
  stand-in with the manifest's RBAC on), the installer writes it into the plugin's kubeconfig,
  then the plugin's pod lookup (`cni.podlookup.ApiPodSource`) reads a pod through it;
- the node daemon: the repair controller in the shipped mode (repair in place) over a broken
  pod, plus the admin commands run in the pod (`explain NS/POD`, `repair --dry-run`), and the
  same controller in delete and label modes for the commented additions;
- the node daemon's readiness gate, with the manifest's settings, over a tainted node from
  not ready to ready and to the condition it publishes on the way out;
- the shutdown decision (`node_daemon.shutdown.decide`) with UNINSTALL_ON_SHUTDOWN=auto, and
  the TokenRequest above: together, the namespaced Role.

Each observed set must equal what that component's role grants. A static check follows: every
role is bound to the DaemonSet's service account, and the namespaced Role names exactly the
DaemonSet the installer looks up.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from admin.cli import cli
from cni.kubeconfig import load_kubeconfig
from cni.podlookup import ApiPodSource, RetryPolicy
from installer import Installer
from installer.config import InstallerConfig
from node_daemon.config import DaemonConfig, NodeGateConfig
from node_daemon.controller import RepairController
from node_daemon.kubeapi import ApiError, NodeApi
from node_daemon.node_gate import READY, NodeGate, Readiness, Reason
from node_daemon.permissions import Permissions
from node_daemon.plugin_token import PluginToken
from node_daemon.selfapi import SelfApi
from node_daemon.shutdown import Clock, ShutdownPolicy, decide
from testbed.cleanup import Cleanup
from testbed.controller import NoNetns, start_controller
from testbed.kubeapi import KubeApiServer, kubernetes_api_client, write_kubeconfig
from testbed.nodes import READINESS_TAINT, make_node
from testbed.pods import BROKEN_WAITING, NODE, make_pod
from testbed.wait import wait_for
from tests.deploy.manifest import (
    NAMESPACE,
    Access,
    access_of,
    commented_rules,
    documents,
    find,
    pod_env,
    rule_accesses,
)

TOKEN = "istio-cni-sa-token"
DOCS = documents()
SA = find(DOCS, "ServiceAccount", "istio-cni")
DAEMONSET = find(DOCS, "DaemonSet", "istio-cni-node")
PRIMARY = {"cniVersion": "1.0.0", "name": "k8s-pod-network",
           "plugins": [{"type": "bridge", "bridge": "cni0"}]}


def observed(api: KubeApiServer, since: int = 0, token: str = TOKEN) -> set[Access]:
    """What was asked with `token`; every request since `since` carried it, or another token
    the caller names by asking for it too."""
    reqs = [r for r in api.requests[since:]
            if {k.lower(): v for k, v in r.headers.items()}.get("authorization")
            == f"Bearer {token}"]
    return {access_of(r.method, r.path, r.query) for r in reqs}


def tokens_used(api: KubeApiServer) -> set[str]:
    return {{k.lower(): v for k, v in r.headers.items()}.get("authorization", "")
            for r in api.requests}


def rules_of(access: set[Access]) -> set[tuple[str, str, str]]:
    return {a.rule for a in access}


def role_rules(kind: str, name: str) -> set[tuple[str, str, str]]:
    return rule_accesses(find(DOCS, kind, name)["rules"])


@pytest.fixture
def api(kube_api_tls: KubeApiServer) -> KubeApiServer:
    kube_api_tls.require_token(TOKEN)
    return kube_api_tls


@pytest.fixture
def node_env(api: KubeApiServer, tmp_path: Path) -> dict[str, str]:
    """The manifest's environment, with its host paths and the kubelet's API variables pointed
    at temp dirs and the stand-in (as the pod would see the real ones)."""
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text(TOKEN)
    assert api.tls is not None
    (sa / "ca.crt").write_bytes(api.tls.ca_pem)
    dirs = {name: tmp_path / name for name in ("net.d", "bin-src", "bin", "run")}
    for d in dirs.values():
        d.mkdir()
    (dirs["net.d"] / "10-bridge.conflist").write_text(json.dumps(PRIMARY))
    (dirs["bin-src"] / "istio-cni").write_bytes(b"#!/bin/sh\n")
    host, port = api.url.removeprefix("https://").rsplit(":", 1)
    env = pod_env(DOCS, NODE)
    env.update(MOUNTED_CNI_NET_DIR=str(dirs["net.d"]), CNI_BIN_SOURCE_DIR=str(dirs["bin-src"]),
               CNI_BIN_TARGET_DIRS=str(dirs["bin"]), CNI_AGENT_RUN_DIR=str(dirs["run"]),
               K8S_SERVICE_ACCOUNT_PATH=str(sa), KUBERNETES_SERVICE_HOST=host,
               KUBERNETES_SERVICE_PORT=port, KUBERNETES_SERVICE_PROTOCOL="https",
               HOST_PROC=str(tmp_path / "no-proc"))
    return env


@pytest.fixture
def controller(api: KubeApiServer, node_env: dict[str, str],
               cleanup: Cleanup) -> Callable[..., RepairController]:
    """Factory: the repair controller as `run` wires it, for the manifest's config (or a mode)."""

    def make(mode: str | None = None) -> RepairController:
        cfg = DaemonConfig.from_env(node_env)
        rc = cfg.repair if mode is None else cfg.repair.with_mode(mode)
        return start_controller(cleanup, kubernetes_api_client(api, TOKEN), rc,
                                finder=NoNetns(), backend=cfg.iptables_backend,
                                watch_timeout=cfg.watch_timeout)

    return make


def _drive_repair(api: KubeApiServer, make: Callable[..., Any], mode: str | None,
                  reason: str, told: int = 1) -> set[Access]:
    """One broken pod through the controller in `mode`, until its action's Event was told
    `told` times (a repeat is a PATCH of the Event's count)."""
    make(mode)
    wait_for(lambda: any(r.query.get("watch", "").lower() == "true" for r in api.requests),
             what="the pod watch")
    api.add_pod(make_pod("broken", init_status=BROKEN_WAITING))
    wait_for(lambda: any(e["reason"] == reason and e["count"] >= told for e in api.events),
             what=f"{reason} event told {told} times")
    return observed(api)


def test_plugin_needs_exactly_the_plugin_role(kube_api_tls: KubeApiServer,
                                              node_env: dict[str, str]) -> None:
    api = kube_api_tls
    api.require_token(None)
    api.auth.load_rbac(DOCS)
    agent_pod = api.add_pod({"metadata": {"name": "istio-cni-node-abcde",
                                          "namespace": NAMESPACE},
                             "spec": {"nodeName": NODE, "serviceAccountName": "istio-cni"}})
    agent_token = api.auth.pod_token(NAMESPACE, "istio-cni", agent_pod)
    api.add_node(make_node(NODE))
    api.add_pod(make_pod("app-1"))
    env = DaemonConfig.from_env(node_env)
    plugin_token = PluginToken(SelfApi(kubernetes_api_client(api, agent_token)), NAMESPACE,
                               env.plugin_service_account, NODE, env.plugin_token_seconds)
    assert plugin_token.renew()
    installer = Installer(InstallerConfig.from_env(node_env), token_source=plugin_token.current)
    installer.install(timeout=5)
    kubeconfig = Path(node_env["CNI_AGENT_RUN_DIR"]) / "istio-cni-kubeconfig"
    source = ApiPodSource(load_kubeconfig(str(kubeconfig)), RetryPolicy(attempts=1, deadline=10))
    try:
        assert source.get_pod("shop", "app-1")["metadata"]["name"] == "app-1"
    finally:
        source.close()
    assert tokens_used(api) == {f"Bearer {agent_token}", f"Bearer {plugin_token.current()}"}
    # the agent asked for the plugin's token, and nothing else
    assert observed(api, token=agent_token) == {
        Access("", "serviceaccounts/token", "create", NAMESPACE, "istio-cni-plugin")}
    # the plugin read the pod, and nothing else, as its own ServiceAccount
    seen = observed(api, token=str(plugin_token.current()))
    assert seen == {Access("", "pods", "get", "shop", "app-1")}
    assert rules_of(seen) == role_rules("ClusterRole", "istio-cni-plugin")
    binding = find(DOCS, "ClusterRoleBinding", "istio-cni-plugin")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "istio-cni-plugin",
                                    "namespace": NAMESPACE}]


def test_daemon_in_the_shipped_mode_needs_exactly_the_repair_role(
        api: KubeApiServer, node_env: dict[str, str], controller: Callable[..., Any],
        tmp_path: Path) -> None:
    assert DaemonConfig.from_env(node_env).repair.mode == "repair", "the ConfigMap's mode"
    # repair in place fails here (no pod netns) and is retried: the same Event, told again
    seen = _drive_repair(api, controller, None, "RepairBrokenPod", told=2)
    # the admin commands, run in the pod with the same service account (explain a pod of
    # another node: one of this node's would be looked for in this machine's netns)
    api.add_pod(make_pod("elsewhere", node="node-b"))
    kubeconfig = write_kubeconfig(tmp_path, api, token=TOKEN)
    runner = CliRunner()
    for args in (["explain", "shop/elsewhere", "-o", "json"], ["repair", "--dry-run"]):
        result = runner.invoke(cli, [*args, "--kubeconfig", str(kubeconfig)], env=node_env)
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    seen = observed(api)
    assert rules_of(seen) == {("", "pods", "list"), ("", "pods", "watch"), ("", "pods", "get"),
                              ("", "events", "create"), ("", "events", "patch")}
    assert rules_of(seen) == role_rules("ClusterRole", "istio-cni-repair")


@pytest.mark.parametrize(("setting", "mode", "reason"), [
    ("REPAIR_DELETE_PODS", "delete", "DeleteBrokenPod"),
    ("REPAIR_LABEL_PODS", "label", "LabelBrokenPod"),
])
def test_other_repair_modes_need_exactly_the_commented_addition(
        api: KubeApiServer, controller: Callable[..., Any], setting: str, mode: str,
        reason: str) -> None:
    seen = rules_of(_drive_repair(api, controller, mode, reason))
    shipped = role_rules("ClusterRole", "istio-cni-repair")
    addition = rule_accesses(commented_rules()[setting])
    # an action that succeeds is told once (no Event PATCH); everything else must be observed
    assert seen | {("", "events", "patch")} == shipped | addition
    assert addition.isdisjoint(shipped)


def test_commented_additions_cover_exactly_the_two_other_modes() -> None:
    assert set(commented_rules()) == {"REPAIR_DELETE_PODS", "REPAIR_LABEL_PODS"}


def test_readiness_gate_needs_exactly_the_node_readiness_role(
        api: KubeApiServer, node_env: dict[str, str], cleanup: Cleanup) -> None:
    cfg = DaemonConfig.from_env(node_env)
    assert cfg.node_gate == NodeGateConfig(condition_type="IstioCNIReady"), "the ConfigMap's"
    api.add_node(make_node(NODE, taints=[READINESS_TAINT]))
    api.add_node(make_node("node-b", taints=[READINESS_TAINT]))
    state = [Readiness(False, Reason.PLUGIN_NOT_INSTALLED, "CNI plugin not installed")]
    gate = NodeGate(NodeApi(kubernetes_api_client(api, TOKEN)), cfg.repair.node_name,
                    cfg.node_gate, lambda: state[0], poll=0.01)
    gate.start()
    cleanup.add("stop the readiness gate", gate.stop)
    wait_for(lambda: gate.synced is not None, what="the condition while not ready")
    state[0] = READY
    wait_for(gate.taint_removed.is_set, what="the taint removed")
    gate.stop()
    gate.publish_final(Readiness(False, Reason.PLUGIN_UNINSTALLED, "uninstalled"))
    seen = observed(api)
    assert rules_of(seen) == {("", "nodes", "get"), ("", "nodes", "patch"),
                              ("", "nodes/status", "patch")}
    assert rules_of(seen) == role_rules("ClusterRole", "istio-cni-node-readiness")
    assert {a.name for a in seen} == {NODE}, "its own node only"
    assert api.get_node("node-b")["spec"]["taints"] == [READINESS_TAINT]


def test_the_shutdown_decision_and_the_plugin_token_need_exactly_the_namespaced_role(
        api: KubeApiServer, node_env: dict[str, str]) -> None:
    cfg = InstallerConfig.from_env(node_env)
    assert cfg.uninstall_on_shutdown == "auto", "the ConfigMap's shutdown policy"
    selfapi = SelfApi(kubernetes_api_client(api, TOKEN))
    policy = ShutdownPolicy(cfg.uninstall_on_shutdown, cfg.pod_namespace, cfg.daemonset_name)
    permissions = Permissions({policy.daemonset_question(): True})
    # the stand-in serves no such DaemonSet: 404 means "being removed"
    assert decide(policy, selfapi, permissions, Clock(time.monotonic() + 10)).keep is False
    daemon = DaemonConfig.from_env(node_env)
    with pytest.raises(ApiError):  # no such ServiceAccount in this stand-in: 404, recorded
        selfapi.request_token(daemon.namespace, daemon.plugin_service_account, 3600, None,
                              (5, 5))
    seen = observed(api)
    role = find(DOCS, "Role", "istio-cni-node")
    assert seen == {Access("apps", "daemonsets", "get", NAMESPACE, "istio-cni-node"),
                    Access("", "serviceaccounts/token", "create", NAMESPACE,
                           "istio-cni-plugin")}
    assert rules_of(seen) == rule_accesses(role["rules"])
    assert role["metadata"]["namespace"] == NAMESPACE == DAEMONSET["metadata"]["namespace"]
    names = {n for rule in role["rules"] for n in rule.get("resourceNames", [])}
    assert names == {a.name for a in seen} == {DAEMONSET["metadata"]["name"],
                                               daemon.plugin_service_account}


def test_every_role_is_bound_to_one_of_the_two_service_accounts() -> None:
    """The agent's roles to the DaemonSet's ServiceAccount; the plugin's role, and nothing
    else, to the plugin's (which no pod runs as)."""
    sa_name = DAEMONSET["spec"]["template"]["spec"]["serviceAccountName"]
    assert sa_name == SA["metadata"]["name"] and SA["metadata"]["namespace"] == NAMESPACE
    plugin_sa = find(DOCS, "ServiceAccount", "istio-cni-plugin")
    assert plugin_sa["automountServiceAccountToken"] is False
    roles = {(d["kind"], d["metadata"]["name"]) for d in DOCS
             if d["kind"] in ("ClusterRole", "Role")}
    bound = set()
    for binding in (d for d in DOCS if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        account = "istio-cni-plugin" if binding["metadata"]["name"] == "istio-cni-plugin" \
            else sa_name
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account,
                                        "namespace": NAMESPACE}]
        ref = binding["roleRef"]
        assert ref["apiGroup"] == "rbac.authorization.k8s.io"
        if binding["kind"] == "RoleBinding":
            assert binding["metadata"]["namespace"] == NAMESPACE
        bound.add((ref["kind"], ref["name"]))
    assert bound == roles == {("ClusterRole", "istio-cni-plugin"),
                              ("ClusterRole", "istio-cni-repair"),
                              ("ClusterRole", "istio-cni-node-readiness"),
                              ("Role", "istio-cni-node")}


def test_everything_granted_is_on_a_short_allow_list() -> None:
    """The static cross-check: a small, readable allow-list of everything granted at all."""
    granted = set()
    for doc in DOCS:
        if doc["kind"] in ("ClusterRole", "Role"):
            granted |= rule_accesses(doc["rules"])
    assert granted == {("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch"),
                       ("", "events", "create"), ("", "events", "patch"),
                       ("apps", "daemonsets", "get"),
                       ("", "serviceaccounts/token", "create"),
                       ("", "nodes", "get"), ("", "nodes", "patch"),
                       ("", "nodes/status", "patch")}


def test_access_mapping_follows_the_api_servers_request_info() -> None:
    assert access_of("GET", "/api/v1/pods", {"watch": "true"}).rule == ("", "pods", "watch")
    assert access_of("GET", "/api/v1/pods", {}).rule == ("", "pods", "list")
    assert access_of("PATCH", "/api/v1/namespaces/a/pods/b/status", {}).rule == (
        "", "pods/status", "patch")
    assert access_of("POST", "/apis/events.k8s.io/v1/namespaces/a/events", {}).rule == (
        "events.k8s.io", "events", "create")
    assert access_of("DELETE", "/api/v1/namespaces/a/pods/b", {}) == Access(
        "", "pods", "delete", "a", "b")

