"""The repair controller: a list+watch of this node's pods, a cache, a queue and one worker.

Informer semantics without client-go: LIST, then WATCH from the list's resourceVersion with
bookmarks; a dropped stream resumes from the last resourceVersion seen (event or bookmark); a
`410 Gone` (compacted history) relists and diffs against the cache, so no pod is missed and
deleted pods are noticed. Every pod change enqueues its key; the worker reconciles the cached
pod, and failed actions are retried with client-go's backoff, at most 5 attempts (upstream's
`WithMaxAttempts(5)`).

One worker thread does all netns work (repair in place, drift checks), because `setns` is per
thread and two visits to one netns must not interleave.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from node_daemon.actions import Actions, Result, pod_key
from node_daemon.broken import diagnose
from node_daemon.config import RepairConfig
from node_daemon.drift import DriftChecker
from node_daemon.kubeapi import ApiError, PodList
from node_daemon.workqueue import WorkQueue

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 5
DRIFT_ALL = ("drift", "*")


class PodLister(Protocol):
    def list_pods(self, field_selector: str = "", label_selector: str = "") -> PodList: ...

    def watch_pods(self, resource_version: str, timeout_seconds: int, field_selector: str = "",
                   label_selector: str = "") -> Any: ...


class PodInformer:
    """Keeps `cache` equal to the API's view of the selected pods; calls `on_change(key)`."""

    def __init__(self, api: PodLister, field_selector: str, label_selector: str,
                 on_change: Callable[[str], None], watch_timeout: int = 300,
                 retry_cap: float = 30.0) -> None:
        self.api = api
        self.field_selector = field_selector
        self.label_selector = label_selector
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.retry_cap = retry_cap
        self.cache: dict[str, dict[str, Any]] = {}
        self.resource_version = ""
        self.synced = threading.Event()
        self.relists = 0
        self.rewatches = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watch: Any = None

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self.cache.get(key)

    def pods(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.cache.values())

    def run(self) -> None:
        """Until `stop()`: list, then watch and resume; API errors back off (bounded)."""
        failures = 0
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
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

    def _relist(self) -> None:
        listed = self.api.list_pods(self.field_selector, self.label_selector)
        fresh = {pod_key(p): p for p in listed.items}
        with self._lock:
            gone = set(self.cache) - set(fresh)
            changed = [k for k, p in fresh.items() if _rv(self.cache.get(k)) != _rv(p)]
            self.cache = fresh
            self.resource_version = listed.resource_version
        self.relists += 1
        for key in [*changed, *gone]:
            self.on_change(key)
        self.synced.set()

    def _watch_once(self) -> None:
        """One watch request; returns when the server ends it (timeout) or the stream drops."""
        self.rewatches += 1  # counted when sent: a hung request is still an attempt
        self._watch = self.api.watch_pods(self.resource_version, self.watch_timeout,
                                          self.field_selector, self.label_selector)
        try:
            for event in self._watch:
                if self._stop.is_set():
                    return
                self._apply(event)
        finally:
            self._watch = None

    def _apply(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise ApiError(int(obj.get("code") or 0), f"watch pods: {obj.get('message', obj)}")
        rv = _rv(obj)
        if kind == "BOOKMARK":
            self.resource_version = rv or self.resource_version
            return
        key = pod_key(obj)
        with self._lock:
            if kind == "DELETED":
                self.cache.pop(key, None)
            elif kind in ("ADDED", "MODIFIED"):
                self.cache[key] = obj
            self.resource_version = rv or self.resource_version
        self.on_change(key)


def _rv(pod: dict[str, Any] | None) -> str:
    return str(((pod or {}).get("metadata") or {}).get("resourceVersion", ""))


class RepairController:
    """Informer + queue + worker. `drift` is optional (None: no drift checks)."""

    def __init__(self, api: PodLister, cfg: RepairConfig, actions: Actions,
                 drift: DriftChecker | None = None, watch_timeout: int = 300,
                 drift_interval: float = 0.0) -> None:
        self.cfg = cfg
        self.actions = actions
        self.drift = drift
        self.drift_interval = drift_interval
        self.queue = WorkQueue()
        self.informer = PodInformer(api, cfg.field_selector(), cfg.label_selectors,
                                    self._on_change, watch_timeout)
        self.dropped: list[str] = []
        """Keys given up on after MAX_ATTEMPTS failures."""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def synced(self) -> bool:
        return self.informer.synced.is_set()

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

    def check_drift_now(self) -> None:
        """On demand: queue one drift pass over all cached pods (runs on the worker)."""
        self.queue.add(DRIFT_ALL)

    def _on_change(self, key: str) -> None:
        self.queue.add(("pod", key))

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
            elif self.queue.limiter.failures(item) + 1 < MAX_ATTEMPTS:
                self.queue.add_rate_limited(item)
            else:
                log.warning("giving up on %s after %d attempts", item[1], MAX_ATTEMPTS)
                self.queue.forget(item)
                self.dropped.append(item[1])

    def _reconcile(self, item: tuple[str, str]) -> bool:
        """True when done (including "nothing to do"), False to retry."""
        kind, key = item
        if kind == "drift":
            if self.drift is None:
                return True
            self.drift.check_all(self.informer.pods())
            return True
        pod = self.informer.get(key)
        if pod is None:
            self.actions.forget(key)  # deleted: do not leak its repaired uid
            return True
        if not diagnose(pod, self.cfg).broken:
            return True
        result = self.actions.act(pod)
        return result is None or result.result != Result.FAIL
