"""A pod reduced to what the redirect decision needs (upstream's `ExtractPodInfo`).

Pure. Containers and init containers are scanned together, because native sidecars live in
`initContainers`. Only the `istio-proxy` container's literal env values count (`valueFrom` is
ignored, as upstream does), and only its container-level securityContext.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cni.decision import PROXY_CONTAINER


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    containers: frozenset[str] = frozenset()
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    proxy_env: dict[str, str] = field(default_factory=dict)
    proxy_type: str = ""
    proxy_uid: int | None = None
    proxy_gid: int | None = None
    uid: str = ""
    pod_ips: tuple[str, ...] = ()


def _strings(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _proxy_fields(container: dict[str, Any]) -> dict[str, Any]:
    env = {
        e["name"]: e["value"]
        for e in container.get("env") or []
        if isinstance(e, dict) and isinstance(e.get("name"), str)
        and isinstance(e.get("value"), str)
    }
    args = container.get("args") or []
    proxy_type = ""
    if isinstance(args, list) and len(args) >= 2 and args[0] == "proxy":
        proxy_type = str(args[1])
    sc = container.get("securityContext") or {}
    sc = sc if isinstance(sc, dict) else {}
    return {
        "proxy_env": env,
        "proxy_type": proxy_type,
        "proxy_uid": _int_or_none(sc.get("runAsUser")),
        "proxy_gid": _int_or_none(sc.get("runAsGroup")),
    }


def extract_pod_info(pod: dict[str, Any]) -> PodInfo:
    """Reduce a Kubernetes Pod object (as JSON) to a PodInfo."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    all_containers = [
        c for c in list(spec.get("initContainers") or []) + list(spec.get("containers") or [])
        if isinstance(c, dict)
    ]
    names = frozenset(str(c.get("name", "")) for c in all_containers)
    proxy = next((c for c in all_containers if c.get("name") == PROXY_CONTAINER), None)
    ips = tuple(
        str(p.get("ip")) for p in status.get("podIPs") or [] if isinstance(p, dict) and p.get("ip")
    ) or ((str(status["podIP"]),) if status.get("podIP") else ())
    return PodInfo(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        containers=names,
        labels=_strings(meta.get("labels")),
        annotations=_strings(meta.get("annotations")),
        uid=str(meta.get("uid", "")),
        pod_ips=ips,
        **(_proxy_fields(proxy) if proxy else {}),
    )
