"""The node readiness gate: the agent's own node says whether meshed pods may start on it.

Pods scheduled on a new node before the plugin is installed start without redirection and
wait for repair. Prevention: the node is created with a startup taint (`cni.istio.io/not-ready`
in upstream's docs) and the agent removes it once the plugin is installed and the agent is
ready; and, for admins and node-readiness tooling, the agent publishes a node condition
(e.g. `IstioCNIReady`) that is True while ready and False with the reason otherwise.

One daemon thread polls the agent's readiness (local, cheap) and talks to the API only when it
changed, on a slow resync (someone re-added the taint, or removed our condition), or to retry a
failure with exponential backoff; an API error is logged and retried, never raised. It reads
and patches only the node it is given, never lists nodes and never adds a taint: after startup
the condition carries readiness. The taint goes with a JSON patch whose `test` op makes it fail
rather than overwrite taints changed since the read (upstream's untaint controller does the
same); the condition goes with a strategic merge patch on nodes/status, which merges by
condition type and so leaves the kubelet's conditions alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from node_daemon.config import NodeGateConfig
from node_daemon.kubeapi import ApiError

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
"""How often readiness is asked (no API call unless it changed)."""
RESYNC_SECONDS = 300.0
"""How often the node is read again although readiness did not change."""
BACKOFF_BASE, BACKOFF_CAP = 1.0, 300.0
"""Retry delays after failed API calls: doubling from the base, at most the cap."""
FINAL_TIMEOUT = (3.0, 5.0)
"""(connect, read) seconds of the last condition update on shutdown: within the grace period."""


class Reason(StrEnum):
    """Why the agent is (not) ready: the condition's `reason` (CamelCase, as the API wants)."""

    READY = "AgentReady"
    PLUGIN_NOT_INSTALLED = "PluginNotInstalled"
    CONTROLLER_NOT_SYNCED = "RepairControllerNotSynced"
    WATCH_STALE = "PodWatchStale"
    SOCKET_MISSING = "AgentSocketMissing"
    PLUGIN_UNINSTALLED = "PluginUninstalled"
    MODE_NOT_SUPPORTED = "ModeNotSupported"
    CONFIG_NOT_LOADED = "CNIConfigNotLoaded"
    """Installed, but the runtime loads another CNI config (or one without istio-cni)."""
    ANOTHER_AGENT = "AnotherAgentRunning"
    """Another agent holds this node's run dir; this one waits (only /readyz says so)."""


@dataclass(frozen=True)
class Readiness:
    """The agent's readiness: what /readyz answers and what the node condition says."""

    ready: bool
    reason: Reason
    message: str


READY = Readiness(True, Reason.READY, "istio-cni plugin installed and node agent ready")


class NodeApiLike(Protocol):
    """What the gate asks of the API (`kubeapi.NodeApi`)."""

    def get_node(self, name: str, timeout: tuple[float, float] = ...) -> dict[str, Any]: ...

    def json_patch_node(self, name: str, ops: list[dict[str, Any]],
                        timeout: tuple[float, float] = ...) -> None: ...

    def patch_node_status(self, name: str, patch: dict[str, Any],
                          timeout: tuple[float, float] = ...) -> None: ...


def matching_taint(taint: Any, key: str, effect: str) -> bool:
    """Whether `taint` is the readiness taint (`effect` "" matches any effect)."""
    return (isinstance(taint, dict) and taint.get("key") == key
            and (not effect or taint.get("effect") == effect))


def untaint_ops(node: dict[str, Any], key: str, effect: str) -> list[dict[str, Any]] | None:
    """The JSON patch removing the readiness taint from `node`, or None when it has none."""
    taints = (node.get("spec") or {}).get("taints") or []
    kept = [t for t in taints if not matching_taint(t, key, effect)]
    if len(kept) == len(taints):
        return None
    return [{"op": "test", "path": "/spec/taints", "value": taints},
            {"op": "replace", "path": "/spec/taints", "value": kept}]


def find_condition(node: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if isinstance(condition, dict) and condition.get("type") == kind:
            return condition
    return None


def condition_patch(node: dict[str, Any], kind: str, readiness: Readiness,
                    now: str) -> dict[str, Any] | None:
    """The nodes/status patch that makes condition `kind` say `readiness`, or None when it
    already does. `lastTransitionTime` moves only when the status flips."""
    status = "True" if readiness.ready else "False"
    current = find_condition(node, kind)
    if current is not None and (current.get("status"), current.get("reason"),
                                current.get("message")) == (status, readiness.reason,
                                                            readiness.message):
        return None
    flipped = current is None or current.get("status") != status
    transition = now if flipped else current.get("lastTransitionTime") or now
    return {"status": {"conditions": [{
        "type": kind, "status": status, "reason": str(readiness.reason),
        "message": readiness.message, "lastHeartbeatTime": now,
        "lastTransitionTime": transition}]}}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NodeGate:
    """Keeps the agent's node's taint and condition in step with `readiness()`."""

    def __init__(self, api: NodeApiLike, node_name: str, cfg: NodeGateConfig,
                 readiness: Callable[[], Readiness], *, poll: float = POLL_SECONDS,
                 resync: float = RESYNC_SECONDS, backoff: tuple[float, float] = (
                     BACKOFF_BASE, BACKOFF_CAP)) -> None:
        self.api, self.node_name, self.cfg = api, node_name, cfg
        self.readiness = readiness
        self.poll, self.resync, self.backoff = poll, resync, backoff
        self.failures = 0
        """Consecutive failed syncs (0 after a success)."""
        self.synced: Readiness | None = None
        """The readiness the node last fully reflected."""
        self.taint_removed = threading.Event()
        """Set once the taint was removed by us or found absent while ready."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="node-gate", daemon=True)
        self._thread.start()
        what = [f"taint {self.cfg.taint_key}" if self.cfg.taint_key else "",
                f"condition {self.cfg.condition_type}" if self.cfg.condition_type else ""]
        log.info("node readiness gate on node %s: %s", self.node_name,
                 " and ".join(w for w in what if w))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def publish_final(self, readiness: Readiness) -> None:
        """One last condition update on the way out (the plugin was uninstalled): one attempt
        with a short timeout, so shutdown stays within the pod's grace period."""
        if not self.cfg.condition_type:
            return
        try:
            node = self.api.get_node(self.node_name, FINAL_TIMEOUT)
            patch = condition_patch(node, self.cfg.condition_type, readiness, _now())
            if patch is not None:
                self.api.patch_node_status(self.node_name, patch, FINAL_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - shutdown goes on whatever happens here
            log.warning("node %s: could not set condition %s to %s: %s", self.node_name,
                        self.cfg.condition_type, readiness.reason, exc)

    def _run(self) -> None:
        due = 0.0  # the next API visit even if readiness stays the same
        while not self._stop.is_set():
            try:
                readiness = self.readiness()
                if readiness == self.synced and time.monotonic() < due:
                    self._stop.wait(self.poll)
                    continue
                self.sync(readiness)
                self.failures = 0
                due = time.monotonic() + self.resync
            except Exception as exc:  # noqa: BLE001 - the gate must never end the agent
                self.synced = None
                self.failures += 1
                delay = min(self.backoff[1], self.backoff[0] * 2 ** (self.failures - 1))
                log.warning("node %s: readiness gate: %s; retrying in %gs", self.node_name,
                            exc, delay, exc_info=not isinstance(exc, ApiError))
                self._stop.wait(delay)

    def sync(self, readiness: Readiness) -> None:
        """Make the node say `readiness`: condition first, then (when ready) the taint."""
        node = self.api.get_node(self.node_name)
        kind = self.cfg.condition_type
        if kind:
            patch = condition_patch(node, kind, readiness, _now())
            if patch is not None:
                self.api.patch_node_status(self.node_name, patch)
                log.info("node %s: condition %s=%s (%s: %s)", self.node_name, kind,
                         "True" if readiness.ready else "False", readiness.reason,
                         readiness.message)
        if readiness.ready and self.cfg.taint_key:
            ops = untaint_ops(node, self.cfg.taint_key, self.cfg.taint_effect)
            if ops is not None:
                self.api.json_patch_node(self.node_name, ops)
                log.info("node %s: removed taint %s", self.node_name, self.cfg.taint_key)
            self.taint_removed.set()
        self.synced = readiness
