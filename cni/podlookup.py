"""Pod lookup: the plugin's single `GET /api/v1/namespaces/{ns}/pods/{name}`, with bounded retries.

Hot path: stdlib `http.client` + `ssl` only (no requests/urllib3/kubernetes, whose imports cost
more than the whole lookup). The TLS context is built once per `HTTPTransport`, and one
connection is reused across retries.

Retries follow upstream (30 attempts, 1 s apart: a pod can be created before the API server
serves it) but are also bounded by an overall deadline shorter than the runtime's CNI timeout,
and each attempt's socket timeout is capped by what is left of it, so a hanging server cannot eat
the ADD. Failures are translated here, once: transient (connection, timeout, 5xx, 429) →
`TryAgainLater`; token rejected (401/403), TLS verification failure, a pod still missing after
every attempt → `PodLookupFailed`; an unusable TLS setup in the kubeconfig → `PluginNotAvailable`.
No message ever contains the bearer token.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from cni.config import POD_LOOKUP_ATTEMPTS, POD_LOOKUP_DEADLINE, POD_LOOKUP_INTERVAL
from cni.errors import CNIError, PluginNotAvailable, PodLookupFailed, TryAgainLater
from cni.kubeconfig import KubeAccess

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
    """Socket timeout of one attempt (seconds), further capped by the deadline."""

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
    """`Transport` over one reusable `http.client` connection to the kubeconfig's server."""

    def __init__(self, access: KubeAccess) -> None:
        parts = urlsplit(access.server)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self._headers = {"Accept": "application/json", "User-Agent": "istio-cni-py"}
        if access.token:
            self._headers["Authorization"] = f"Bearer {access.token}"
        self._context = tls_context(access) if self._https else None
        self._conn: http.client.HTTPConnection | None = None

    def get(self, path: str, timeout: float) -> Response:
        reused = self._conn is not None and self._conn.sock is not None
        try:
            return self._get_once(path, timeout)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # The server closed our idle keep-alive connection: a new one is not a retry.
            return self._get_once(path, timeout)

    def _get_once(self, path: str, timeout: float) -> Response:
        conn = self._connection(timeout)
        try:
            conn.request("GET", self._prefix + path, headers=self._headers)
            resp = conn.getresponse()
            body = resp.read()
        except BaseException:
            self.close()  # the connection's state is unknown: start afresh next time
            raise
        if resp.will_close:
            self.close()
        return Response(resp.status, resp.reason, body)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._context is not None:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout, context=self._context
                )
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        self._conn.timeout = timeout
        if self._conn.sock is not None:
            self._conn.sock.settimeout(timeout)
        return self._conn


def tls_context(access: KubeAccess) -> ssl.SSLContext:
    """The client TLS context the kubeconfig asks for; a bad CA/cert is `PluginNotAvailable`."""
    try:
        if access.insecure_skip_tls_verify:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            cadata = access.ca_data.decode("ascii") if access.ca_data else None
            # With a CA given, trust only it (kubectl's behaviour), not the system store.
            ctx = ssl.create_default_context(cafile=access.ca_file, cadata=cadata)
        _load_client_cert(ctx, access)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise PluginNotAvailable(
            f"load kubeconfig {access.source}: TLS settings unusable: {exc}"
        ) from exc
    return ctx


def _load_client_cert(ctx: ssl.SSLContext, access: KubeAccess) -> None:
    if access.client_cert_file:
        ctx.load_cert_chain(access.client_cert_file, access.client_key_file)
    elif access.client_cert_data:
        import tempfile  # rare path: ssl only loads a cert chain from files

        with tempfile.TemporaryDirectory() as tmp:
            cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            for file, data in ((cert, access.client_cert_data), (key, access.client_key_data)):
                fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data or b"")
            ctx.load_cert_chain(cert, key if access.client_key_data else None)


def pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"


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
