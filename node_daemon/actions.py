"""What is done to a broken pod (repair in place, delete, label), each reported in one call.

`Reporter.record` is the single way an action is told: one log line, one Kubernetes Event on
the pod (component `cni-repair`, best effort: a failed event never fails the action) and one
metric increment. A repeat of an Event (same pod UID, reason, type and message) bumps the
`count` and `lastTimestamp` of the one posted before with a PATCH, as client-go's recorder
does, so a pod that fails every few seconds makes one Event, not thousands. Actions return an
`ActionResult` (success | skip | fail) instead of raising, so the controller, the one-shot
`repair` command and the drift check share them; the controller retries `fail` results with
backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from cni.backends import RuleMode
from cni.errors import CNIError
from cni.pipeline import decide_pod
from cni.podinfo import PodInfo
from cni.redirect import redirect_from_pod
from node_daemon.config import RepairConfig
from node_daemon.kubeapi import ApiError
from node_daemon.metrics import Metrics
from node_daemon.netns_finder import NetnsRef, NetnsTable, NetnsUnproven
from node_daemon.pod_rules import RulesOutcome, reconcile_rules

log = logging.getLogger("node_daemon.repair")
COMPONENT = "cni-repair"
EVENT_CACHE_SIZE = 4096
"""Events remembered for deduplication, oldest dropped first (client-go's LRU size)."""
EVENT_REPEAT_WINDOW = 3600.0
"""Seconds after its last occurrence within which a repeat PATCHes the Event posted before:
kube-apiserver's default event TTL (`--event-ttl=1h`), after which it is likely gone."""


class Action(StrEnum):
    """What was done to a pod; the value is upstream's `type` metric label (drift: ours)."""

    REPAIR = "repair"
    DELETE = "delete"
    LABEL = "label"
    DRIFT = "drift"
    NONE = "none"
    """No repair mode is enabled (the one-shot `repair` command's rows only)."""


class Result(StrEnum):
    """How it went; the value is the `result` metric label and the admin commands' text."""

    SUCCESS = "success"
    FAIL = "fail"
    """The controller retries these with backoff."""
    SKIP = "skip"
    DRY_RUN = "dry-run"
    IN_SYNC = "in_sync"
    """Drift check: the rules match the pod's spec."""
    DETECTED = "detected"
    """Drift check: the rules differ and were left alone (DRIFT_REPAIR=false)."""


REASONS = {Action.REPAIR: "RepairBrokenPod", Action.DELETE: "DeleteBrokenPod",
           Action.LABEL: "LabelBrokenPod", Action.DRIFT: "RulesDrift"}


class EventSink(Protocol):
    def create_event(self, namespace: str, event: dict[str, Any]) -> dict[str, Any]: ...

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> None: ...


class PodWriter(EventSink, Protocol):
    def delete_pod(self, namespace: str, name: str, uid: str, resource_version: str) -> None: ...

    def merge_patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None: ...


class NetnsLocator(Protocol):
    """Finds pod netns by UID and IP and holds them (`node_daemon.netns_finder.NetnsFinder`)."""

    limit: int
    """Most IPs one `scan` takes."""

    def scan(self, ips: Iterable[str], pods: Mapping[str, str] | None = None) -> NetnsTable:
        """The netns holding `ips` or named by the cgroups of `pods` (UID → name)."""
        ...


@dataclass(frozen=True)
class ActionResult:
    pod: str
    action: Action
    result: Result
    message: str


def metadata(pod: dict[str, Any]) -> dict[str, Any]:
    """The pod's metadata, or {} when it has none of the right shape: reporting on a malformed
    pod must not fail (the pipeline says what is wrong with it)."""
    meta = pod.get("metadata") if isinstance(pod, dict) else None
    return meta if isinstance(meta, dict) else {}


def pod_uid(pod: dict[str, Any]) -> str:
    """The pod's UID ("" when it has none of the right shape)."""
    uid = metadata(pod).get("uid")
    return uid if isinstance(uid, str) else ""


def pod_key(pod: dict[str, Any]) -> str:
    meta = metadata(pod)
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


@dataclass
class _Posted:
    """An Event we posted: where it is, how often it was told, and when last (clock)."""

    namespace: str
    name: str
    count: int
    last: float


class Reporter:
    """Log + Event + metric, in one call, so no action is ever told one way and not another."""

    def __init__(self, events: EventSink | None, metrics: Metrics, node: str = "",
                 clock: Callable[[], float] = time.monotonic,
                 cache_size: int = EVENT_CACHE_SIZE) -> None:
        self.events = events
        self.metrics = metrics
        self.node = node
        self._clock = clock
        self._cache_size = cache_size
        self._posted: OrderedDict[tuple[str, ...], _Posted] = OrderedDict()
        """(namespace, name, uid, reason, type, message) -> the Event posted for it."""
        self._lock = threading.Lock()

    def forget(self, uid: str) -> None:
        """Drop what is remembered of the Events on pod `uid` (the pod is gone)."""
        with self._lock:
            for key in [k for k in self._posted if k[2] == uid]:
                del self._posted[key]

    def remembered(self) -> int:
        """How many Events are remembered for deduplication (bounded: tests and docs)."""
        with self._lock:
            return len(self._posted)

    def record(self, pod: dict[str, Any], action: Action, result: Result,
               message: str) -> ActionResult:
        key = pod_key(pod)
        level = logging.WARNING if result == Result.FAIL else logging.INFO
        log.log(level, "%s %s: %s: %s", action, result, key, message)
        if self.events is not None and result != Result.SKIP:
            self._post(pod, REASONS[action], message,
                       "Normal" if result == Result.SUCCESS
                       and action in (Action.REPAIR, Action.DRIFT) else "Warning")
        # The metric comes last, so whoever sees it can rely on the event having been sent.
        if action == Action.DRIFT:
            self.metrics.drift.labels(result=result).inc()
        else:
            self.metrics.repaired(action, result)
        return ActionResult(key, action, result, message)

    def _post(self, pod: dict[str, Any], reason: str, message: str, kind: str) -> None:
        meta = metadata(pod)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        message = message[:1024]
        key = tuple(str(meta.get(f) or "") for f in ("namespace", "name", "uid")) + (
            reason, kind, message)
        if self._repeat(key, stamp, reason, pod):
            return
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'pod')}.",
                         "namespace": meta.get("namespace", "")},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta.get("name"),
                               "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": message, "type": kind,
            "source": {"component": COMPONENT, "host": self.node},
            "reportingComponent": COMPONENT, "reportingInstance": self.node,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            created = self.events.create_event(  # type: ignore[union-attr]
                str(meta.get("namespace", "")), event)
        except ApiError as exc:
            log.warning("could not post event %s on %s: %s", reason, pod_key(pod), exc)
            return
        name = metadata(created).get("name")
        if isinstance(name, str) and name:
            with self._lock:
                self._posted[key] = _Posted(str(metadata(created).get("namespace")
                                                or key[0]), name, 1, self._clock())
                while len(self._posted) > self._cache_size:
                    self._posted.popitem(last=False)

    def _repeat(self, key: tuple[str, ...], stamp: str, reason: str,
                pod: dict[str, Any]) -> bool:
        """True when this is a repeat of an Event posted within the window and its count was
        bumped (or the bump failed other than by the Event being gone: then nothing is
        posted, as client-go does); False to post a new one."""
        with self._lock:
            seen = self._posted.get(key)
            if seen is None or self._clock() - seen.last > EVENT_REPEAT_WINDOW:
                self._posted.pop(key, None)
                return False
            count = seen.count + 1
        try:
            self.events.patch_event(  # type: ignore[union-attr]
                seen.namespace, seen.name, {"count": count, "lastTimestamp": stamp})
        except ApiError as exc:
            if exc.not_found:  # expired (event TTL): post it anew
                with self._lock:
                    self._posted.pop(key, None)
                return False
            log.warning("could not update event %s on %s: %s", reason, pod_key(pod), exc)
            return True
        with self._lock:
            seen.count, seen.last = count, self._clock()
            if key in self._posted:
                self._posted.move_to_end(key)
        return True


class Actions:
    """The three modes. `finder` is needed for repair in place only."""

    def __init__(self, cfg: RepairConfig, api: PodWriter | None, reporter: Reporter,
                 finder: NetnsLocator | None = None, backend: str | RuleMode = "auto") -> None:
        self.cfg = cfg
        self.api = api
        self.reporter = reporter
        self.finder = finder
        self.backend = backend
        self._repaired: dict[str, str] = {}
        """UID -> namespace/name of the pods repaired in place, skipped from then on (upstream's
        `repairedPods`, keyed by what identifies a pod: a pod re-created under the same name
        is another pod and is repaired)."""
        self._lock = threading.Lock()

    def act(self, pod: dict[str, Any], mode: str | None = None) -> ActionResult | None:
        mode = mode or self.cfg.mode
        if mode == Action.REPAIR:
            return self.repair(pod)
        if mode == Action.DELETE:
            return self.delete(pod)
        if mode == Action.LABEL:
            return self.label(pod)
        return None

    def forget(self, uid: str) -> None:
        """Pod `uid` is gone: drop all that is remembered of it."""
        with self._lock:
            self._repaired.pop(uid, None)
        self.reporter.forget(uid)

    def repaired(self, uid: str) -> bool:
        """Pod `uid` was repaired in place by this agent (and is skipped)."""
        with self._lock:
            return bool(uid) and uid in self._repaired

    def repair(self, pod: dict[str, Any]) -> ActionResult:
        """Program the plugin's rules into the running pod's netns, found by its IP."""
        key, uid = pod_key(pod), str(metadata(pod).get("uid") or "")
        if self.repaired(uid):  # no metric: it is not an attempt
            return ActionResult(key, Action.REPAIR, Result.SKIP, "already repaired")
        try:
            info, decision = decide_pod(pod)
        except CNIError as exc:
            return self.reporter.record(pod, Action.REPAIR, Result.FAIL,
                                        f"pod detected as broken, but unreadable: {exc.msg}")
        if not decision.redirect:
            return self.reporter.record(pod, Action.REPAIR, Result.SKIP,
                                        f"the plugin would not redirect it: {decision.reason}")
        done = self._in_place(pod, info)
        if isinstance(done, ActionResult):
            return done
        outcome, ref = done
        if uid:
            with self._lock:
                self._repaired[uid] = key
        return self.reporter.record(
            pod, Action.REPAIR, Result.SUCCESS,
            f"pod detected as broken, traffic redirection {outcome.state} in netns of pid "
            f"{ref.pid}; the validation init container passes on its next restart")

    def _in_place(self, pod: dict[str, Any],
                  info: PodInfo) -> tuple[RulesOutcome, NetnsRef] | ActionResult:
        """Find the pod's netns (by its UID in the cgroups, then its IP inside:
        `NetnsTable.choose`) and program it there, through the descriptor the scan held
        (never its pid's path again: the pid may be another pod's by now); the failure's
        `ActionResult` otherwise, with nothing written when no netns is proven the pod's. The
        scan's descriptors are closed on return. (`NetnsReturnFailed` is no `OSError`: it is
        never this pod's failure.)"""
        ips, uid = info.pod_ips, pod_uid(pod)
        scanned = (self.finder.scan(ips, {uid: pod_key(pod)}) if self.finder is not None and ips
                   else NetnsTable())
        with scanned as found:
            try:
                ref = found.choose(uid, ips)
            except NetnsUnproven as exc:
                return self.reporter.record(
                    pod, Action.REPAIR, Result.FAIL,
                    f"pod detected as broken, but not repaired: {exc.msg}")
            if ref is None or ref.held is None:
                return self.reporter.record(
                    pod, Action.REPAIR, Result.FAIL,
                    f"pod detected as broken, but no network namespace on this node has "
                    f"IP {', '.join(ips) or '(none)'}")
            try:
                return (reconcile_rules(ref.held.expecting(ips), redirect_from_pod(info),
                                        self.backend), ref)
            except (CNIError, OSError) as exc:
                msg = exc.msg if isinstance(exc, CNIError) else str(exc)
                return self.reporter.record(
                    pod, Action.REPAIR, Result.FAIL,
                    f"pod detected as broken, but failed to repair: {msg}")

    def delete(self, pod: dict[str, Any]) -> ActionResult:
        meta = metadata(pod)
        assert self.api is not None
        try:
            self.api.delete_pod(meta["namespace"], meta["name"], str(meta.get("uid", "")),
                                str(meta.get("resourceVersion", "")))
        except ApiError as exc:
            return self.reporter.record(pod, Action.DELETE, Result.FAIL,
                                        f"pod detected as broken, but failed to delete: {exc}")
        return self.reporter.record(pod, Action.DELETE, Result.SUCCESS,
                                    "pod detected as broken, deleted")

    def label(self, pod: dict[str, Any]) -> ActionResult:
        meta = metadata(pod)
        if self.cfg.label_key in (meta.get("labels") or {}):
            return self.reporter.record(pod, Action.LABEL, Result.SKIP,
                                        f"already has label {self.cfg.label_key}")
        assert self.api is not None
        # the pod's UID in the patch is a precondition: the API refuses the patch (409) if the
        # name now holds another pod, re-created since this one was read
        patch = {"metadata": {"uid": meta.get("uid"),
                              "labels": {self.cfg.label_key: self.cfg.label_value}}}
        if not meta.get("uid"):
            del patch["metadata"]["uid"]
        try:
            self.api.merge_patch_status(meta["namespace"], meta["name"], patch)
        except ApiError as exc:
            return self.reporter.record(pod, Action.LABEL, Result.FAIL,
                                        f"pod detected as broken, but failed to label: {exc}")
        return self.reporter.record(pod, Action.LABEL, Result.SUCCESS,
                                    "pod detected as broken, labeled")
