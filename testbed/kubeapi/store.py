"""State of the test API server: pods and nodes, monotonic resourceVersions, watch history,
selectors.

No sockets here (`server.py` speaks HTTP around it), so the semantics the real API server has
and our code depends on are in one place: every change gets the next resourceVersion and is
appended to a history that watches replay from a given resourceVersion; `compact()` makes older
resourceVersions expire (a watch from them gets a 410 ERROR event, like etcd compaction);
selectors filter LIST and WATCH the way the apiserver does (a MODIFIED that makes a pod stop
matching is delivered as DELETED).
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Pod = dict[str, Any]

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

POD_FIELDS = frozenset(
    {
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    }
)


def status_object(code: int, message: str, reason: str = "", **details: Any) -> dict[str, Any]:
    """A `Status` as the API server writes it for failures."""
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or REASONS.get(code, ""),
        "code": code,
    }
    if details:
        status["details"] = details
    return status


class ApiError(Exception):
    """A failure answered with a `Status` body and `code` as the HTTP status."""

    def __init__(self, code: int, message: str, reason: str = "", **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.status = status_object(code, message, reason, **details)


def not_found(name: str, resource: str = "pods") -> ApiError:
    return ApiError(404, f'{resource} "{name}" not found', name=name, kind=resource)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Change:
    """One history entry: the object after the change, and before it (None when added)."""

    rv: int
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK
    obj: Pod
    prev: Pod | None


@dataclass(frozen=True)
class Selector:
    """A parsed fieldSelector + labelSelector (+ namespace) for LIST and WATCH."""

    namespace: str | None
    fields: tuple[tuple[str, bool, str], ...] = ()
    labels: tuple[tuple[str, str, str], ...] = ()

    def matches(self, pod: Pod | None) -> bool:
        if pod is None:
            return False
        meta = pod.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        for path, equal, value in self.fields:
            if (_field(pod, path) == value) != equal:
                return False
        labels = meta.get("labels") or {}
        return all(_label_ok(labels, op, key, value) for op, key, value in self.labels)


def parse_selector(namespace: str | None, fields: str, labels: str) -> Selector:
    return Selector(namespace, _parse_fields(fields), _parse_labels(labels))


def _parse_fields(text: str) -> tuple[tuple[str, bool, str], ...]:
    terms = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        equal = "!=" not in term
        key, _, value = term.partition("!=" if not equal else "==" if "==" in term else "=")
        if key not in POD_FIELDS:
            raise ApiError(400, f'field label not supported: "{key}"')
        terms.append((key, equal, value))
    return tuple(terms)


def _parse_labels(text: str) -> tuple[tuple[str, str, str], ...]:
    if "(" in text:
        raise ApiError(400, "set-based label selectors are not supported by the test server")
    terms = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        for op in ("!=", "==", "="):
            if op in term:
                key, _, value = term.partition(op)
                terms.append(("!=" if op == "!=" else "=", key.strip(), value.strip()))
                break
        else:
            op = "!" if term.startswith("!") else "exists"
            terms.append((op, term.lstrip("!").strip(), ""))
    return tuple(terms)


def _field(pod: Pod, path: str) -> str:
    node: Any = pod
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, bool):
        return "true" if node else "false"
    return "" if node is None else str(node)


def _label_ok(labels: dict[str, str], op: str, key: str, value: str) -> bool:
    if op == "exists":
        return key in labels
    if op == "!":
        return key not in labels
    if op == "=":
        return labels.get(key) == value
    return labels.get(key) != value


class ObjectStore:
    """Thread-safe objects of one resource + history. Mutations notify waiting watches.

    Pods by default; a cluster-scoped resource (nodes) is keyed by name alone (`namespaced`
    False: its objects have no namespace and its key's namespace is "")."""

    def __init__(self, kind: str = "Pod", resource: str = "pods",
                 namespaced: bool = True, bookmark_interval: float | None = None) -> None:
        self.kind, self.resource, self.namespaced = kind, resource, namespaced
        self.bookmark_interval = bookmark_interval
        """Seconds between the BOOKMARKs an idle watch gets (None: only at its timeout and on
        `bookmark()`). kube-apiserver sends one about once a minute to every watch that
        allows them; read at each wait, so a test can change it while watches run."""
        self._cond = threading.Condition()
        self._pods: dict[tuple[str, str], Pod] = {}
        self._history: list[Change] = []
        self._rv = 1000
        self._compacted = 0
        self._closed = False

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def next_rv(self) -> int:
        with self._cond:
            self._rv += 1
            return self._rv

    def get(self, namespace: str, name: str) -> Pod:
        with self._cond:
            pod = self._pods.get((namespace, name))
            if pod is None:
                raise not_found(name, self.resource)
            return copy.deepcopy(pod)

    def list(self, selector: Selector) -> tuple[list[Pod], int]:
        with self._cond:
            pods = [copy.deepcopy(p) for _, p in sorted(self._pods.items()) if selector.matches(p)]
            return pods, self._rv

    def add(self, pod: Pod) -> Pod:
        pod = copy.deepcopy(pod)
        meta = pod.setdefault("metadata", {})
        if not meta.get("name"):
            raise ApiError(422, f"{self.kind} is invalid: metadata.name: Required value")
        if self.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now())
        pod.setdefault("apiVersion", "v1")
        pod.setdefault("kind", self.kind)
        key = (meta.get("namespace", ""), meta["name"])
        with self._cond:
            if key in self._pods:
                raise ApiError(409, f'{self.resource} "{key[1]}" already exists',
                               "AlreadyExists")
            return self._commit("ADDED", key, pod, None)

    def update(self, namespace: str, name: str, change: Callable[[Pod], Pod]) -> Pod:
        """Replace the pod by `change(copy_of_pod)` (which may raise ApiError)."""
        with self._cond:
            old = self._pods.get((namespace, name))
            if old is None:
                raise not_found(name, self.resource)
            new = change(copy.deepcopy(old))
            for key in ("name", "namespace", "uid", "creationTimestamp"):
                if key in old["metadata"]:
                    new.setdefault("metadata", {})[key] = old["metadata"][key]
            return self._commit("MODIFIED", (namespace, name), new, old)

    def delete(self, namespace: str, name: str, preconditions: dict[str, Any] | None) -> Pod:
        with self._cond:
            old = self._pods.get((namespace, name))
            if old is None:
                raise not_found(name, self.resource)
            _check_preconditions(old, preconditions or {})
            del self._pods[(namespace, name)]
            return self._commit("DELETED", (namespace, name), copy.deepcopy(old), old)

    def compact(self) -> int:
        """Expire every resourceVersion older than the current one; returns it."""
        with self._cond:
            self._compacted = self._rv
            return self._rv

    def bookmark(self) -> None:
        """Send a BOOKMARK at the current resourceVersion to watches that asked for them.

        A watch that reaches its timeout gets one too, as from kube-apiserver, so the client
        resumes from where it was rather than from its last event."""
        with self._cond:
            self._history.append(Change(self._rv, "BOOKMARK", self._bookmark_object(), None))
            self._cond.notify_all()

    def _bookmark_object(self) -> Pod:
        """What a BOOKMARK carries: only the resourceVersion the watch has reached."""
        with self._cond:
            return {"kind": self.kind, "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(self._rv)}}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def watch(self, selector: Selector, since: str, timeout: float | None) -> Iterator[dict]:
        """Events (`{"type", "object"}`) after `since`, until `timeout`, close, or expiry.

        The start is checked now (a bad resourceVersion raises `ApiError` before any event).
        """
        initial, index = self._watch_start(selector, since)
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._follow(selector, initial, index, deadline)

    def _follow(
        self, selector: Selector, initial: list[dict], index: int, deadline: float | None
    ) -> Iterator[dict]:
        yield from initial
        while True:
            changes, index = self._wait(index, deadline)
            if changes is None:
                if index >= 0 and not self._closed:  # timed out: let the client resume exactly
                    yield {"type": "BOOKMARK", "object": self._bookmark_object()}
                return
            if not changes:  # idle for a bookmark interval: the periodic bookmark
                yield {"type": "BOOKMARK", "object": self._bookmark_object()}
                continue
            for change in changes:
                event = _event_for(change, selector)
                if event is not None:
                    yield event

    def _watch_start(self, selector: Selector, since: str) -> tuple[list[dict], int]:
        with self._cond:
            if since in ("", "0"):  # "any state": synthetic ADDED for what exists now
                pods = [p for _, p in sorted(self._pods.items()) if selector.matches(p)]
                return [{"type": "ADDED", "object": copy.deepcopy(p)} for p in pods], len(
                    self._history
                )
            try:
                rv = int(since)
            except ValueError:
                raise ApiError(400, f"invalid resource version: {since!r}") from None
            if rv < self._compacted:
                gone = status_object(410, f"too old resource version: {rv} ({self._compacted})")
                return [{"type": "ERROR", "object": gone}], -1
            return [], next(
                (i for i, c in enumerate(self._history) if _after(c, rv)), len(self._history)
            )

    def _wait(self, index: int, deadline: float | None) -> tuple[list[Change] | None, int]:
        """The changes after `index`; None at the deadline (or on close), [] when a periodic
        bookmark is due first."""
        if index < 0:
            return None, index
        started = time.monotonic()
        with self._cond:
            while not self._closed and len(self._history) <= index:
                now = time.monotonic()
                if deadline is not None and deadline <= now:
                    return None, index
                interval = self.bookmark_interval
                if interval is not None and started + interval <= now:
                    return [], index
                wakes = [t - now for t in (deadline, None if interval is None
                                           else started + interval) if t is not None]
                self._cond.wait(min(wakes) if wakes else None)
            if self._closed:
                return None, index
            return list(self._history[index:]), len(self._history)

    def _commit(self, kind: str, key: tuple[str, str], pod: Pod, prev: Pod | None) -> Pod:
        self._rv += 1
        pod["metadata"]["resourceVersion"] = str(self._rv)
        if kind != "DELETED":
            self._pods[key] = pod
        self._history.append(Change(self._rv, kind, copy.deepcopy(pod), prev))
        self._cond.notify_all()
        return copy.deepcopy(pod)


def _after(change: Change, rv: int) -> bool:
    """Whether a watch from `rv` sees `change` (a bookmark at `rv` itself is still news)."""
    return change.rv > rv or (change.type == "BOOKMARK" and change.rv == rv)


def _check_preconditions(pod: Pod, pre: dict[str, Any]) -> None:
    meta = pod["metadata"]
    for field, key in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
        want = pre.get(field)
        if want is not None and want != meta.get(field):
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on pods "{meta["name"]}": Precondition failed: '
                f"{key} in precondition: {want}, {key} in object meta: {meta.get(field)}",
                name=meta["name"],
                kind="pods",
            )


def _event_for(change: Change, selector: Selector) -> dict[str, Any] | None:
    """The event a selector-filtered watch sees for `change`, like the apiserver's cache."""
    if change.type == "BOOKMARK":
        return {"type": "BOOKMARK", "object": copy.deepcopy(change.obj)}
    now_ok = selector.matches(change.obj)
    before_ok = selector.matches(change.prev)
    kind = change.type
    if kind == "MODIFIED":
        kind = {(True, True): "MODIFIED", (False, True): "DELETED", (True, False): "ADDED"}.get(
            (now_ok, before_ok), ""
        )
    elif kind == "ADDED" and not now_ok or kind == "DELETED" and not before_ok:
        kind = ""
    return {"type": kind, "object": copy.deepcopy(change.obj)} if kind else None
