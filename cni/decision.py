"""Whether a pod gets redirected, and why: pure functions in upstream's exact order.

`decide_before_lookup` settles the calls that must never touch the API (the agent's own pods,
non-Kubernetes calls, excluded namespaces); `decide` settles the rest from the fetched pod.
Both return a `Decision` whose reason the plugin logs, `explain` prints and repair reuses. The
order of the checks is part of compatibility: when a pod matches several (an excluded namespace
and a sidecar-less pod, say), the reason logged is the first one upstream would have given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from cni.values import parse_go_bool

if TYPE_CHECKING:  # the skip path must not import podinfo (and its dataclasses)
    from cni.podinfo import PodInfo

AGENT_POD_PREFIX = "istio-cni-node-"
INJECT_KEY = "sidecar.istio.io/inject"
STATUS_KEY = "sidecar.istio.io/status"
INTERCEPTION_MODE_KEY = "sidecar.istio.io/interceptionMode"

class Decision(NamedTuple):
    redirect: bool
    reason: str


def is_agent_pod(pod_name: str, pod_namespace: str, agent_namespace: str) -> bool:
    """The istio-cni-node DaemonSet's own pods (not hostNetwork, so they pass through us)."""
    return pod_name.startswith(AGENT_POD_PREFIX) and pod_namespace == agent_namespace


def decide_before_lookup(
    pod_name: str, pod_namespace: str, agent_namespace: str, excluded: frozenset[str]
) -> Decision | None:
    """A skip that needs no API call, or None when the pod must be fetched."""
    if is_agent_pod(pod_name, pod_namespace, agent_namespace):
        return Decision(False, f"istio-cni-node agent pod in namespace {agent_namespace}")
    if not pod_name or not pod_namespace:
        return Decision(False, "not a kubernetes pod (no K8S_POD_NAME/K8S_POD_NAMESPACE)")
    if pod_namespace in excluded:
        return Decision(False, f"namespace {pod_namespace} is excluded")
    return None


def _inject_disabled(pod: PodInfo) -> bool:
    value = pod.annotations.get(INJECT_KEY, "")
    if INJECT_KEY in pod.labels:
        value = pod.labels[INJECT_KEY]
    return value != "" and parse_go_bool(value) is False


def decide(pod: PodInfo) -> Decision:
    """The skip rules of upstream's doAddRun, in order; otherwise redirect."""
    if "istio-init" in pod.containers:
        return Decision(False, "pod has an istio-init container (it programs its own rules)")
    if parse_go_bool(pod.proxy_env.get("DISABLE_ENVOY", "")) is True:
        return Decision(False, "istio-proxy has DISABLE_ENVOY=true")
    if not pod.has_proxy:
        return Decision(False, "pod has no istio-proxy container")
    if pod.proxy_type and pod.proxy_type != "sidecar":
        return Decision(False, f"istio-proxy runs as proxy type {pod.proxy_type!r}, not sidecar")
    if _inject_disabled(pod):
        return Decision(False, f"injection disabled by {INJECT_KEY}")
    if STATUS_KEY not in pod.annotations:
        return Decision(False, f"pod has no {STATUS_KEY} annotation (not injected)")
    if pod.annotations.get(INTERCEPTION_MODE_KEY) == "NONE":
        # Upstream rejects NONE as an invalid mode and fails the ADD, so such a pod never
        # starts; NONE means "no traffic capture", so we honour it (see README compatibility).
        return Decision(False, f"{INTERCEPTION_MODE_KEY} is NONE (no traffic capture)")
    return Decision(True, "sidecar injected; redirecting")
