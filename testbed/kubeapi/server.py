"""The API stand-in's HTTP side: real HTTP(S), the real API's JSON, pods, nodes and events.

Good enough for the official `kubernetes` client (LIST with selectors, WATCH streams with
resume, bookmarks (periodic, as kube-apiserver's, and at the watch's timeout) and 410 expiry,
PATCH of pods and pods/status, DELETE with preconditions, events created and PATCHed as
client-go's recorder does; GET, LIST and PATCH of nodes and nodes/status) and for the plugin's
stdlib client (GET with a bearer token, over TLS). Faults are injected server-side
(`fail_next`, `delay`, `hang`, `stall_watches`, `require_token`) so clients meet them over a
real socket. The control API (what the
kubelet, a controller or a test would change) is plain Python; nothing of it is reachable over HTTP.

Binds 127.0.0.1 (or ::1) on port 0; `stop()` releases hung requests, ends watches and closes
every connection.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from testbed.kubeapi.admission import Admission, AdmissionRequest
from testbed.kubeapi.auth import Attributes, Auth, Identity, attributes
from testbed.kubeapi.patches import PatchError, apply_patch, merge_patch
from testbed.kubeapi.store import ApiError, ObjectStore, Pod, not_found, now, parse_selector
from testbed.kubeapi.tls import TLSMaterial

_NS = r"/api/v1/namespaces/(?P<ns>[^/]+)"
_POD = _NS + r"/pods/(?P<name>[^/]+)"
_NODE = r"/api/v1/nodes/(?P<name>[^/]+)"
_DAEMONSET = r"/apis/apps/v1/namespaces/(?P<ns>[^/]+)/daemonsets/(?P<name>[^/]+)"
_TOKEN = _NS + r"/serviceaccounts/(?P<name>[^/]+)/token"
_ACCESS_REVIEW = r"/apis/authorization\.k8s\.io/v1/selfsubjectaccessreviews"
TOKEN_MIN_SECONDS = 600
"""The shortest TokenRequest the API server accepts (its validation's minimum)."""


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    client: tuple[str, int]


@dataclass
class _Fault:
    kind: str  # fail | delay | hang
    pattern: re.Pattern[str]
    method: str | None
    remaining: int | None
    status: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class _Watch:
    events: Iterator[dict[str, Any]]
    bookmarks: bool


@dataclass
class _Reply:
    code: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class KubeApiServer:
    """The server plus its test-control API. Use as a context manager or call `stop()`."""

    def __init__(self, tls: TLSMaterial | None = None, host: str = "127.0.0.1",
                 token: str | None = None, bookmark_interval: float | None = 60.0) -> None:
        """Serve on `host`, port 0; with `token`, as `require_token(token)`. Idle pod watches
        that allow bookmarks get one every `bookmark_interval` seconds, as kube-apiserver
        sends them about once a minute (`store.bookmark_interval` changes it later)."""
        self.store = ObjectStore(bookmark_interval=bookmark_interval)
        """Pods."""
        self.nodes = ObjectStore("Node", "nodes", namespaced=False)
        self.daemonsets = ObjectStore("DaemonSet", "daemonsets")
        self.auth = Auth(self._exists)
        """Authentication and RBAC, off until a test loads RBAC or issues a token."""
        self.admission = Admission()
        """ValidatingAdmissionPolicies in force on node writes (`admission.load(docs)`)."""
        self._caller = threading.local()
        self._lock = threading.Lock()
        self._posted = threading.Condition(self._lock)
        """Notified when an Event is posted, and on stop."""
        self._faults: list[_Fault] = []
        self._requests: list[RecordedRequest] = []
        self._events: list[dict[str, Any]] = []
        self._token = token
        self._flowing = threading.Event()
        """Clear while watch streams are stalled (`stall_watches`)."""
        self._flowing.set()
        self._stopping = threading.Event()
        self.errors: list[BaseException] = []
        """Unexpected exceptions raised while serving (answered with 500)."""
        self.tls = tls
        self._httpd = _HTTPServer(self, host, tls)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.02,), name="kubeapi", daemon=True
        )  # a short poll interval keeps stop() quick
        self._thread.start()

    # -- where it is --------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def ca_pem(self) -> bytes | None:
        return self.tls.ca_pem if self.tls else None

    @property
    def token(self) -> str | None:
        return self._token

    # -- state --------------------------------------------------------------------------------

    def add_pod(self, pod: Pod) -> Pod:
        """Create a pod (ADDED); fills namespace "default", uid, resourceVersion."""
        return self.store.add(pod)

    def update_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> Pod:
        """Merge-patch a pod as a controller would (MODIFIED); `None` values delete keys."""
        return self.store.update(namespace, name, lambda pod: merge_patch(pod, patch))

    def delete_pod(self, namespace: str, name: str) -> Pod:
        return self.store.delete(namespace, name, None)

    def get_pod(self, namespace: str, name: str) -> Pod:
        return self.store.get(namespace, name)

    def add_node(self, node: dict[str, Any]) -> dict[str, Any]:
        """Create a node (cluster-scoped: no namespace); fills uid and resourceVersion."""
        return self.nodes.add(node)

    def update_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch a node as the kubelet or an admin would; `None` values delete keys."""
        return self.nodes.update("", name, lambda node: merge_patch(node, patch))

    def get_node(self, name: str) -> dict[str, Any]:
        return self.nodes.get("", name)

    def add_daemonset(self, namespace: str, name: str) -> dict[str, Any]:
        """Create a DaemonSet (apps/v1), as `kubectl apply` or `helm install` would."""
        return self.daemonsets.add({"apiVersion": "apps/v1", "kind": "DaemonSet",
                                    "metadata": {"name": name, "namespace": namespace}})

    def delete_daemonset(self, namespace: str, name: str, *, foreground: bool = False) -> None:
        """Delete it: gone at once (background propagation, kubectl's and helm's default), or
        with `foreground` kept with a deletionTimestamp while its pods go."""
        if foreground:
            self.daemonsets.update(namespace, name, lambda ds: merge_patch(ds, {"metadata": {
                "deletionTimestamp": now(), "finalizers": ["foregroundDeletion"]}}))
        else:
            self.daemonsets.delete(namespace, name, None)

    def _exists(self, kind: str, namespace: str, name: str, uid: str) -> bool:
        """Whether the object a token is bound to still exists (the same one: same uid)."""
        store = {"Pod": self.store, "Node": self.nodes}.get(kind)
        if store is None:
            return False
        try:
            return store.get(namespace if kind == "Pod" else "", name)["metadata"]["uid"] == uid
        except ApiError:
            return False

    def compact(self) -> int:
        """Expire all older resourceVersions: a watch from one of them gets a 410 ERROR event."""
        return self.store.compact()

    def bookmark(self) -> None:
        self.store.bookmark()

    @property
    def events(self) -> list[dict[str, Any]]:
        """Events created through either events API, in order (as last PATCHed), less those
        `expire_events` removed."""
        with self._lock:
            return [dict(e) for e in self._events]

    def expire_events(self) -> int:
        """Remove every Event, as the API's event TTL does (a PATCH of one then gets 404)."""
        with self._lock:
            gone = len(self._events)
            self._events.clear()
            return gone

    def wait_for_event(self, predicate: Callable[[dict[str, Any]], bool],
                       timeout: float) -> dict[str, Any] | None:
        """The first Event posted that matches, waiting up to `timeout` s for it (else None)."""
        deadline = time.monotonic() + timeout
        with self._posted:
            while True:
                found = next((e for e in self._events if predicate(e)), None)
                left = deadline - time.monotonic()
                if found is not None or left <= 0 or self._stopping.is_set():
                    return found
                self._posted.wait(left)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def count(self, method: str, path_regex: str) -> int:
        pattern = re.compile(path_regex)
        return sum(1 for r in self.requests if r.method == method and pattern.search(r.path))

    # -- faults -------------------------------------------------------------------------------

    def require_token(self, token: str | None) -> None:
        """Answer 401 unless `Authorization: Bearer <token>` (None: no authentication)."""
        self._token = token

    def fail_next(
        self, path_regex: str, status: int, count: int = 1, method: str | None = None
    ) -> None:
        """Answer the next `count` matching requests with a `Status` of code `status`."""
        self._add_fault(_Fault("fail", re.compile(path_regex), method, count, status=status))

    def delay(
        self, path_regex: str, seconds: float, count: int | None = None, method: str | None = None
    ) -> None:
        """Hold matching requests `seconds` before serving them (all, or the next `count`)."""
        self._add_fault(_Fault("delay", re.compile(path_regex), method, count, seconds=seconds))

    def hang(self, path_regex: str, count: int | None = None, method: str | None = None) -> None:
        """Accept matching requests and never answer them (until `stop()`)."""
        self._add_fault(_Fault("hang", re.compile(path_regex), method, count))

    def stall_watches(self) -> None:
        """Watch streams (open and new) go silent: answered and kept open, but no event and
        no bookmark is written until `release_watches()`, as behind a stuck proxy or a
        wedged watch cache. Other requests are served as usual."""
        self._flowing.clear()

    def release_watches(self) -> None:
        """Stalled watch streams deliver what they held back, and flow again."""
        self._flowing.set()

    def drop_connections(self) -> None:
        """Close every open client connection, as a server does with idle keep-alives."""
        self._httpd.close_connections()

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # -- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._flowing.set()
        with self._posted:
            self._posted.notify_all()
        self.store.close()
        self._httpd.shutdown()
        self._httpd.close_connections()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> KubeApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving (called from handler threads) ------------------------------------------------

    def _add_fault(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, kind: str, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind != kind or (fault.method and fault.method != method):
                    continue
                if not fault.pattern.search(path):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _serve(self, method: str, path: str, query: dict[str, str], headers: Any, body: Any):
        """A `_Reply`, a `_Watch` to stream, or None to drop the connection unanswered."""
        if self._take_fault("hang", method, path):
            self._stopping.wait()
            return None
        delay = self._take_fault("delay", method, path)
        if delay and self._stopping.wait(delay.seconds):
            return None
        self._caller.identity = None
        if self.auth.enabled:
            identity = self.auth.authenticate(headers.get("Authorization"))
            self.auth.authorize(identity, attributes(method, path, query))
            self._caller.identity = identity
        elif self._token is not None and headers.get("Authorization") != f"Bearer {self._token}":
            raise ApiError(401, "Unauthorized")
        fail = self._take_fault("fail", method, path)
        if fail:
            raise _injected(fail.status, path)
        return self._route(method, path, query, headers, body)

    def _route(self, method: str, path: str, query: dict[str, str], headers: Any, body: Any):
        for verb, pattern, handler in _ROUTES:
            match = pattern.fullmatch(path)
            if match and verb == method:
                return handler(self, match.groupdict(), query, headers, body)
        if any(p.fullmatch(path) for _, p, _ in _ROUTES):
            raise ApiError(405, f"the server does not allow this method on {path}")
        raise ApiError(404, "the server could not find the requested resource")

    def _get_pod(self, args: dict[str, str], *_: Any) -> _Reply:
        return _Reply(200, self.store.get(args["ns"], args["name"]))

    def _list_pods(self, args: dict[str, str], query: dict[str, str], *_: Any) -> Any:
        selector = parse_selector(
            args.get("ns"), query.get("fieldSelector", ""), query.get("labelSelector", "")
        )
        if query.get("watch", "").lower() in ("1", "true"):
            timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
            events = self.store.watch(selector, query.get("resourceVersion", ""), timeout)
            bookmarks = query.get("allowWatchBookmarks", "").lower() in ("1", "true")
            return _Watch(events, bookmarks)
        items, rv = self.store.list(selector)
        for item in items:  # the apiserver leaves kind/apiVersion off list items
            item.pop("kind", None)
            item.pop("apiVersion", None)
        body = {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(rv)},
            "items": items,
        }
        return _Reply(200, body)

    def _patch_pod(self, args: dict[str, str], query: dict[str, str], headers: Any,
                   body: Any) -> _Reply:
        return self._patch(self.store, args["ns"], args, query, headers, body)

    def _patch_node(self, args: dict[str, str], query: dict[str, str], headers: Any,
                    body: Any) -> _Reply:
        return self._patch(self.nodes, "", args, query, headers, body)

    def _get_daemonset(self, args: dict[str, str], *_: Any) -> _Reply:
        return _Reply(200, self.daemonsets.get(args["ns"], args["name"]))

    def _create_token(self, args: dict[str, str], _q: Any, _h: Any, body: Any) -> _Reply:
        """A TokenRequest (authentication.k8s.io/v1) for a service account."""
        spec = dict((body or {}).get("spec") or {})
        seconds = int(spec.get("expirationSeconds") or 3600)
        if seconds < TOKEN_MIN_SECONDS:
            raise ApiError(422, "TokenRequest.authentication.k8s.io is invalid: "
                                "spec.expirationSeconds: Invalid value: may not specify a "
                                "duration less than 10 minutes")
        bound = None
        ref = spec.get("boundObjectRef")
        if ref:
            kind, name = ref.get("kind"), ref.get("name", "")
            if kind not in ("Pod", "Node", "Secret"):
                raise ApiError(400, f"cannot bind token for {kind}")
            ns = args["ns"] if kind != "Node" else ""
            store = self.nodes if kind == "Node" else self.store
            obj = store.get(ns, name)
            uid = obj["metadata"]["uid"]
            if ref.get("uid") and ref["uid"] != uid:
                raise ApiError(409, f"the UID in the bound object reference ({ref['uid']}) "
                                    f"does not match the UID in record ({uid})")
            bound = (kind, ns, name, uid)
            spec["boundObjectRef"] = {**ref, "uid": uid}
        token, expires = self.auth.request_token(args["ns"], args["name"], seconds, bound)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        spec["expirationSeconds"] = seconds
        return _Reply(201, {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                            "metadata": {"name": args["name"], "namespace": args["ns"]},
                            "spec": spec, "status": {"token": token,
                                                     "expirationTimestamp": stamp}})

    def _access_review(self, _args: dict[str, str], _q: Any, _h: Any, body: Any) -> _Reply:
        """A SelfSubjectAccessReview: may the caller do what `spec.resourceAttributes` says."""
        attrs = ((body or {}).get("spec") or {}).get("resourceAttributes") or {}
        identity: Identity | None = self._caller.identity
        allowed = identity is None or self.auth.allowed(identity, Attributes(
            attrs.get("verb", ""), attrs.get("group", ""), attrs.get("resource", ""),
            attrs.get("subresource", ""), attrs.get("namespace", ""), attrs.get("name", "")))
        return _Reply(201, {"kind": "SelfSubjectAccessReview",
                            "apiVersion": "authorization.k8s.io/v1",
                            "spec": (body or {}).get("spec") or {},
                            "status": {"allowed": allowed}})

    def _get_node(self, args: dict[str, str], *_: Any) -> _Reply:
        return _Reply(200, self.nodes.get("", args["name"]))

    def _list_nodes(self, _args: dict[str, str], query: dict[str, str], *_: Any) -> _Reply:
        selector = parse_selector(None, query.get("fieldSelector", ""),
                                  query.get("labelSelector", ""))
        items, rv = self.nodes.list(selector)
        for item in items:
            item.pop("kind", None)
            item.pop("apiVersion", None)
        body = {"kind": "NodeList", "apiVersion": "v1",
                "metadata": {"resourceVersion": str(rv)}, "items": items}
        return _Reply(200, body)

    def _patch(self, store: ObjectStore, namespace: str, args: dict[str, str],
               query: dict[str, str], headers: Any, body: Any) -> _Reply:
        """PATCH of an object or its status subresource, as the API server applies it: the
        policies in force admit it or not; `?dryRun=All` answers without storing."""
        content_type = headers.get("Content-Type", "")
        status_only = args.get("sub") == "status"
        identity: Identity | None = self._caller.identity
        dry_run = query.get("dryRun") == "All"

        def change(old: Pod) -> Pod:
            try:
                new = apply_patch(content_type, old, body)
            except PatchError as exc:
                raise ApiError(exc.code, str(exc)) from exc
            uid = new.get("metadata", {}).get("uid")
            if uid and uid != old["metadata"].get("uid"):  # the API server's UID precondition
                raise ApiError(409, f"Precondition failed: UID in precondition: {uid}, UID in "
                                    f"object meta: {old['metadata'].get('uid')}")
            want = new.get("metadata", {}).get("resourceVersion")
            if want != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    f'Operation cannot be fulfilled on {store.resource} "{args["name"]}": the '
                    "object has been modified; please apply your changes to the latest version "
                    "and try again",
                )
            # The status subresource only changes status (and metadata); the main one never does.
            kept = "spec" if status_only else "status"
            new.pop(kept, None)
            if kept in old:
                new[kept] = old[kept]
            if identity is not None:
                self.admission.validate(AdmissionRequest(
                    "UPDATE", "", store.resource, args.get("sub") or "", args["name"],
                    namespace, identity.user_info, dry_run), new, old)
            return new

        if dry_run:
            return _Reply(200, change(store.get(namespace, args["name"])))
        return _Reply(200, store.update(namespace, args["name"], change))

    def _delete_pod(self, args: dict[str, str], _q: Any, _h: Any, body: Any) -> _Reply:
        preconditions = body.get("preconditions") if isinstance(body, dict) else None
        return _Reply(200, self.store.delete(args["ns"], args["name"], preconditions))

    def _create_event(self, args: dict[str, str], _q: Any, _h: Any, body: Any) -> _Reply:
        if not isinstance(body, dict):
            raise ApiError(400, "an event must be a JSON object")
        meta = body.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Event is invalid: metadata.name: Required value")
            meta["name"] = meta["generateName"] + format(self.store.next_rv(), "x")
        meta.update(namespace=args["ns"], resourceVersion=str(self.store.next_rv()))
        meta.setdefault("creationTimestamp", now())
        with self._posted:
            self._events.append(body)
            self._posted.notify_all()
        return _Reply(201, body)


    def _patch_event(self, args: dict[str, str], _q: Any, headers: Any, body: Any) -> _Reply:
        """PATCH of a core/v1 Event (client-go's recorder bumps `count` and `lastTimestamp`
        of an Event it posted before, rather than posting a new one)."""
        with self._posted:
            i = next((i for i, e in enumerate(self._events)
                      if ((e.get("metadata") or {}).get("namespace"),
                          (e.get("metadata") or {}).get("name")) == (args["ns"], args["name"])),
                     None)
            if i is None:
                raise not_found(args["name"], "events")
            event = self._events[i]
            meta = event["metadata"]
            try:
                new = apply_patch(headers.get("Content-Type", ""), event, body)
            except PatchError as exc:
                raise ApiError(exc.code, str(exc)) from exc
            new.setdefault("metadata", {}).update(
                name=meta["name"], namespace=meta["namespace"],
                resourceVersion=str(self.store.next_rv()))
            self._events[i] = new
            self._posted.notify_all()
        return _Reply(200, new)

    def _hold_while_stalled(self) -> bool:
        """Block a watch stream while watches are stalled; False once the server stops."""
        self._flowing.wait()
        return not self._stopping.is_set()


def _injected(status: int, path: str) -> ApiError:
    if status == 404:
        return not_found(path.rstrip("/").rsplit("/", 1)[-1])
    if status == 401:
        return ApiError(401, "Unauthorized")
    return ApiError(status, f"injected failure {status} for {path}")


_ROUTES: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
    ("GET", re.compile(_POD), KubeApiServer._get_pod),
    ("GET", re.compile(_POD + r"/status"), KubeApiServer._get_pod),
    ("GET", re.compile(r"/api/v1/pods"), KubeApiServer._list_pods),
    ("GET", re.compile(_NS + r"/pods"), KubeApiServer._list_pods),
    ("PATCH", re.compile(_POD + r"(?:/(?P<sub>status))?"), KubeApiServer._patch_pod),
    ("DELETE", re.compile(_POD), KubeApiServer._delete_pod),
    ("GET", re.compile(_NODE), KubeApiServer._get_node),
    ("GET", re.compile(_NODE + r"/status"), KubeApiServer._get_node),
    ("GET", re.compile(r"/api/v1/nodes"), KubeApiServer._list_nodes),
    ("PATCH", re.compile(_NODE + r"(?:/(?P<sub>status))?"), KubeApiServer._patch_node),
    ("POST", re.compile(_NS + r"/events"), KubeApiServer._create_event),
    ("PATCH", re.compile(_NS + r"/events/(?P<name>[^/]+)"), KubeApiServer._patch_event),
    ("GET", re.compile(_DAEMONSET), KubeApiServer._get_daemonset),
    ("POST", re.compile(_TOKEN), KubeApiServer._create_token),
    ("POST", re.compile(_ACCESS_REVIEW), KubeApiServer._access_review),
    (
        "POST",
        re.compile(r"/apis/events\.k8s\.io/v1/namespaces/(?P<ns>[^/]+)/events"),
        KubeApiServer._create_event,
    ),
]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: KubeApiServer, host: str, tls: TLSMaterial | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), _Handler)
        self.api = api
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(tls.cert_file, tls.key_file)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's thread: the TLS handshake happens here, not in accept."""
        if self._tls is not None:
            try:
                request.settimeout(10)
                request = self._tls.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except OSError:  # e.g. the client rejected our certificate
                return
        with self._conns_lock:
            self._conns.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self._conns_lock:
                self._conns.discard(request)
            if self._tls is not None:
                request.close()

    def close_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connection-level errors (resets, broken pipes, TLS) are the clients' business."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: tests read `KubeApiServer.requests` instead."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            body = self._body()
            api._record(
                RecordedRequest(
                    method, url.path, query, dict(self.headers.items()), body,
                    self.client_address[:2],
                )
            )  # fmt: skip
            result = api._serve(method, url.path, query, self.headers, body)
        except ApiError as exc:
            result = _Reply(exc.code, exc.status)
        except Exception as exc:  # a bug in the test server: answer 500, keep it for the test
            api.errors.append(exc)
            result = _Reply(500, ApiError(500, f"test server error: {exc!r}").status)
        if result is None:
            self.close_connection = True
        elif isinstance(result, _Watch):
            self._stream(result)
        else:
            self._send(result)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON") from None

    def _send(self, reply: _Reply) -> None:
        data = json.dumps(reply.body).encode()
        self.send_response(reply.code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, watch: _Watch) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            self._chunks(e for e in watch.events if watch.bookmarks or e["type"] != "BOOKMARK")
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True

    def _chunks(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            if not self.server.api._hold_while_stalled():
                raise OSError("server stopping")
            line = json.dumps(event).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
