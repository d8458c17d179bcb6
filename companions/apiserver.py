"""A small Kubernetes API stand-in, used by the demo (`python -m companions.demo`).

The demo runs a whole sandboxed node on one machine with no cluster, so something must answer
the two API clients of the node agent the way kube-apiserver does:

- the plugin's single `GET /api/v1/namespaces/NS/pods/NAME` (stdlib http.client, bearer token
  from the kubeconfig the installer wrote);
- the repair controller (the official `kubernetes` client): `LIST /api/v1/pods` and
  `WATCH` with a `spec.nodeName=` field selector, a resourceVersion and bookmarks, `PATCH`
  (merge patch, also on `pods/status`), `DELETE` with preconditions, and `POST` of Events.

Only that. It is product-side on purpose (the demo must not import `tests/`); the much fuller
test server with fault injection and history compaction stays in `tests/kubeapi/`. Plain HTTP
on 127.0.0.1, port 0; every pod change gets the next resourceVersion and is appended to an
in-memory history that watches replay from the resourceVersion they ask for.

    with ApiServer(token="t0k3n") as api:
        api.add_pod(pod)                           # ADDED
        api.update_pod("ns", "name", {"status": {...}})  # MODIFIED, as the kubelet would
        api.wait_for_event(lambda e: e["reason"] == "RepairBrokenPod", timeout=10)
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Obj = dict[str, Any]
_REASONS = {400: "BadRequest", 401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed",
            409: "Conflict", 415: "UnsupportedMediaType", 422: "Invalid", 500: "InternalError"}
_NS = r"/api/v1/namespaces/(?P<ns>[^/]+)"
_POD = _NS + r"/pods/(?P<name>[^/]+)"


class ApiError(Exception):
    """Answered as a `Status` object with this HTTP code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code

    @property
    def status(self) -> Obj:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": str(self), "reason": _REASONS.get(self.code, "Unknown"),
                "code": self.code}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge: the demo never needs lists)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _field(obj: Obj, path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "" if node is None else str(node).lower() if isinstance(node, bool) else str(node)


def selector(namespace: str | None, fields: str, labels: str) -> Callable[[Obj], bool]:
    """Equality-based field and label selectors (`a=b`, `a==b`, `a!=b`, `key`, `!key`)."""
    field_terms: list[tuple[str, str, bool]] = []  # (path, value, negated)
    label_terms: list[tuple[str, str | None, bool]] = []  # value None: existence
    for term in filter(None, (t.strip() for t in fields.split(","))):
        key, value = re.split(r"!=|==|=", term, maxsplit=1)
        field_terms.append((key.strip(), value.strip(), "!=" in term))
    for term in filter(None, (t.strip() for t in labels.split(","))):
        if "(" in term:
            raise ApiError(400, "set-based label selectors are not supported by the stand-in")
        if "=" in term:
            key, value = re.split(r"!=|==|=", term, maxsplit=1)
            label_terms.append((key.strip(), value.strip(), "!=" in term))
        else:
            label_terms.append((term.lstrip("!").strip(), None, term.startswith("!")))

    def match(pod: Obj) -> bool:
        meta = pod.get("metadata") or {}
        if namespace and meta.get("namespace") != namespace:
            return False
        if any((_field(pod, k) == v) == neg for k, v, neg in field_terms):
            return False
        pod_labels = meta.get("labels") or {}
        return not any(((k in pod_labels) if v is None else (pod_labels.get(k) == v)) == neg
                       for k, v, neg in label_terms)

    return match


class ApiServer:
    """Pods, their watch history and the Events posted; served over HTTP until `stop()`."""

    def __init__(self, host: str = "127.0.0.1", token: str | None = None) -> None:
        self.token = token
        self._cond = threading.Condition()
        self._pods: dict[str, Obj] = {}
        self._history: list[tuple[int, str, Obj]] = []
        self._rv = 0
        self._events: list[Obj] = []
        self._stopped = False
        self._httpd = _HTTPServer(self, host)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="apiserver", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- state, as controllers and the kubelet change it ---------------------------------------

    def _next_rv(self) -> int:
        self._rv += 1
        return self._rv

    def _record(self, kind: str, pod: Obj) -> Obj:
        """Stamp the next resourceVersion and append to the history (caller holds the lock)."""
        rv = self._next_rv()
        pod["metadata"]["resourceVersion"] = str(rv)
        self._history.append((rv, kind, copy.deepcopy(pod)))
        self._cond.notify_all()
        return copy.deepcopy(pod)

    def add_pod(self, pod: Obj) -> Obj:
        pod = copy.deepcopy(pod)
        meta = pod.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        with self._cond:
            key = f"{meta['namespace']}/{meta['name']}"
            if key in self._pods:
                raise ApiError(409, f'pods "{meta["name"]}" already exists')
            self._pods[key] = pod
            return self._record("ADDED", pod)

    def get_pod(self, namespace: str, name: str) -> Obj:
        with self._cond:
            return copy.deepcopy(self._get(namespace, name))

    def update_pod(self, namespace: str, name: str, patch: Obj, via: str = "") -> Obj:
        """Merge-patch a pod (MODIFIED), as the kubelet or a controller would.

        `via` is how an HTTP client reached it: "pods" (spec and metadata only, as the API
        server keeps status off the main resource) or "pods/status" (status and metadata)."""
        with self._cond:
            old = self._get(namespace, name)
            new = merge_patch(old, patch)
            want = (patch.get("metadata") or {}).get("resourceVersion")
            if want is not None and want != old["metadata"]["resourceVersion"]:
                raise ApiError(409, f'Operation cannot be fulfilled on pods "{name}": the '
                                    "object has been modified")
            kept = {"pods": "status", "pods/status": "spec"}.get(via)
            if kept is not None:
                new.pop(kept, None)
                if kept in old:
                    new[kept] = old[kept]
            self._pods[f"{namespace}/{name}"] = new
            return self._record("MODIFIED", new)

    def delete_pod(self, namespace: str, name: str, preconditions: Obj | None = None) -> Obj:
        with self._cond:
            pod = self._get(namespace, name)
            for key in ("uid", "resourceVersion"):
                want = (preconditions or {}).get(key)
                if want and want != pod["metadata"].get(key):
                    raise ApiError(409, f"Precondition failed: {key}: {want}")
            del self._pods[f"{namespace}/{name}"]
            return self._record("DELETED", pod)

    @property
    def events(self) -> list[Obj]:
        with self._cond:
            return copy.deepcopy(self._events)

    def wait_for_event(self, predicate: Callable[[Obj], bool], timeout: float) -> Obj | None:
        """The first Event posted that matches, waiting up to `timeout` s for it (else None)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next((e for e in self._events if predicate(e)), None)
                left = deadline - time.monotonic()
                if found is not None or left <= 0 or self._stopped:
                    return copy.deepcopy(found) if found else None
                self._cond.wait(left)

    def _get(self, namespace: str, name: str) -> Obj:
        pod = self._pods.get(f"{namespace}/{name}")
        if pod is None:
            raise ApiError(404, f'pods "{name}" not found')
        return pod

    # -- what the HTTP handlers call -----------------------------------------------------------

    def list(self, match: Callable[[Obj], bool]) -> Obj:
        with self._cond:
            items = [copy.deepcopy(p) for p in self._pods.values() if match(p)]
            rv = self._rv
        return {"kind": "PodList", "apiVersion": "v1",
                "metadata": {"resourceVersion": str(rv)}, "items": items}

    def watch(self, match: Callable[[Obj], bool], since: str, timeout: float,
              bookmarks: bool) -> Iterator[Obj]:
        """Events after resourceVersion `since` ("" or "0": the current pods as ADDED first),
        until `timeout` or `stop()`; a bookmark at the end lets the client resume exactly."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if since in ("", "0"):
                start = self._rv
                initial = [{"type": "ADDED", "object": copy.deepcopy(p)}
                           for p in self._pods.values() if match(p)]
            else:
                start, initial = int(since), []
        yield from initial
        cursor = start
        while True:
            with self._cond:
                fresh = [h for h in self._history if h[0] > cursor]
                while not fresh and not self._stopped and time.monotonic() < deadline:
                    self._cond.wait(max(0.0, deadline - time.monotonic()))
                    fresh = [h for h in self._history if h[0] > cursor]
                done = self._stopped or (not fresh and time.monotonic() >= deadline)
                cursor = max([cursor, *(h[0] for h in fresh)])
            for _, kind, obj in fresh:
                if match(obj):
                    yield {"type": kind, "object": obj}
            if done:
                if bookmarks and not self._stopped:
                    yield {"type": "BOOKMARK", "object": {
                        "kind": "Pod", "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(cursor)}}}
                return

    def create_event(self, namespace: str, event: Obj) -> Obj:
        if not isinstance(event, dict):
            raise ApiError(400, "an event must be a JSON object")
        with self._cond:
            meta = event.setdefault("metadata", {})
            if not meta.get("name"):
                if not meta.get("generateName"):
                    raise ApiError(422, "Event is invalid: metadata.name: Required value")
                meta["name"] = meta["generateName"] + format(self._next_rv(), "x")
            meta.update(namespace=namespace, resourceVersion=str(self._next_rv()))
            meta.setdefault("creationTimestamp", _now())
            self._events.append(copy.deepcopy(event))
            self._cond.notify_all()
        return event

    # -- lifecycle -----------------------------------------------------------------------------

    def stop(self) -> None:
        """End every watch, stop serving and cut open keep-alive connections."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._cond.notify_all()
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _route(api: ApiServer, method: str, path: str, query: dict[str, str], headers: Any,
           body: Any) -> Obj | Iterator[Obj]:
    """The handful of endpoints the plugin and the repair controller use."""
    if api.token is not None and headers.get("Authorization") != f"Bearer {api.token}":
        raise ApiError(401, "Unauthorized")
    if m := re.fullmatch(_POD + r"(?P<sub>/status)?", path):
        ns, name, status = m["ns"], m["name"], bool(m["sub"])
        if method == "GET":
            return api.get_pod(ns, name)
        if method == "PATCH":
            ctype = headers.get("Content-Type", "")
            if "json-patch" in ctype:
                raise ApiError(415, "the stand-in supports merge patches only")
            return api.update_pod(ns, name, body or {}, "pods/status" if status else "pods")
        if method == "DELETE" and not status:
            return api.delete_pod(ns, name, (body or {}).get("preconditions"))
    elif m := re.fullmatch(r"/api/v1/pods|" + _NS + r"/pods", path):
        if method == "GET":
            match = selector(m["ns"], query.get("fieldSelector", ""),
                             query.get("labelSelector", ""))
            if query.get("watch", "").lower() in ("1", "true"):
                return api.watch(match, query.get("resourceVersion", ""),
                                 float(query.get("timeoutSeconds") or 300),
                                 query.get("allowWatchBookmarks", "").lower() in ("1", "true"))
            return api.list(match)
    elif m := re.fullmatch(_NS + r"/events|/apis/events\.k8s\.io/v1/namespaces/(?P<ens>[^/]+)"
                                 r"/events", path):
        if method == "POST":
            return api.create_event(m["ns"] or m["ens"], body)
    else:
        raise ApiError(404, "the server could not find the requested resource")
    raise ApiError(405, f"the server does not allow {method} on {path}")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: ApiServer, host: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), _Handler)
        self.api = api
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._conns.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self._lock:
                self._conns.discard(request)

    def close_connections(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Resets and broken pipes are the client's business: no traceback on the console."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: the demo prints what matters itself."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                raise ApiError(400, "the request body is not valid JSON") from None
            result = _route(self.server.api, method, url.path, query, self.headers, body)
            code = 201 if method == "POST" else 200
        except ApiError as exc:
            result, code = exc.status, exc.code
        except Exception as exc:  # a stand-in bug: answer 500 rather than hang the client
            result, code = ApiError(500, f"stand-in error: {exc!r}").status, 500
        if isinstance(result, dict):
            self._send(code, result)
        else:
            self._stream(result)

    def _send(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: Iterator[Obj]) -> None:
        """A watch: one JSON event per line, chunked, flushed as each event happens."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in events:
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
