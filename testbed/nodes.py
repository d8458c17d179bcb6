"""Nodes as the API stand-in serves them: what a kubelet registers and keeps up to date.

A node made here has the kubelet's own conditions (Ready and the pressure conditions), so a
test can check that the agent's condition leaves them alone, and optional taints, e.g. the
startup taint a node pool registers its nodes with. Pure data; no I/O.
"""

from __future__ import annotations

from typing import Any

Node = dict[str, Any]

READINESS_TAINT = {"key": "cni.istio.io/not-ready", "effect": "NoSchedule"}
"""The startup taint of upstream's docs, as `--register-with-taints` writes it (no value)."""
KUBELET_CONDITION_TYPES = ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")


def make_node(name: str, taints: list[dict[str, str]] | None = None,
              labels: dict[str, str] | None = None) -> Node:
    """A registered, Ready node named `name` with `taints` (none by default)."""
    stamp = "2026-01-01T00:00:00Z"
    conditions = [{"type": kind, "status": "True" if kind == "Ready" else "False",
                   "reason": "KubeletReady" if kind == "Ready" else f"KubeletHasNo{kind}",
                   "message": "kubelet says so", "lastHeartbeatTime": stamp,
                   "lastTransitionTime": stamp} for kind in KUBELET_CONDITION_TYPES]
    node: Node = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                              "kubernetes.io/os": "linux", **(labels or {})}},
        "spec": {"podCIDR": "10.244.0.0/24"},
        "status": {"conditions": conditions,
                   "addresses": [{"type": "InternalIP", "address": "192.0.2.10"},
                                 {"type": "Hostname", "address": name}]},
    }
    if taints:
        node["spec"]["taints"] = [dict(t) for t in taints]
    return node
