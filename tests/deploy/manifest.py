"""Reading the manifests for the deployment tests: documents, env, RBAC rules as access sets.

An `Access` is what the API server's authorizer decides on: (apiGroup, resource[/subresource],
verb), plus the namespace and object name for namespaced/named grants. `access_of` turns a
recorded HTTP request into one, following the API server's request-info rules (GET on a
collection is `list`, or `watch` with `?watch=true`; GET on a name is `get`; POST `create`; PUT
`update`; PATCH `patch`; DELETE `delete`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from testbed.kubeapi.auth import attributes

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "daemonset.yaml"
NAMESPACE_MANIFEST = REPO / "namespace.yaml"
"""The istio-system Namespace, applied once with daemonset.yaml and never deleted with it."""
NAMESPACE = "istio-system"


def documents(path: Path = MANIFEST) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected exactly one {kind} {name}, found {len(hits)}"
    return hits[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = find(docs, "DaemonSet", "istio-cni-node")["spec"]["template"]["spec"][
        "containers"]
    assert len(containers) == 1
    return containers[0]


def pod_env(docs: list[dict[str, Any]], node: str = "node-a") -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom the ConfigMap, then env
    (env wins); downward-API values resolved for a pod on `node` in the manifest's namespace."""
    c = container(docs)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        cm = find(docs, "ConfigMap", source["configMapRef"]["name"])
        env.update({k: str(v) for k, v in cm["data"].items()})
    downward = {"spec.nodeName": node, "metadata.namespace": NAMESPACE,
                "metadata.name": "istio-cni-node-abcde"}
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        else:
            env[item["name"]] = downward[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def env_names(docs: list[dict[str, Any]]) -> set[str]:
    c = container(docs)
    names = {item["name"] for item in c.get("env", [])}
    for source in c.get("envFrom", []):
        names |= set(find(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    return names


@dataclass(frozen=True, order=True)
class Access:
    group: str
    resource: str
    """`pods`, or `pods/status` for a subresource, as RBAC writes it."""
    verb: str
    namespace: str | None = None
    name: str | None = None

    @property
    def rule(self) -> tuple[str, str, str]:
        return (self.group, self.resource, self.verb)


def access_of(method: str, path: str, query: dict[str, str]) -> Access:
    """What a request asks, as RBAC reads it: the API stand-in's own reading, so the tests and
    the stand-in's authorizer cannot disagree about a verb."""
    attrs = attributes(method, path, query)
    assert attrs is not None, f"not a resource request: {method} {path}"
    return Access(attrs.group, attrs.resource_path, attrs.verb, attrs.namespace or None,
                  attrs.name or None)


def rule_accesses(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """Every (group, resource, verb) a list of RBAC rules grants (no wildcards allowed)."""
    out: set[tuple[str, str, str]] = set()
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {rule}"
        out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"]
                for v in rule["verbs"]}
    return out


def commented_rules(path: Path = MANIFEST) -> dict[str, list[dict[str, Any]]]:
    """The commented-out extra rules for other repair modes, keyed by their REPAIR_* setting.

    Each block starts with a comment line `# --- REPAIR_X_PODS=true ...` and runs to the next
    `# ---` line; its commented YAML is uncommented and parsed.
    """
    blocks: dict[str, list[str]] = {}
    current: str | None = None
    for line in path.read_text().splitlines():
        head = re.match(r"\s*# --- (\w+)=true\b", line)
        if head:
            current = head[1]
            blocks[current] = []
        elif re.match(r"\s*# ---", line):
            current = None
        elif current is not None:
            blocks[current].append(re.sub(r"^(\s*)# ?", r"\1", line, count=1))
    return {k: yaml.safe_load("\n".join(v)) for k, v in blocks.items()}
