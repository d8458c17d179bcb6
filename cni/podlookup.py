"""Pod lookup: the plugin's single `GET /api/v1/namespaces/{ns}/pods/{name}`, with bounded retries.

Hot path: stdlib `http.client` + `ssl` only (no requests/urllib3/kubernetes, whose imports cost
more than the whole lookup). The TLS context is built once per `HTTPTransport`, and one
connection is reused across retries.

Retries follow upstream (30 attempts, 1 s apart: a pod can be created before the API server
serves it) but are also bounded by an overall deadline shorter than the runtime's CNI timeout.
Each attempt is a wall-clock bound (its timeout, capped by what is left of the deadline) on every
socket operation together, so neither a hanging nor a trickling server can eat the ADD, and the
answer is capped at `MAX_POD_BYTES`. Failures are translated here, once: transient (connection,
timeout, 5xx, 429) → `TryAgainLater`; token rejected (401/403), TLS verification failure, an
answer too large to be a pod, a pod still missing after every attempt → `PodLookupFailed`; an
unusable TLS setup in the kubeconfig → `PluginNotAvailable`. No message ever contains the
bearer token.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from cni.config import POD_LOOKUP_ATTEMPTS, POD_LOOKUP_DEADLINE, POD_LOOKUP_INTERVAL
from cni.errors import CNIError, PluginNotAvailable, PodLookupFailed, TryAgainLater
from cni.fileread import read_regular_file
from cni.kubeconfig import MAX_FILE_BYTES, KubeAccess

log = logging.getLogger(__name__)

_MESSAGE_LIMIT = 300


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of one lookup: upstream's 30 × 1 s, within `deadline` seconds overall."""

    attempts: int = POD_LOOKUP_ATTEMPTS
    interval: float = POD_LOOKUP_INTERVAL
    """Pause between attempts (seconds)."""
    deadline: float = POD_LOOKUP_DEADLINE
    """Overall budget (seconds); why 45 s by default: `cni.config.POD_LOOKUP_DEADLINE`."""
    timeout: float = 5.0
    """Wall-clock bound of one attempt, all its socket operations together (seconds), further
    capped by the deadline."""

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.deadline <= 0 or self.timeout <= 0 or self.interval < 0:
            raise ValueError(f"invalid {self!r}: need attempts >= 1, deadline, timeout > 0")


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    body: bytes


class Transport(Protocol):
    """The HTTP seam: one GET. Raises `OSError`/`http.client.HTTPException` if no response."""

    def get(self, path: str, timeout: float) -> Response: ...


class PodSource(Protocol):
    """Where the plugin gets its pod: the API server, or later the node agent's socket."""

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]: ...


class HTTPTransport:
    """`Transport` over one reusable `http.client` connection to the kubeconfig's server.

    Each `get` is bounded in wall-clock time by its `timeout`, not per socket operation: the
    connection's sockets re-arm their timeout to what is left before every connect, TLS
    handshake, send and receive, so a server trickling one byte at a time cannot stretch a GET
    past it. The answer's body is capped at `MAX_POD_BYTES`.
    """

    def __init__(self, access: KubeAccess) -> None:
        parts = urlsplit(access.server)
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Accept": "application/json", "User-Agent": "istio-cni-py"}
        if access.token:
            self._headers["Authorization"] = f"Bearer {access.token}"
        https = parts.scheme == "https"
        context = tls_context(access) if https else None
        self._deadline = _Deadline()
        self._conn = _Connection(
            parts.hostname or "", parts.port or (443 if https else 80), self._deadline, context
        )

    def get(self, path: str, timeout: float) -> Response:
        self._deadline.start(timeout)
        reused = self._conn.sock is not None
        try:
            return self._get_once(path)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # The server closed our idle keep-alive connection: a new one is not a retry, but
            # it shares this GET's deadline.
            return self._get_once(path)

    def _get_once(self, path: str) -> Response:
        conn = self._conn
        try:
            conn.request("GET", self._prefix + path, headers=self._headers)
            resp = conn.getresponse()
            body = _read_body(resp)
        except BaseException:
            self.close()  # the connection's state is unknown: start afresh next time
            raise
        if resp.will_close:
            self.close()
        return Response(resp.status, resp.reason, body)

    def close(self) -> None:
        self._conn.close()


MAX_POD_BYTES = 8 * 1024 * 1024
"""The largest answer we read (and `explain --pod-file` reads): 8 MiB, over twice the largest
pod the API server can hold.

A pod is written to the API server as a request body of at most 3 MiB (the API server's limit)
and stored in etcd within its 1.5 MiB request limit; the JSON we get back adds status and
managedFields but stays within a few MiB. An answer larger than this is not a pod: reading it
would only grow the plugin (an endless body once took it to 4 GB)."""


class ResponseTooLarge(http.client.HTTPException):
    """The answer's body is over `MAX_POD_BYTES` (announced, or seen while reading)."""


def _read_body(resp: http.client.HTTPResponse) -> bytes:
    announced = resp.length  # Content-Length, or None (chunked or until the server closes)
    if announced is not None and announced > MAX_POD_BYTES:
        raise ResponseTooLarge(
            f"the answer announces {announced} bytes, more than the {MAX_POD_BYTES} bytes "
            "any pod can take"
        )
    body = resp.read(MAX_POD_BYTES + 1)
    if len(body) > MAX_POD_BYTES:
        raise ResponseTooLarge(
            f"the answer is larger than the {MAX_POD_BYTES} bytes any pod can take"
        )
    return body


class _Deadline:
    """The wall-clock end of the current GET, shared by the connection and its sockets."""

    def __init__(self) -> None:
        self._at = 0.0

    def start(self, seconds: float) -> None:
        self._at = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left; `TimeoutError` once there are none (as a socket timeout would)."""
        left = self._at - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        return left


class _Bounded:
    """Socket mixin: before each blocking operation, the timeout becomes what is left.

    A socket timeout bounds one operation; http.client reads the status line, the headers and
    the body in many receives, so only re-arming before each one bounds the whole GET.
    (`sendall`, `connect` and the TLS handshake each honour one timeout for all of their work.)
    """

    deadline: _Deadline | None = None

    def _arm(self) -> None:
        if self.deadline is not None:
            self.settimeout(self.deadline.remaining())  # type: ignore[attr-defined]

    def connect(self, address: Any) -> None:
        self._arm()
        super().connect(address)  # type: ignore[misc]

    def do_handshake(self, *args: Any) -> None:
        self._arm()
        super().do_handshake(*args)  # type: ignore[misc]

    def recv(self, *args: Any) -> bytes:
        self._arm()
        return super().recv(*args)  # type: ignore[misc, no-any-return]

    def recv_into(self, *args: Any) -> int:
        self._arm()
        return super().recv_into(*args)  # type: ignore[misc, no-any-return]

    def send(self, *args: Any) -> int:
        self._arm()
        return super().send(*args)  # type: ignore[misc, no-any-return]

    def sendall(self, *args: Any) -> None:
        self._arm()
        super().sendall(*args)  # type: ignore[misc]


class _BoundedSocket(_Bounded, socket.socket):
    pass


class _BoundedSSLSocket(_Bounded, ssl.SSLSocket):
    pass


class _Connection(http.client.HTTPConnection):
    """An HTTP(S) connection whose every socket operation ends by the shared deadline.

    Plain `HTTPConnection` with our own `connect`: the socket is a `_BoundedSocket`, wrapped
    (for https) into a `_BoundedSSLSocket` whose handshake runs under the same deadline.
    """

    def __init__(
        self, host: str, port: int, deadline: _Deadline, context: ssl.SSLContext | None
    ) -> None:
        super().__init__(host, port)
        self._deadline = deadline
        self._context = context
        if context is not None:
            context.sslsocket_class = _BoundedSSLSocket

    def connect(self) -> None:
        sock = _open_socket(self.host, self.port, self._deadline)
        if self._context is not None:
            try:
                tls = self._context.wrap_socket(
                    sock, server_hostname=self.host, do_handshake_on_connect=False
                )
            except BaseException:
                sock.close()
                raise
            assert isinstance(tls, _BoundedSSLSocket)
            tls.deadline = self._deadline
            try:
                tls.do_handshake()
            except BaseException:
                tls.close()
                raise
            sock = tls
        self.sock = sock


def _open_socket(host: str, port: int, deadline: _Deadline) -> socket.socket:
    """`socket.create_connection`, with `_BoundedSocket`s (the name is resolved first: the
    kubeconfig's server is normally an IP address, which resolves without a lookup)."""
    last: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = _BoundedSocket(family, kind, proto)
        sock.deadline = deadline
        try:
            sock.connect(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last or OSError(f"{host}:{port}: no address to connect to")


def tls_context(access: KubeAccess) -> ssl.SSLContext:
    """The client TLS context the kubeconfig asks for; a bad CA/cert is `PluginNotAvailable`.

    The files the kubeconfig names are read here, bounded and refusing anything but a regular
    file (`cni.fileread`), and handed to `ssl` as data: OpenSSL would open a FIFO and block.
    """
    try:
        if access.insecure_skip_tls_verify:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ca = access.ca_data or _read_named(access, "certificate-authority", access.ca_file)
            # PEM text; like OpenSSL's and Go's PEM readers, ignore what surrounds the blocks.
            cadata = ca.decode("ascii", "ignore") if ca else None
            # With a CA given, trust only it (kubectl's behaviour), not the system store.
            ctx = ssl.create_default_context(cadata=cadata)
        _load_client_cert(ctx, access)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise PluginNotAvailable(
            f"load kubeconfig {access.source}: TLS settings unusable: {exc}"
        ) from exc
    return ctx


def _read_named(access: KubeAccess, key: str, path: str | None) -> bytes | None:
    """The file the kubeconfig names under `key`, or None; a clear error if unreadable."""
    if path is None:
        return None
    try:
        return read_regular_file(path, MAX_FILE_BYTES)
    except OSError as exc:
        raise PluginNotAvailable(
            f"load kubeconfig {access.source}: cannot read {key} {path}: "
            f"{exc.strerror or exc}"
        ) from exc


def _load_client_cert(ctx: ssl.SSLContext, access: KubeAccess) -> None:
    cert = access.client_cert_data or _read_named(
        access, "client-certificate", access.client_cert_file
    )
    if not cert:
        return
    key = access.client_key_data or _read_named(access, "client-key", access.client_key_file)
    import tempfile  # rare path: ssl only loads a cert chain from files

    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for file, data in ((cert_file, cert), (key_file, key)):
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data or b"")
        ctx.load_cert_chain(cert_file, key_file if key else None)


def pod_path(namespace: str, name: str) -> str:
    # a byte of CNI_ARGS that is not UTF-8 goes into the path as that byte, %-escaped
    ns, pod = (quote(part, safe="", errors="surrogateescape") for part in (namespace, name))
    return f"/api/v1/namespaces/{ns}/pods/{pod}"


def get_pod(
    access: KubeAccess,
    namespace: str,
    name: str,
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    transport: Transport | None = None,
) -> dict[str, Any]:
    """Fetch the pod as a dict, retrying within `policy`; failures are `CNIError`s."""
    lookup = _Lookup(access, namespace, name, policy, sleep, clock)
    if transport is not None:
        return lookup.run(transport)
    owned = HTTPTransport(access)
    try:
        return lookup.run(owned)
    finally:
        owned.close()


class ApiPodSource:
    """`PodSource` backed by the API server; keeps its connection between lookups."""

    def __init__(self, access: KubeAccess, policy: RetryPolicy | None = None) -> None:
        self._access = access
        self._policy = policy or RetryPolicy()
        self._transport: HTTPTransport | None = None

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        if self._transport is None:
            self._transport = HTTPTransport(self._access)
        return get_pod(self._access, namespace, name, self._policy, transport=self._transport)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


@dataclass(frozen=True)
class _Failure:
    """One failed attempt. `kind`: transient | not_found | fatal."""

    kind: str
    detail: str
    cause: BaseException | None = None


@dataclass
class _Lookup:
    access: KubeAccess
    namespace: str
    name: str
    policy: RetryPolicy
    sleep: Callable[[float], None]
    clock: Callable[[], float]

    def run(self, transport: Transport) -> dict[str, Any]:
        path = pod_path(self.namespace, self.name)
        start = self.clock()
        attempt, last = 0, _Failure("transient", "no attempt made within the deadline")
        while attempt < self.policy.attempts:
            remaining = self.policy.deadline - (self.clock() - start)
            if remaining <= 0:
                break
            attempt += 1
            outcome = _attempt(transport, path, min(self.policy.timeout, remaining))
            if not isinstance(outcome, _Failure):
                return outcome
            last = outcome
            if last.kind == "fatal":
                raise self._error(PodLookupFailed, f"GET {path}: {last.detail}", last)
            self._note(attempt, path, last)
            left = self.policy.deadline - (self.clock() - start)
            if attempt < self.policy.attempts and left > 0:
                self.sleep(min(self.policy.interval, left))
        elapsed = self.clock() - start
        summary = (
            f"gave up after {attempt} attempt(s) in {elapsed:.1f}s "
            f"(GET {path}): last error: {last.detail}"
        )
        cls = PodLookupFailed if last.kind == "not_found" else TryAgainLater
        raise self._error(cls, summary, last)

    def _note(self, attempt: int, path: str, failure: _Failure) -> None:
        detail = _redact(failure.detail, self.access.token)
        if attempt == 1:
            log.warning(
                "get pod %s/%s (GET %s) failed (attempt 1 of up to %d within %.0fs): %s",
                self.namespace,
                self.name,
                path,
                self.policy.attempts,
                self.policy.deadline,
                detail,
            )
        else:
            log.debug(
                "get pod %s/%s attempt %d failed: %s", self.namespace, self.name, attempt, detail
            )

    def _error(self, cls: type[CNIError], what: str, failure: _Failure) -> CNIError:
        msg = f"get pod {self.namespace}/{self.name} from {self.access.server}: {what}"
        exc = cls(_redact(msg, self.access.token))
        exc.__cause__ = failure.cause
        return exc


def _attempt(transport: Transport, path: str, timeout: float) -> dict[str, Any] | _Failure:
    try:
        resp = transport.get(path, timeout)
    except ssl.SSLCertVerificationError as exc:
        reason = f"certificate verify failed: {exc.verify_message}" if exc.verify_message else exc
        return _Failure(
            "fatal",
            f"TLS verification of the API server failed: {reason} "
            "(check the kubeconfig's certificate-authority)",
            exc,
        )
    except TimeoutError as exc:
        return _Failure("transient", f"timed out after {timeout:.2f}s", exc)
    except ResponseTooLarge as exc:  # no pod is that large: asking again would not help
        return _Failure("fatal", str(exc), exc)
    except (OSError, http.client.HTTPException) as exc:
        return _Failure("transient", f"{type(exc).__name__}: {exc}", exc)
    return _classify(resp)


def _classify(resp: Response) -> dict[str, Any] | _Failure:
    status = resp.status
    if status == 200:
        try:
            pod = json.loads(resp.body)
        except ValueError:
            pod = None
        if isinstance(pod, dict):
            return pod
        return _Failure("transient", "200 OK but the body is not a JSON object")
    detail = f"{status} {resp.reason}{_status_message(resp.body)}"
    if status == 401:
        return _Failure(
            "fatal",
            f"the API server rejected the token ({detail}): it may have expired or been revoked",
        )
    if status == 403:
        return _Failure("fatal", f"access denied ({detail})")
    if status == 404:
        return _Failure("not_found", detail)
    if status == 429 or status >= 500:
        return _Failure("transient", detail)
    return _Failure("fatal", detail)


def _status_message(body: bytes) -> str:
    """`: <message>` from a Kubernetes Status body, truncated; empty if there is none."""
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    message = doc.get("message") if isinstance(doc, dict) else None
    if not isinstance(message, str) or not message:
        return ""
    return ": " + message[:_MESSAGE_LIMIT]


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "<redacted>") if token else text
