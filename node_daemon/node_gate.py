"""The node readiness gate: the agent's own node says whether meshed pods may start on it.

Pods scheduled on a new node before the plugin is installed start without redirection and
wait for repair. Prevention: the node is created with a startup taint (`cni.istio.io/not-ready`
in upstream's docs) and the agent removes it once the plugin is installed and the agent is
ready; and, for admins and node-readiness tooling, the agent publishes a node condition
(e.g. `IstioCNIReady`) that is True while ready and False with the reason otherwise.

One daemon thread polls the agent's readiness (local, cheap) and talks to the API only when it
changed, on a heartbeat (the condition's `lastHeartbeatTime`, every `HEARTBEAT_SECONDS`; the
taint is looked at again then too), or to retry a failure with exponential backoff; an API
error is logged and retried, never raised. It reads and patches only the node it is given,
never lists nodes and never adds a taint: after startup the condition carries readiness. The
taint goes with a JSON patch whose `test` op makes it fail rather than overwrite taints changed
since the read (upstream's untaint controller does the same); the condition goes with a
strategic merge patch on nodes/status, which merges by condition type and so leaves the
kubelet's conditions alone.

The condition cannot outlive the agent as a claim: an agent that is gone stops beating, and a
reader treats a condition whose `lastHeartbeatTime` is older than `STALE_AFTER_SECONDS` as
Unknown (`condition_current`); the agent's last update on removal may never land (its RBAC is
deleted before its pod is stopped). While a new agent starts (its first install not done yet),
a condition an earlier agent left is not overwritten with "not installed" for up to one
heartbeat: a restart that kept the plugin is not reported as a missing plugin.

Before any write, the gate proves that an admission policy confines it (`policy_confines`: a
dry-run write of another field of its own node must be refused); where none does, the gate is
off and says so once, because then this agent's token could rewrite any node.
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
HEARTBEAT_SECONDS = 60.0
"""How often the condition's lastHeartbeatTime is renewed while the agent runs."""
STALE_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS
"""A condition not renewed for this long says nothing: its agent is gone (readers: Unknown)."""
PROBE_LABEL = "istio-cni.istio.io/admission-probe"
"""The label a dry-run write tries to set to prove the admission policy refuses it."""
PROBE_CONDITION = "IstioCNIAdmissionProbe"
"""The condition type a dry-run status write tries to add, likewise."""
PROBE_TIMEOUT = (3.0, 5.0)


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
    starting: bool = False
    """The agent's first install is not done yet: a condition an earlier agent left is kept
    for up to a heartbeat rather than overwritten (a restart that kept the plugin)."""


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


def condition_current(condition: dict[str, Any], now: datetime | None = None,
                      stale_after: float = STALE_AFTER_SECONDS) -> bool:
    """Whether a condition of ours still speaks for a running agent: its lastHeartbeatTime is
    at most `stale_after` seconds old. Readers of `IstioCNIReady` treat it as Unknown else."""
    stamp = condition.get("lastHeartbeatTime")
    if not isinstance(stamp, str):
        return False
    try:
        beat = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return False
    return ((now or datetime.now(UTC)) - beat).total_seconds() <= stale_after


def condition_patch(node: dict[str, Any], kind: str, readiness: Readiness,
                    now: str, heartbeat: bool = False) -> dict[str, Any] | None:
    """The nodes/status patch that makes condition `kind` say `readiness`, or None when it
    already does (and no `heartbeat` is due). `lastTransitionTime` moves only when the status
    flips; `lastHeartbeatTime` is `now` in every patch."""
    status = "True" if readiness.ready else "False"
    current = find_condition(node, kind)
    if current is not None and not heartbeat and (
            current.get("status"), current.get("reason"), current.get("message")) == (
            status, readiness.reason, readiness.message):
        return None
    flipped = current is None or current.get("status") != status
    transition = now if flipped else current.get("lastTransitionTime") or now
    return {"status": {"conditions": [{
        "type": kind, "status": status, "reason": str(readiness.reason),
        "message": readiness.message, "lastHeartbeatTime": now,
        "lastTransitionTime": transition}]}}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProbeApi(Protocol):
    def dry_run_patch_node(self, name: str, patch: dict[str, Any],
                           timeout: tuple[float, float], status: bool = False) -> None: ...


def policy_confines(api: ProbeApi, node: str, cfg: NodeGateConfig) -> bool:
    """Whether an admission policy holds the gate's writes to what it owns: a dry-run write of
    what it never does (a label on its node; another condition) is refused by a policy (the
    shipped ValidatingAdmissionPolicy). False when one is admitted. Raises `ApiError` when the
    API does not say (the gate retries)."""
    probes = []
    if cfg.taint_key:
        probes.append((False, {"metadata": {"labels": {PROBE_LABEL: "true"}}}))
    if cfg.condition_type:
        probes.append((True, {"status": {"conditions": [
            {"type": PROBE_CONDITION, "status": "True", "reason": "Probe"}]}}))
    for status, patch in probes:
        try:
            api.dry_run_patch_node(node, patch, PROBE_TIMEOUT, status=status)
        except ApiError as exc:
            if exc.status in (403, 422) and "ValidatingAdmissionPolicy" in exc.message:
                continue
            raise
        return False
    return True


class NodeGate:
    """Keeps the agent's node's taint and condition in step with `readiness()`."""

    def __init__(self, api: NodeApiLike, node_name: str, cfg: NodeGateConfig,
                 readiness: Callable[[], Readiness], *, poll: float = POLL_SECONDS,
                 resync: float = RESYNC_SECONDS, backoff: tuple[float, float] = (
                     BACKOFF_BASE, BACKOFF_CAP), heartbeat: float = HEARTBEAT_SECONDS,
                 confined: Callable[[], bool] | None = None) -> None:
        """`confined()`: whether an admission policy holds the gate to its own writes
        (`policy_confines`); None: not asked (tests of the gate alone)."""
        self.api, self.node_name, self.cfg = api, node_name, cfg
        self.readiness = readiness
        self.poll, self.resync, self.backoff = poll, resync, backoff
        self.heartbeat = heartbeat
        self.confined = confined
        self.off = threading.Event()
        """Set when the gate turned itself off (no admission policy confines it)."""
        self._started = time.monotonic()
        self._beat = False
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

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, timeout))

    def publish_final(self, readiness: Readiness, timeout: float = 5.0) -> None:
        """One last condition update on the way out (the plugin was uninstalled): one attempt,
        each request within `timeout` seconds (what is left of the grace period)."""
        if not self.cfg.condition_type or self.off.is_set() or timeout <= 0:
            return
        deadline = time.monotonic() + timeout

        def left() -> tuple[float, float]:
            rest = max(0.05, deadline - time.monotonic())
            return (min(3.0, rest), rest)

        try:
            node = self.api.get_node(self.node_name, left())
            patch = condition_patch(node, self.cfg.condition_type, readiness, _now())
            if patch is not None:
                self.api.patch_node_status(self.node_name, patch, left())
        except Exception as exc:  # noqa: BLE001 - shutdown goes on whatever happens here
            log.warning("node %s: could not set condition %s to %s: %s", self.node_name,
                        self.cfg.condition_type, readiness.reason, exc)

    def _confirm_confined(self) -> bool:
        """Ask `confined()` until it answers (backoff between failures); False turns the gate
        off, with one line."""
        while not self._stop.is_set() and self.confined is not None:
            try:
                if self.confined():
                    log.info("node readiness gate: its writes are confined to node %s's "
                             "startup taint and condition by an admission policy",
                             self.node_name)
                    return True
                log.warning(
                    "node readiness gate off: no admission policy confines this agent's node "
                    "writes (a dry-run change of another field of node %s was admitted), so "
                    "its token could rewrite any node. Apply node-policy.yaml (a "
                    "ValidatingAdmissionPolicy, Kubernetes 1.30+) to turn it on; until then "
                    "the taint %s stays on new nodes (istiod's untaint controller can remove "
                    "it) and no condition is published", self.node_name,
                    self.cfg.taint_key or "(none)")
                self.off.set()
                return False
            except Exception as exc:  # noqa: BLE001 - retried, never fatal
                self.failures += 1
                delay = min(self.backoff[1], self.backoff[0] * 2 ** (self.failures - 1))
                log.warning("node %s: readiness gate: cannot tell whether an admission policy "
                            "confines it: %s; retrying in %gs", self.node_name, exc, delay)
                self._stop.wait(delay)
        return self.confined is None

    def _run(self) -> None:
        if not self._confirm_confined():
            return
        self.failures = 0
        due = 0.0  # the next API visit (a heartbeat) even if readiness stays the same
        visit = min(self.resync, self.heartbeat) if self.cfg.condition_type else self.resync
        while not self._stop.is_set():
            try:
                readiness = self.readiness()
                now = time.monotonic()
                if readiness == self.synced and now < due:
                    self._stop.wait(self.poll)
                    continue
                self.sync(readiness, heartbeat=now >= due)
                self.failures = 0
                due = time.monotonic() + visit
            except Exception as exc:  # noqa: BLE001 - the gate must never end the agent
                self.synced = None
                self.failures += 1
                delay = min(self.backoff[1], self.backoff[0] * 2 ** (self.failures - 1))
                log.warning("node %s: readiness gate: %s; retrying in %gs", self.node_name,
                            exc, delay, exc_info=not isinstance(exc, ApiError))
                self._stop.wait(delay)

    def sync(self, readiness: Readiness, heartbeat: bool = False) -> None:
        """Make the node say `readiness`: condition first, then (when ready) the taint; with
        `heartbeat`, renew the condition's lastHeartbeatTime even if it says the same."""
        node = self.api.get_node(self.node_name)
        kind = self.cfg.condition_type
        held = (readiness.starting and find_condition(node, kind) is not None
                and time.monotonic() - self._started < self.heartbeat) if kind else False
        if kind and not held:
            changed = condition_patch(node, kind, readiness, _now()) is not None
            # this agent's first write renews what an earlier agent left
            patch = condition_patch(node, kind, readiness, _now(), heartbeat or not self._beat)
            if patch is not None:
                self.api.patch_node_status(self.node_name, patch)
                self._beat = True
                (log.info if changed else log.debug)(
                    "node %s: condition %s=%s (%s: %s)", self.node_name, kind,
                    "True" if readiness.ready else "False", readiness.reason,
                    readiness.message)
        if readiness.ready and self.cfg.taint_key:
            ops = untaint_ops(node, self.cfg.taint_key, self.cfg.taint_effect)
            if ops is not None:
                self.api.json_patch_node(self.node_name, ops)
                log.info("node %s: removed taint %s", self.node_name, self.cfg.taint_key)
            self.taint_removed.set()
        self.synced = readiness
