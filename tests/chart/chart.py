"""Upstream's `istio-cni` chart as rendered (istio-cni-chart.yaml): the container's command,
args, environment and mounts, resolved the way the kubelet resolves them for one pod."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.deploy.manifest import documents, find

RENDERED = Path(__file__).with_name("istio-cni-chart.yaml")
NAMESPACE = "istio-system"
POD_NAME = "istio-cni-node-x7k2p"
MEMORY_LIMIT = str(512 * 1024 * 1024)
"""limits.memory as GOMEMLIMIT's resourceFieldRef (divisor 1) gives it: the node's allocatable
memory when the chart sets no limit; any number does here."""

DOCS = documents(RENDERED)
POD = find(DOCS, "DaemonSet", "istio-cni-node")["spec"]["template"]["spec"]
CONTAINER: dict[str, Any] = POD["containers"][0]


def argv() -> list[str]:
    """command + args, as the runtime execs them."""
    return [*CONTAINER["command"], *CONTAINER.get("args", [])]


def pod_env(node: str, configmap: dict[str, str] | None = None) -> dict[str, str]:
    """envFrom the ConfigMap (or `configmap` instead), then env (env wins), downward API
    values for a pod on `node`."""
    data = configmap if configmap is not None else find(DOCS, "ConfigMap",
                                                        "istio-cni-config")["data"]
    env = {k: str(v) for k, v in data.items()}
    fields = {"spec.nodeName": node, "metadata.namespace": NAMESPACE,
              "metadata.name": POD_NAME}
    resources = {"limits.memory": MEMORY_LIMIT, "limits.cpu": "2"}
    for item in CONTAINER["env"]:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[item["name"]] = resources[item["valueFrom"]["resourceFieldRef"]["resource"]]
    return env


def configmap_data() -> dict[str, str]:
    return dict(find(DOCS, "ConfigMap", "istio-cni-config")["data"])


def host_mounts() -> dict[str, str]:
    """container path -> host path, for every hostPath mount."""
    volumes = {v["name"]: v for v in POD["volumes"]}
    return {m["mountPath"]: volumes[m["name"]]["hostPath"]["path"]
            for m in CONTAINER["volumeMounts"] if "hostPath" in volumes[m["name"]]}
