"""The repair controller: a list+watch of this node's pods, a cache, a queue and one worker.

Informer semantics without client-go: LIST, then WATCH from the list's resourceVersion with
bookmarks; a dropped stream resumes from the last resourceVersion seen (event or bookmark); a
`410 Gone` (compacted history) relists and diffs against the cache, so no pod is missed and
deleted pods are noticed. Every pod change enqueues the pod's key *and UID*; the worker
reconciles the cached pod, and failed actions are retried with client-go's backoff, at most 5
attempts (upstream's `WithMaxAttempts(5)`).

The cache is proof of nothing by itself. It is current only while the watch hears from the API
(an event, a bookmark: kube-apiserver sends one about once a minute; or a relist) within
`stale_after` seconds: a stream silent for two thirds of that is broken off and replaced by a
relist, and past the bound the informer is not `fresh()`, which the agent's readiness and
metrics report and its served ADD obeys (`current()` is then None). Before an action on a pod
(repair in place, delete, label) the pod is read once from the API and must still be the same
UID; a drift pass checks the pods of one LIST made for it, not the cache.

Identity is the UID wherever a pod is remembered (queue items, backoff, the repaired and
dropped sets, the reporter's event cache), and what is remembered of a pod is forgotten when a
change of its key shows that UID gone (a DELETED event, or a relist that finds the key gone or
held by another UID), so memory is bounded by the pods that exist.

One worker thread does all netns work (repair in place, drift checks), because `setns` is per
thread and two visits to one netns must not interleave.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from node_daemon.actions import Actions, Result, metadata, pod_key
from node_daemon.broken import diagnose
from node_daemon.config import RepairConfig
from node_daemon.drift import DriftChecker
from node_daemon.kubeapi import ApiError, PodList
from node_daemon.metrics import WatchState
from node_daemon.workqueue import WorkQueue

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 5
STALE_AFTER = 150.0
"""Seconds without word from the API after which the watch cache is no source: two and a half
of kube-apiserver's bookmark periods (about a minute)."""
RELIST_FRACTION = 2 / 3
"""A watch silent for this fraction of `stale_after` is broken off and a relist made, so an API
that is there but sends no bookmarks keeps the cache fresh with a LIST now and then."""
DRIFT_ALL = ("drift", "*", "")

Item = tuple[str, str, str]
"""A queue item: ("pod", "namespace/name", uid) or `DRIFT_ALL`."""


class PodLister(Protocol):
    def list_pods(self, field_selector: str = "", label_selector: str = "") -> PodList: ...

    def watch_pods(self, resource_version: str, timeout_seconds: int, field_selector: str = "",
                   label_selector: str = "", silence: float | None = None) -> Any: ...


class PodReader(PodLister, Protocol):
    def get_pod(self, namespace: str, name: str) -> dict[str, Any]: ...


def pod_uid(pod: dict[str, Any] | None) -> str:
    return str(metadata(pod or {}).get("uid") or "")


class PodInformer:
    """Keeps `cache` equal to the API's view of the selected pods; calls `on_change(key, uid)`
    for every pod that changed, appeared or went (a key whose UID changed: both UIDs)."""

    def __init__(self, api: PodLister, field_selector: str, label_selector: str,
                 on_change: Callable[[str, str], None], watch_timeout: int = 300,
                 retry_cap: float = 30.0, stale_after: float = STALE_AFTER,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.field_selector = field_selector
        self.label_selector = label_selector
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.retry_cap = retry_cap
        self.stale_after = stale_after
        self.cache: dict[str, dict[str, Any]] = {}
        self.resource_version = ""
        self.synced = threading.Event()
        self.relists = 0
        self.rewatches = 0
        self.heard: float | None = None
        """When (`clock()`) the API was last heard from: a list, or any watch event."""
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch: Any = None

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self.cache.get(key)

    def current(self, key: str) -> dict[str, Any] | None:
        """The cached pod while the watch is fresh, else None (ask the API)."""
        return self.get(key) if self.fresh() else None

    def pods(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.cache.values())

    def silent_for(self) -> float | None:
        """Seconds since the API was last heard from (None: never)."""
        heard = self.heard
        return None if heard is None else max(0.0, self._clock() - heard)

    def fresh(self) -> bool:
        """Synced, and heard from within `stale_after`: the cache may stand for the API."""
        silent = self.silent_for()
        return self.synced.is_set() and silent is not None and silent <= self.stale_after

    def run(self) -> None:
        """Until `stop()`: list, then watch and resume; API errors back off (bounded)."""
        failures = 0
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list or self._too_quiet():
                    if not need_list:
                        log.info("pod watch: no word from the API for %.0fs; relisting",
                                 self.silent_for() or 0.0)
                    self._relist()
                    need_list = False
                self._watch_once()
                failures = 0
            except ApiError as exc:
                if self._stop.is_set():
                    break
                if exc.gone:
                    log.info("pod watch: resourceVersion %s expired; relisting",
                             self.resource_version)
                    need_list = True
                    continue
                failures += 1
                delay = min(self.retry_cap, 0.2 * 2 ** min(failures, 10))
                log.warning("pod watch: %s; retrying in %.1fs", exc, delay)
                self._stop.wait(delay)

    def stop(self) -> None:
        self._stop.set()
        watch = self._watch
        if watch is not None:
            watch.close()

    def _too_quiet(self) -> bool:
        """Silent long enough that a relist must prove the cache current."""
        silent = self.silent_for()
        return silent is not None and silent >= self.stale_after * RELIST_FRACTION

    def _relist(self) -> None:
        listed = self.api.list_pods(self.field_selector, self.label_selector)
        fresh = {pod_key(p): p for p in listed.items}
        changes: list[tuple[str, str]] = []
        with self._lock:
            for key, old in self.cache.items():
                new = fresh.get(key)
                if new is None or pod_uid(new) != pod_uid(old):
                    changes.append((key, pod_uid(old)))  # that pod is gone
            changes += [(k, pod_uid(p)) for k, p in fresh.items()
                        if _rv(self.cache.get(k)) != _rv(p)]
            self.cache = fresh
            self.resource_version = listed.resource_version
            self.heard = self._clock()
        self.relists += 1
        for key, uid in changes:
            self.on_change(key, uid)
        self.synced.set()

    def _watch_once(self) -> None:
        """One watch request; returns when the server ends it (timeout) or the stream drops."""
        self.rewatches += 1  # counted when sent: a hung request is still an attempt
        self._watch = self.api.watch_pods(self.resource_version, self.watch_timeout,
                                          self.field_selector, self.label_selector,
                                          silence=self.stale_after * RELIST_FRACTION)
        try:
            for event in self._watch:
                if self._stop.is_set():
                    return
                self._apply(event)
        except ApiError as exc:
            if exc.status == 0 and self._too_quiet():
                return  # the stream went silent (no error of the API's): `run` relists now
            raise
        finally:
            self._watch = None

    def _apply(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise ApiError(int(obj.get("code") or 0), f"watch pods: {obj.get('message', obj)}")
        rv = _rv(obj)
        self.heard = self._clock()
        if kind == "BOOKMARK":
            self.resource_version = rv or self.resource_version
            return
        key, uid = pod_key(obj), pod_uid(obj)
        with self._lock:
            old = self.cache.get(key)
            if kind == "DELETED":
                self.cache.pop(key, None)
            elif kind in ("ADDED", "MODIFIED"):
                self.cache[key] = obj
            self.resource_version = rv or self.resource_version
        if old is not None and pod_uid(old) != uid:
            self.on_change(key, pod_uid(old))  # replaced without a DELETED seen: gone too
        self.on_change(key, uid)


def _rv(pod: dict[str, Any] | None) -> str:
    return str(((pod or {}).get("metadata") or {}).get("resourceVersion", ""))


class RepairController:
    """Informer + queue + worker. `drift` is optional (None: no drift checks)."""

    def __init__(self, api: PodReader, cfg: RepairConfig, actions: Actions,
                 drift: DriftChecker | None = None, watch_timeout: int = 300,
                 drift_interval: float = 0.0, stale_after: float = STALE_AFTER) -> None:
        self.api = api
        self.cfg = cfg
        self.actions = actions
        self.drift = drift
        self.drift_interval = drift_interval
        self.queue = WorkQueue()
        self.informer = PodInformer(api, cfg.field_selector(), cfg.label_selectors,
                                    self._on_change, watch_timeout, stale_after=stale_after)
        self.dropped: dict[str, str] = {}
        """UID -> namespace/name of the pods given up on after MAX_ATTEMPTS failures in a row
        (until a change of the pod brings it back); an entry goes with its pod."""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def synced(self) -> bool:
        return self.informer.synced.is_set()

    @property
    def fresh(self) -> bool:
        """Synced and heard from the API within the bound (`PodInformer.fresh`)."""
        return self.informer.fresh()

    def start(self) -> None:
        targets: list[tuple[str, Callable[[], None]]] = [
            ("pod-informer", self.informer.run), ("repair-worker", self._work)]
        if self.drift is not None and self.drift_interval > 0:
            targets.append(("drift-timer", self._drift_timer))
        for name, target in targets:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.informer.stop()
        self.queue.shutdown()
        for t in self._threads:
            t.join(timeout=10)

    def state(self) -> WatchState:
        """The watch's currency and what the controller remembers, for the metrics."""
        informer = self.informer
        return WatchState(informer.silent_for(), informer.synced.is_set()
                          and not informer.fresh(), informer.relists, len(self.dropped),
                          self.actions.reporter.remembered())

    def check_drift_now(self) -> None:
        """On demand: queue one drift pass over this node's pods (runs on the worker)."""
        self.queue.add(DRIFT_ALL)

    def _on_change(self, key: str, uid: str) -> None:
        self.queue.add(("pod", key, uid))

    def _drift_timer(self) -> None:
        while not self._stop.wait(self.drift_interval):
            self.check_drift_now()

    def _work(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            try:
                ok = self._reconcile(item)
            except Exception:  # a bug must not kill the only worker
                log.exception("reconcile %s failed unexpectedly", item)
                ok = False
            finally:
                self.queue.done(item)
            if ok:
                self.queue.forget(item)
                self.dropped.pop(item[2], None)
            elif self.queue.limiter.failures(item) + 1 < MAX_ATTEMPTS:
                self.queue.add_rate_limited(item)
            else:
                log.warning("giving up on %s after %d attempts", item[1], MAX_ATTEMPTS)
                self.queue.forget(item)
                if item[0] == "pod":
                    self.dropped[item[2]] = item[1]

    def _reconcile(self, item: Item) -> bool:
        """True when done (including "nothing to do"), False to retry."""
        kind, key, uid = item
        if kind == "drift":
            return self._drift_pass()
        pod = self.informer.get(key)
        if pod is None or pod_uid(pod) != uid:
            self._forget(uid)  # this UID is gone (deleted, or its name taken by another pod)
            return True
        if not self.cfg.mode or self.actions.repaired(uid):
            return True  # nothing to do, or done (a repaired pod is skipped, as upstream)
        if not diagnose(pod, self.cfg).broken:
            return True
        try:
            live = self._live(key, uid)
        except ApiError as exc:
            log.warning("%s: cannot read the pod before acting on it (%s); retrying", key, exc)
            return False
        if live is None:
            self._forget(uid)
            return True
        if not diagnose(live, self.cfg).broken:
            return True
        result = self.actions.act(live)
        return result is None or result.result != Result.FAIL

    def _live(self, key: str, uid: str) -> dict[str, Any] | None:
        """The pod as the API has it now, if it is still the one with `uid` (one GET), so no
        action is taken on a cached pod the watch has not caught up with; None when it is gone
        or another pod; ApiError when the API cannot say."""
        namespace, _, name = key.partition("/")
        try:
            live = self.api.get_pod(namespace, name)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        if pod_uid(live) != uid:
            log.info("%s is now another pod (uid %s, not %s): not acting on the cached one",
                     key, pod_uid(live), uid)
            return None
        return live

    def _forget(self, uid: str) -> None:
        self.dropped.pop(uid, None)
        self.actions.forget(uid)

    def _drift_pass(self) -> bool:
        """Check the rules of this node's pods as one LIST gives them now: which pods to fix
        and what their rules must be is never read from a cache that may be behind."""
        if self.drift is None:
            return True
        try:
            listed = self.api.list_pods(self.informer.field_selector,
                                        self.informer.label_selector)
        except ApiError as exc:
            log.warning("drift check: cannot list this node's pods (%s); not checked", exc)
            return False
        self.drift.check_all(listed.items)
        return True
