"""The agent's side of an agent-served ADD or CHECK: `<run dir>/cni.sock`.

The plugin is a thin client (`cni.agent_client`): it sends the call as it received it (the
`CNI_*` environment and stdin, verbatim, framed by `cni.wire`) and the pod's netns as an open
descriptor, and writes back what this server answers: stdout, stderr and the exit status. So
everything the in-process plugin does happens here, with the very same code: `cni.protocol`
validates the environment and the config (same errors), `cni.plugin.Plugin` decides (the agent's
own pods and excluded namespaces too) and programs, with two differences only: the pod comes
from the agent's watch cache when the cached pod is proven to be the one the runtime names (its
UID is the runtime's K8S_POD_UID, and the watch is current; else one GET: `PodCacheSource`),
and the netns is the descriptor received (entered as `/proc/self/fd/N`, shown everywhere as the
runtime's CNI_NETNS), never a path from the request.

Logged like the in-process call (`cni.plugin_log.ServedCallLog`): the call's lines, with the pod,
go back to the plugin as its stderr, into the run dir's `istio-cni.log`, and into this agent's
log through `cni-plugin` (as a `log.sock` report would), the last two after the answer is sent:
nothing from logging is on the pod's critical path. The ADD's event goes into the metrics just
before the answer (counters only), so whoever has the answer sees it counted.

The server defers ("fallback": the plugin does the call itself, with its own retries) whenever it
cannot answer as the in-process path would: the agent is not ready, the pod is neither cached
nor found by one GET (it may not be visible yet; the plugin's lookup retries for that), or
serving it failed for a reason of the agent's own.

Who may ask: only root (`SO_PEERCRED`), over a socket that is 0600 in a 0700 run dir. What is
trusted: nothing in the request is a path the agent opens; the descriptor must pass
`cni.netns_check.check_netns_fd` (a network namespace) and never be the agent's own (which, with
hostNetwork, is the host's): the thin client already refused anything the in-process path would
(`cni.netns_check.open_netns`), so this only stops a client that is not our plugin. Bounded: one
request of at most `wire.MAX_REQUEST` bytes within `REQUEST_DEADLINE` seconds per connection, at
most `MAX_CONNECTIONS` served at once (one more is closed at accept, and its plugin falls back).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cni import netns_check, plugin_log, wire
from cni.errors import CNIError, InvalidNetNS
from cni.plugin import Plugin, run_call
from cni.protocol import parse_cni_args
from node_daemon.httpserve import KeptUnixServer
from node_daemon.logsink import handle_log
from node_daemon.metrics import Metrics

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
"""Calls served at once; one more is closed at accept, and its plugin does the call itself."""
REQUEST_DEADLINE = 5.0
"""Seconds a client has to send its whole request (the plugin sends it in one write)."""
SERVED_COMMANDS = ("ADD", "CHECK")


class Defer(Exception):
    """The agent cannot answer this call as the in-process path would: the plugin does it."""


class PodCacheSource:
    """The agent's pod source for one call. The cached pod answers only when it is proven to be
    the pod the runtime names: its UID is the runtime's K8S_POD_UID (containerd and CRI-O pass
    it; cri-dockerd and others do not) and `cached` returned it, which it does only while the
    watch is current. A name alone proves nothing (a pod deleted and re-created under it is
    another pod), so anything else is exactly one GET; a GET that fails or finds another UID
    than the runtime's defers to the plugin's own lookup (`Defer`)."""

    def __init__(self, cached: Callable[[str], dict[str, Any] | None] | None, api: Any,
                 uid: str, metrics: Metrics | None) -> None:
        self.cached, self.api, self.uid, self.metrics = cached, api, uid, metrics

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        if not self.uid:
            self._missed("no_uid")
        else:
            pod = self.cached(f"{namespace}/{name}") if self.cached is not None else None
            if pod is not None and self._is_named(pod):
                self._count("cache")
                return pod
            self._missed("not_cached" if pod is None else "other_uid")
        if self.api is None:
            raise Defer("pod not cached and the agent has no API client")
        try:
            pod = self.api.get_pod(namespace, name)
        except Exception as exc:  # noqa: BLE001 - any failure: the plugin's lookup retries
            raise Defer(f"get pod {namespace}/{name}: {exc}") from exc
        self._count("get")
        if not self._is_named(pod):
            raise Defer(f"pod {namespace}/{name} has another UID than the runtime's {self.uid}")
        return pod

    def _is_named(self, pod: Any) -> bool:
        if not self.uid:
            return True
        meta = pod.get("metadata") if isinstance(pod, dict) else None
        return isinstance(meta, dict) and meta.get("uid") == self.uid

    def _count(self, source: str) -> None:
        if self.metrics is not None:
            self.metrics.served_pod_source.labels(source=source).inc()

    def _missed(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.served_cache_misses.labels(reason=reason).inc()


class Served:
    """One answered call: the frame to send, then what to log and count once it is sent."""

    __slots__ = ("frame", "result", "lines", "run_dir", "event")

    def __init__(self, frame: bytes, result: str, lines: list[str] | None = None,
                 run_dir: str = "", event: dict[str, Any] | None = None) -> None:
        self.frame, self.result, self.lines = frame, result, lines or []
        self.run_dir, self.event = run_dir, event


class CniService:
    """One served call: the thin client's environment, stdin and netns descriptor in, the
    plugin's stdout, stderr and exit status out (or "fallback")."""

    def __init__(self, metrics: Metrics, ready: Callable[[], tuple[bool, str]],
                 cached: Callable[[str], dict[str, Any] | None] | None = None,
                 api: Any = None) -> None:
        self.metrics, self.ready, self.cached, self.api = metrics, ready, cached, api

    def answer(self, environ: dict[bytes, bytes], stdin: bytes, fd: int) -> Served:
        env = {wire.text(name): wire.text(value) for name, value in environ.items()}
        command = env.get("CNI_COMMAND", "")
        if command not in SERVED_COMMANDS:
            return Served(wire.fallback("not an ADD or CHECK request"), "fallback")
        ok, why = self.ready()
        if not ok:
            return Served(wire.fallback(f"agent not ready: {why}"), "fallback")
        shown = env.get("CNI_NETNS", "")[:4096]
        uid = _runtime_uid(env.get("CNI_ARGS", ""))
        source = PodCacheSource(self.cached, self.api, uid, self.metrics)
        plugin = Plugin(pod_source_factory=lambda conf: source, own_logging=False, netns_fd=fd,
                        warm=True)
        handlers = _ServedHandlers(plugin, fd, shown)
        try:
            with plugin_log.ServedCallLog(handlers.fd_path, shown) as call_log:
                out, _, status = run_call(env, stdin, handlers, reraise=(Exception,))
        except Defer as exc:
            log.debug("deferring %s of %s to the plugin: %s", command, shown, exc)
            return Served(wire.fallback(str(exc)), "fallback")
        except Exception as exc:  # noqa: BLE001 - an agent bug must not fail a pod: defer
            log.error("serving %s of %s failed, deferring to the plugin: %r", command, shown, exc)
            return Served(wire.fallback(f"agent error: {type(exc).__name__}"), "fallback")
        lines = call_log.lines(plugin.log_level)
        stderr = "".join(f"{line}\n" for line in lines).encode()
        return Served(wire.answered(status, out, stderr), "ok" if status == 0 else "error",
                      lines, plugin.run_dir, plugin.event)

    def count(self, served: Served, command: str) -> None:
        """Before the answer (a few counter increments): the call in the served counter, its
        ADD event in the plugin's ADD metrics, so a caller that has its answer sees both."""
        self.metrics.served.labels(command=command if command in SERVED_COMMANDS else "other",
                                   result=served.result).inc()
        if served.event is not None:
            self.metrics.plugin_add(served.event["outcome"], served.event["phases"])

    def log(self, served: Served) -> None:
        """After the answer: the call's lines into the run dir's plugin log and this agent's
        log (as a `log.sock` report would put them)."""
        if served.lines:
            plugin_log.append_lines(served.run_dir, served.lines)
            handle_log(json.dumps(served.lines).encode(), self.metrics)


class _ServedHandlers:
    """The plugin's ADD and CHECK on a handed-over netns: the descriptor is checked first, and
    a CNI error names the netns as the runtime did (CNI_NETNS), not as the agent enters it."""

    def __init__(self, plugin: Plugin, fd: int, shown: str) -> None:
        self.plugin, self.fd, self.shown = plugin, fd, shown
        self.fd_path = f"/proc/self/fd/{fd}"

    def add(self, args: Any) -> dict[str, Any]:
        return self._run(self.plugin.add, args)

    def check(self, args: Any) -> None:
        return self._run(self.plugin.check, args)

    def _run(self, handler: Callable[[Any], Any], args: Any) -> Any:
        try:
            what = f"netns of {self.shown or 'the request'}"
            netns_check.check_netns_fd(self.fd, what)
            if netns_check.is_own_netns(self.fd):
                raise InvalidNetNS(f"{what} is the agent's own (the host's): refused")
            return handler(args)
        except CNIError as exc:
            exc.msg = exc.msg.replace(self.fd_path, self.shown)
            exc.details = exc.details.replace(self.fd_path, self.shown)
            raise


def _runtime_uid(cni_args: str) -> str:
    """The runtime's K8S_POD_UID, read from CNI_ARGS as the plugin reads it
    (`cni.protocol.parse_cni_args`); "" when there is none, or when CNI_ARGS is malformed (the
    plugin then refuses the call before it asks for the pod)."""
    try:
        return parse_cni_args(cni_args).get("K8S_POD_UID", "")
    except CNIError:
        return ""


class CniServer(KeptUnixServer):
    """The agent-served ADD socket at `path`, in a run dir made 0700 (see `KeptUnixServer`).
    `REQUEST_DEADLINE` is measured on `clock` (tests move a clock of their own)."""

    def __init__(self, path: Path, service: CniService, check_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        handler = type("_Handler", (_Handler,), {"service": service,
                                                 "clock": staticmethod(clock)})
        super().__init__(path, handler, "agent-served ADD socket", MAX_CONNECTIONS,
                         check_interval)


class _Handler(socketserver.BaseRequestHandler):
    service: CniService
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def handle(self) -> None:
        sock: socket.socket = self.request
        fds: list[int] = []
        try:
            uid = _peer_uid(sock)
            if uid != 0:
                log.warning("refused a request on the plugin socket from uid %d", uid)
                _send(sock, wire.fallback("only root may use this socket"))
                return
            body, fds = _receive(sock, self.clock() + REQUEST_DEADLINE, self.clock)
            if body is None:
                return
            environ, stdin = wire.parse_request(body)
            if len(fds) != 1:
                _send(sock, wire.fallback(f"expected one netns descriptor, got {len(fds)}"))
                return
            served = self.service.answer(environ, stdin, fds[0])
            self.service.count(served, wire.text(environ.get(b"CNI_COMMAND", b"")))
            _send(sock, served.frame)
            self.service.log(served)
        except (OSError, ValueError) as exc:
            log.debug("plugin connection ended early: %s", exc)
        finally:
            for fd in fds:
                os.close(fd)


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


_OLD_FALLBACK = json.dumps({"result": "fallback",
                            "reason": "plugin and agent speak different protocols"}).encode()


def _receive(sock: socket.socket, deadline: float,
             clock: Callable[[], float]) -> tuple[bytes | None, list[int]]:
    """The request body and the descriptors that came with it (the caller closes them), by
    `deadline` on `clock`; None for a plugin of the earlier (JSON) protocol, which is told to
    fall back in its own framing."""
    sock.settimeout(max(deadline - clock(), 0.001))
    data, fds, _flags, _addr = socket.recv_fds(sock, 65536, 4)
    try:
        if len(data) < wire.HEADER_SIZE:
            data += wire.read_exactly(sock, wire.HEADER_SIZE - len(data), deadline, clock)
        if data[:4] != wire.REQUEST_MAGIC and data[4:5] == b"{":
            sock.sendall(struct.pack(">I", len(_OLD_FALLBACK)) + _OLD_FALLBACK)
            for fd in fds:
                os.close(fd)
            return None, []
        length = wire.body_length(data[:wire.HEADER_SIZE], wire.REQUEST_MAGIC, wire.MAX_REQUEST)
        body = data[wire.HEADER_SIZE:]
        if len(body) < length:
            body += wire.read_exactly(sock, length - len(body), deadline, clock)
        return body[:length], list(fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _send(sock: socket.socket, frame: bytes) -> None:
    try:
        sock.sendall(frame)
    except OSError as exc:
        log.debug("plugin gone before its answer: %s", exc)
