"""Pods as the API stand-in serves them, built from the companion workloads.

`companions/workloads` holds what istiod's injector writes (the meshed pod) and a plain pod, so
every pod here carries the real annotations and containers. A renamed pod is another pod: it
loses the workload's uid, resourceVersion and creationTimestamp, and the stand-in gives it its
own. Pure data; no I/O but reading the two workload files.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

Pod = dict[str, Any]

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = REPO / "companions" / "workloads"
NODE = "node-a"
"""The node the node agent's tests run as (REPAIR_NODE_NAME)."""


@cache
def _load(fixture: str) -> Pod:
    return json.loads((WORKLOADS / f"{fixture}.json").read_text())


def workload(fixture: str = "meshed-pod", *, name: str | None = None,
             namespace: str | None = None, node: str | None = None,
             annotations: dict[str, str | None] | None = None,
             labels: dict[str, str] | None = None,
             proxy_env: dict[str, str] | None = None) -> Pod:
    """A fresh copy of `companions/workloads/<fixture>.json`, changed as asked.

    An annotation given as None is removed; `proxy_env` is added to istio-proxy's env."""
    pod = copy.deepcopy(_load(fixture))
    meta = pod["metadata"]
    if name is not None:
        for key in ("uid", "resourceVersion", "creationTimestamp"):
            meta.pop(key, None)
        meta["name"] = name
    if namespace is not None:
        meta["namespace"] = namespace
    for key, value in (annotations or {}).items():
        if value is None:
            meta.setdefault("annotations", {}).pop(key, None)
        else:
            meta.setdefault("annotations", {})[key] = value
    if labels:
        meta.setdefault("labels", {}).update(labels)
    if node is not None:
        pod["spec"]["nodeName"] = node
    for container in pod["spec"]["containers"]:
        if proxy_env and container["name"] == "istio-proxy":
            env = container.setdefault("env", [])
            env.extend({"name": k, "value": v} for k, v in proxy_env.items())
    return pod


def validation_status(state: dict[str, Any] | None = None, last: dict[str, Any] | None = None,
                      name: str = "istio-validation") -> dict[str, Any]:
    """An init container's status as the kubelet reports it (`last`: lastState.terminated)."""
    st: dict[str, Any] = {"name": name, "ready": False, "restartCount": 1 if last else 0,
                          "image": "proxyv2", "imageID": "", "state": state or {}}
    st["lastState"] = {"terminated": last} if last else {}
    return st


def terminated(code: int, reason: str = "Error", message: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"exitCode": code, "reason": reason}
    if message:
        out["message"] = message
    return out


BROKEN_WAITING = validation_status({"waiting": {"reason": "CrashLoopBackOff"}},
                                   terminated(126))
"""istio-validation after the CNI race: exit 126, restarting."""
COMPLETED = validation_status({"terminated": terminated(0, "Completed")})
"""istio-validation that passed."""


def make_pod(name: str = "app-1", namespace: str = "shop", node: str = NODE,
             init_status: dict[str, Any] | None = None, ip: str = "10.213.0.9",
             annotations: dict[str, str | None] | None = None, phase: str = "Pending",
             labels: dict[str, str] | None = None) -> Pod:
    """The meshed workload renamed and placed on `node`; `init_status` is istio-validation's
    status, `ip` its podIP."""
    pod = workload("meshed-pod", name=name, namespace=namespace, node=node,
                   annotations=annotations, labels=labels)
    pod["status"] = {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}],
                     "initContainerStatuses": [init_status] if init_status else []}
    return pod
