"""A pod reduced to what the redirect decision needs (upstream's `ExtractPodInfo`).

Pure. Containers and init containers are scanned together, because native sidecars live in
`initContainers`. Only the `istio-proxy` container's literal env values count (`valueFrom` is
ignored, as upstream does), and only its container-level securityContext.

Every field read is checked against the Pod schema first (upstream decodes into typed structs, so
a pod of another shape is an error there too): a value of the wrong JSON type raises `InvalidPod`
naming the field, never an AttributeError deep inside the plugin. Absent and null fields are
Kubernetes' "unset". Values are not judged here (a uid of -5 has the right type); the redirect
spec stage validates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cni.errors import InvalidPod

PROXY_CONTAINER = "istio-proxy"
_SHOWN = 60  # characters of a wrong value quoted in the error


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    containers: frozenset[str] = frozenset()
    has_proxy: bool = False
    """The pod has an `istio-proxy` container (regular or native sidecar)."""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    proxy_env: dict[str, str] = field(default_factory=dict)
    proxy_type: str = ""
    proxy_uid: int | None = None
    proxy_gid: int | None = None
    uid: str = ""
    pod_ips: tuple[str, ...] = ()


_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
          int: "a number", float: "a number", type(None): "null"}


def _wrong(path: str, value: Any, want: str) -> InvalidPod:
    shown = repr(value)
    if len(shown) > _SHOWN:
        shown = shown[:_SHOWN] + "..."
    kind = _KINDS.get(type(value), type(value).__name__)
    return InvalidPod(f"malformed pod: {path} is {kind} ({shown}), not {want}", f"field {path}")


def _obj(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _wrong(path, value, "an object")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _wrong(path, value, "an array")
    return value


def _str(value: Any, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _wrong(path, value, "a string")
    return value


def _int(value: Any, path: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong(path, value, "an integer")
    return value


def _str_map(value: Any, path: str) -> dict[str, str]:
    return {k: _str(v, f"{path}[{k!r}]") for k, v in _obj(value, path).items()}


def _proxy_fields(container: dict[str, Any], path: str) -> dict[str, Any]:
    env: dict[str, str] = {}
    for i, item in enumerate(_list(container.get("env"), f"{path}.env")):
        item = _obj(item, f"{path}.env[{i}]")
        name = _str(item.get("name"), f"{path}.env[{i}].name")
        if "value" in item and item["value"] is not None:
            env[name] = _str(item["value"], f"{path}.env[{i}].value")
    args = [_str(a, f"{path}.args[{i}]")
            for i, a in enumerate(_list(container.get("args"), f"{path}.args"))]
    sc = _obj(container.get("securityContext"), f"{path}.securityContext")
    return {
        "proxy_env": env,
        "proxy_type": args[1] if len(args) >= 2 and args[0] == "proxy" else "",
        "proxy_uid": _int(sc.get("runAsUser"), f"{path}.securityContext.runAsUser"),
        "proxy_gid": _int(sc.get("runAsGroup"), f"{path}.securityContext.runAsGroup"),
    }


def pod_ips(pod: dict[str, Any]) -> tuple[str, ...]:
    """The pod's IPs: `status.podIPs`, else `status.podIP` (older API servers)."""
    status = _obj(_obj(pod, "pod").get("status"), "status")
    ips = []
    for i, entry in enumerate(_list(status.get("podIPs"), "status.podIPs")):
        ip = _str(_obj(entry, f"status.podIPs[{i}]").get("ip"), f"status.podIPs[{i}].ip")
        if ip:
            ips.append(ip)
    single = _str(status.get("podIP"), "status.podIP")
    if ips:
        return tuple(ips)
    return (single,) if single else ()


def extract_pod_info(pod: Any) -> PodInfo:
    """Reduce a Kubernetes Pod object (as JSON) to a PodInfo; `InvalidPod` if it is not one."""
    pod = _obj(pod, "pod")
    meta = _obj(pod.get("metadata"), "metadata")
    spec = _obj(pod.get("spec"), "spec")
    containers: list[tuple[str, dict[str, Any]]] = []
    for key in ("initContainers", "containers"):
        for i, c in enumerate(_list(spec.get(key), f"spec.{key}")):
            containers.append((f"spec.{key}[{i}]", _obj(c, f"spec.{key}[{i}]")))
    names = frozenset(_str(c.get("name"), f"{path}.name") for path, c in containers)
    proxy = next(((p, c) for p, c in containers if c.get("name") == PROXY_CONTAINER), None)
    return PodInfo(
        namespace=_str(meta.get("namespace"), "metadata.namespace"),
        name=_str(meta.get("name"), "metadata.name"),
        containers=names,
        has_proxy=proxy is not None,
        labels=_str_map(meta.get("labels"), "metadata.labels"),
        annotations=_str_map(meta.get("annotations"), "metadata.annotations"),
        uid=_str(meta.get("uid"), "metadata.uid"),
        pod_ips=pod_ips(pod),
        **(_proxy_fields(proxy[1], proxy[0]) if proxy else {}),
    )
