"""daemonset.yaml and namespace.yaml: schema-valid, consistent with what the code reads and needs.

Schema: every document against the Kubernetes OpenAPI schemas that kubernetes-validate ships
(offline), in strict mode (unknown fields are errors, as `kubectl apply` with server-side field
validation), for the oldest version the manifest supports (1.30: `appArmorProfile`) and the
newest one shipped. Semantics: the environment is built as the kubelet would and fed to the
real config parsers; paths, ports, probes, capabilities and the grace period are checked
against the code's own settings.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import all_versions, latest_version

from admin.cli import cli
from cni.decision import decide_before_lookup
from installer.config import InstallerConfig
from node_daemon.config import DaemonConfig, NodeGateConfig
from node_daemon.shutdown import WITHDRAWAL_WINDOW, GraceBudget
from tests.deploy.manifest import (
    MANIFEST,
    NAMESPACE,
    NAMESPACE_MANIFEST,
    REPO,
    container,
    documents,
    env_names,
    find,
    pod_env,
)

DOCS = documents()
NAMESPACE_DOCS = documents(NAMESPACE_MANIFEST)
DS = find(DOCS, "DaemonSet", "istio-cni-node")
POD = DS["spec"]["template"]["spec"]
C = container(DOCS)
OLDEST = "1.30.0"  # securityContext.appArmorProfile is GA from 1.30
VERSIONS = sorted({OLDEST, latest_version()})

# Read by the code but deliberately not in the manifest, each for a reason.
NOT_IN_MANIFEST = {
    "KUBERNETES_SERVICE_HOST": "set by the kubelet in every pod",
    "KUBERNETES_SERVICE_PORT": "set by the kubelet in every pod",
    "KUBERNETES_SERVICE_PROTOCOL": "https, the default, is what in-cluster API access uses",
    "KUBERNETES_NODE_NAME": "only a fallback for REPAIR_NODE_NAME, which the manifest sets",
    "K8S_SERVICE_ACCOUNT_PATH": "the kubelet mounts the token at the default path",
    "KUBE_CA_FILE": "default: the service account's ca.crt",
    "HEALTH_BIND_ADDRESS": "default: all addresses, which the probes and Prometheus need",
    "KUBECONFIG": "in a pod the service account is used",
    "AMBIENT_ENABLED": "ambient mode is refused; its default, false, is what this deploys",
    "ISTIO_OWNED_CNI_CONFIG_FILENAME": "upstream's flag-derived twin of "
                                       "ISTIO_OWNED_CNI_CONF_FILENAME, which the manifest sets",
}


class Recording(dict[str, str]):
    """An environment that remembers every name the code looks up."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)


def names_the_code_reads() -> set[str]:
    env = Recording(pod_env(DOCS))
    InstallerConfig.from_env(env)
    DaemonConfig.from_env(env)
    names = set(env.read) | {"KUBECONFIG"}  # run_daemon: env.get("KUBECONFIG")
    for command in cli.commands.values():  # click options read from the environment
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if isinstance(envvar, str):
                names.add(envvar)
    return names


# --- schema ----------------------------------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("doc", DOCS + NAMESPACE_DOCS,
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_document_is_schema_valid(doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_catches_a_misspelled_field() -> None:
    """The validator is not vacuous: a typo in the pod spec is an error."""
    broken = copy.deepcopy(DS)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, latest_version(), strict=True)
    assert OLDEST in all_versions()


def test_everything_namespaced_is_in_istio_system() -> None:
    kinds = [d["kind"] for d in DOCS]
    assert kinds == ["ConfigMap", "DaemonSet", "ServiceAccount", "ServiceAccount", "ClusterRole",
                     "ClusterRoleBinding", "ClusterRole", "ClusterRoleBinding", "ClusterRole",
                     "ClusterRoleBinding", "Role", "RoleBinding"]
    for d in DOCS:
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == NAMESPACE, d["kind"]


def test_namespace_yaml_is_the_namespace_and_nothing_else() -> None:
    """The first apply needs istio-system; it comes from its own file so that deleting
    daemonset.yaml can never take it (and istiod) away."""
    assert [(d["kind"], d["metadata"]["name"]) for d in NAMESPACE_DOCS] == [
        ("Namespace", NAMESPACE)]


# --- environment -----------------------------------------------------------------------------

def test_every_variable_set_is_one_the_code_reads() -> None:
    unknown = env_names(DOCS) - names_the_code_reads()
    assert not unknown, f"set in daemonset.yaml but read by nothing: {sorted(unknown)}"


def test_every_setting_the_code_reads_is_in_the_manifest_or_explained() -> None:
    missing = names_the_code_reads() - env_names(DOCS) - set(NOT_IN_MANIFEST)
    assert not missing, f"read by the code, absent from daemonset.yaml: {sorted(missing)}"
    assert not set(NOT_IN_MANIFEST) & env_names(DOCS)


def test_every_variable_set_is_documented() -> None:
    docs = (REPO / "docs" / "installer.md").read_text() + (
        REPO / "docs" / "node-daemon.md").read_text()
    undocumented = {n for n in env_names(DOCS) if f"`{n}`" not in docs}
    assert not undocumented


def test_every_configmap_key_has_a_comment() -> None:
    """Each key, or the run of keys it belongs to, sits right under a comment."""
    text = MANIFEST.read_text()
    block = text[text.index("kind: ConfigMap"):]
    block = block[block.index("data:\n") + 6:block.index("\n---")]
    keys = list(find(DOCS, "ConfigMap", "istio-cni-config")["data"])
    previous = ""
    seen = []
    for line in block.splitlines():
        m = re.match(r"  ([A-Z0-9_]+): ", line)
        if m:
            assert previous.lstrip().startswith("#") or re.match(r"  [A-Z0-9_]+: ", previous), \
                f"{m[1]} has no comment"
            seen.append(m[1])
        previous = line
    assert seen == keys


def test_the_configs_build_from_the_manifest_with_the_intended_settings() -> None:
    env = pod_env(DOCS, node="node-7")
    installer = InstallerConfig.from_env(env)
    daemon = DaemonConfig.from_env(env)
    assert daemon.repair.node_name == "node-7"
    assert daemon.repair.mode == "repair"  # upstream's chart default
    assert daemon.repair.enabled and daemon.drift_repair
    assert daemon.node_gate == NodeGateConfig("cni.istio.io/not-ready", "", "IstioCNIReady")
    assert installer.chained and installer.uninstall_on_shutdown == "auto"
    assert installer.exclude_namespaces == ("kube-system",)
    assert installer.pod_namespace == NAMESPACE
    assert installer.daemonset_name == DS["metadata"]["name"]
    # the plugin lets this DaemonSet's pods through without an API call
    own = decide_before_lookup(f"{DS['metadata']['name']}-x7k2p", NAMESPACE,
                               installer.pod_namespace, frozenset(installer.exclude_namespaces))
    assert own is not None and not own.redirect


# --- mounts, ports, probes ---------------------------------------------------------------------

def _mounts() -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """mountPath -> (volumeMount, volume)."""
    volumes = {v["name"]: v for v in POD["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in C["volumeMounts"]}


def test_host_paths_match_the_paths_the_code_uses() -> None:
    env = pod_env(DOCS)
    installer, daemon = InstallerConfig.from_env(env), DaemonConfig.from_env(env)
    mounts = _mounts()
    expected = {  # container path -> (host path, read-only)
        str(installer.mounted_cni_net_dir): ("/etc/cni/net.d", False),
        str(installer.cni_agent_run_dir): ("/var/run/istio-cni", False),
        str(daemon.host_proc): ("/proc", True),
    }
    expected |= {str(d): ("/opt/cni/bin", False) for d in installer.cni_bin_target_dirs}
    host = {path: (vol["hostPath"]["path"], bool(m.get("readOnly")))
            for path, (m, vol) in mounts.items() if "hostPath" in vol}
    assert host == expected
    # the run dir is written into the plugin config: the same path on both sides
    assert installer.cni_agent_run_dir == daemon.run_dir == Path(
        mounts[str(installer.cni_agent_run_dir)][1]["hostPath"]["path"])
    # the source of the binaries is the image, not the host
    assert not any(str(installer.cni_bin_source_dir).startswith(p) for p in mounts)
    assert mounts["/tmp"][1]["emptyDir"]


def test_ports_and_probes_match_the_daemon() -> None:
    daemon = DaemonConfig.from_env(pod_env(DOCS))
    ports = {p["name"]: p["containerPort"] for p in C["ports"]}
    assert ports == {"metrics": daemon.monitoring_port, "health": daemon.health_port}
    assert (daemon.health_port, daemon.monitoring_port) == (8000, 15014)
    assert C["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": daemon.health_port}
    assert C["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": daemon.health_port}
    annotations = DS["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(daemon.monitoring_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_grace_period_covers_the_shutdown() -> None:
    """SIGTERM: the decision (bounded by the grace period the agent reads from its pod) then
    the uninstall. The period leaves the decision room for the grant watch of a cluster where
    the agent may not get its DaemonSet, and the agent reads it (POD_NAME, POD_NAMESPACE)."""
    grace = GraceBudget(float(POD["terminationGracePeriodSeconds"]))
    assert grace.decision_deadline(0.0) >= WITHDRAWAL_WINDOW + 5
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
           for e in container(DOCS)["env"]}
    assert env["POD_NAME"] == "metadata.name" and env["POD_NAMESPACE"] == "metadata.namespace"


# --- the pod: scheduling and privileges ------------------------------------------------------

def test_runs_on_every_linux_node_as_node_critical() -> None:
    labels = DS["spec"]["template"]["metadata"]["labels"]
    assert DS["metadata"]["labels"]["k8s-app"] == labels["k8s-app"] == "istio-cni-node"
    assert DS["spec"]["selector"]["matchLabels"] == {"k8s-app": "istio-cni-node"}
    assert labels["sidecar.istio.io/inject"] == "false"
    assert POD["priorityClassName"] == "system-node-critical"
    assert POD["nodeSelector"] == {"kubernetes.io/os": "linux"}
    tolerations = POD["tolerations"]
    # tolerate every taint with these effects (no key = any key)
    for effect in ("NoSchedule", "NoExecute"):
        assert {"effect": effect, "operator": "Exists"} in tolerations
    assert {"key": "CriticalAddonsOnly", "operator": "Exists"} in tolerations
    assert DS["spec"]["updateStrategy"]["type"] == "RollingUpdate"


ADDED_CAPS = {"NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"}


def test_capabilities_are_exactly_the_four_it_needs() -> None:
    sc = C["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) == ADDED_CAPS
    assert len(sc["capabilities"]["add"]) == len(ADDED_CAPS)
    assert sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert (sc["runAsUser"], sc["runAsGroup"], sc["runAsNonRoot"]) == (0, 0, False)
    assert sc["appArmorProfile"] == {"type": "Unconfined"}
    assert POD["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not POD.get("hostNetwork") and not POD.get("hostPID") and not POD.get("hostIPC")


def test_every_added_capability_is_justified_in_a_comment() -> None:
    lines = MANIFEST.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "add:")
    for cap in ADDED_CAPS:
        at = next(i for i in range(start, len(lines)) if lines[i].strip() == f"- {cap}")
        assert lines[at - 1].strip().startswith("#"), f"{cap} has no comment above it"


def test_the_image_provides_what_the_manifest_runs() -> None:
    """The Containerfile puts the plugin where CNI_BIN_SOURCE_DIR points and the agent on PATH."""
    recipe = (REPO / "Containerfile").read_text()
    source = InstallerConfig.from_env(pod_env(DOCS)).cni_bin_source_dir
    assert re.search(rf"^COPY --from=build /stage{source}/ {source}/$", recipe, re.M)
    assert "cp -a dist/istio-cni-onefile /stage/opt/cni/bin/istio-cni" in recipe
    assert "ln -s /usr/local/lib/istio-cni-node/istio-cni-node /usr/local/bin/istio-cni-node" \
        in recipe
    assert C["command"] == ["istio-cni-node", "run"]
    assert 'ENTRYPOINT ["/usr/local/bin/istio-cni-node", "run"]' in recipe


def test_istiod_values_turn_on_cni_mode_for_both_chart_generations() -> None:
    import yaml

    values = yaml.safe_load((REPO / "companions" / "istiod-values.yaml").read_text())
    # <= 1.23 charts read pilot.cni; >= 1.24 (flattened) read cni and hand it to the injector
    assert values["pilot"]["cni"] == values["cni"] == {"enabled": True, "provider": "default"}
    # the taint the untaint controller removes must name where this DaemonSet runs
    assert values["pilot"]["taint"]["namespace"] == values["taint"]["namespace"] == NAMESPACE


def test_the_image_tag_built_is_the_one_deployed() -> None:
    """build-image.sh reads the version the way pyproject.toml does (cni.__version__)."""
    import subprocess

    from cni import __version__

    env = {k: v for k, v in os.environ.items() if k != "IMAGE"}
    built = subprocess.run(["bash", str(REPO / "scripts" / "build-image.sh"), "--print-image"],
                           capture_output=True, text=True, check=True, env=env).stdout.strip()
    assert built == C["image"] == f"localhost/istio-cni-node:{__version__}"


def test_the_daemonset_comes_before_what_it_runs_with() -> None:
    """kubectl applies and deletes in file order: a delete must stop the DaemonSet before its
    ServiceAccount (token) and RBAC go. The Namespace is not in this file at all."""
    kinds = [d["kind"] for d in DOCS]
    assert "Namespace" not in kinds
    daemonset = kinds.index("DaemonSet")
    for i, doc in enumerate(DOCS):
        if doc["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                           "RoleBinding"):
            assert i > daemonset, f"{doc['kind']} {doc['metadata']['name']} comes first"


def test_every_document_of_the_agent_carries_its_label() -> None:
    """`kubectl delete -f daemonset.yaml` removes only what is ours; the label also lets an
    operator select the agent's objects (`-l app.kubernetes.io/name=istio-cni`)."""
    for doc in DOCS:
        labelled = (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/name")
        assert labelled == "istio-cni", doc["kind"]
    for doc in NAMESPACE_DOCS:
        assert (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/name") is None
