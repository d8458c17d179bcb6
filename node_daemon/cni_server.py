"""The agent's side of an agent-served ADD or CHECK: `<run dir>/cni.sock`.

The plugin (`cni.agent_client`) sends the call and the pod's netns as an open descriptor; this
server runs the very same `cni.plugin.Plugin` on it, in a thread, with two differences only: the
pod comes from the agent's watch cache when the cached pod is proven to be the one the runtime
names (its UID is the runtime's K8S_POD_UID, and the watch is current; else one GET), and the
netns is the descriptor received (`/proc/self/fd/N`), never a path from the request.
The answer is the outcome, or the CNI error (code, msg, details) the plugin then returns as its
own; the ADD's event goes straight into the agent's metrics.

The server defers ("fallback": the plugin does the call itself, with its own retries) whenever it
cannot answer as the in-process path would: the agent is not ready, or the pod is neither cached
nor found by one GET (it may not be visible yet; the plugin's lookup retries for that).

Who may ask: only root (`SO_PEERCRED`), over a socket that is 0600 in a 0700 run dir. What is
trusted: nothing in the request is a path the agent opens; the descriptor must be a network
namespace, and never the agent's own (which, with hostNetwork, is the host's). Bounded: one
request of at most `MAX_REQUEST` bytes within `REQUEST_DEADLINE` seconds per connection, at most
`MAX_CONNECTIONS` served at once (one more is closed at accept, and its plugin falls back).
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

from cni import agent_client, netns
from cni.errors import CNIError
from cni.plugin import Plugin
from cni.protocol import parse_request
from node_daemon.httpserve import KeptUnixServer
from node_daemon.metrics import Metrics

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
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


class CniService:
    """One served call: the request and its netns descriptor in, the answer out."""

    def __init__(self, metrics: Metrics, ready: Callable[[], tuple[bool, str]],
                 cached: Callable[[str], dict[str, Any] | None] | None = None,
                 api: Any = None) -> None:
        self.metrics, self.ready, self.cached, self.api = metrics, ready, cached, api
        self._own_netns = os.stat("/proc/self/ns/net")

    def answer(self, request: Any, fd: int) -> dict[str, Any]:
        if not isinstance(request, dict) or request.get("command") not in SERVED_COMMANDS:
            return {"result": "fallback", "reason": "not an ADD or CHECK request"}
        ok, why = self.ready()
        if not ok:
            return {"result": "fallback", "reason": f"agent not ready: {why}"}
        shown = str(request.get("netns", ""))[:4096]
        try:
            self._check_fd(fd, shown)
            env = {
                "CNI_COMMAND": request["command"],
                "CNI_CONTAINERID": str(request.get("containerID", "")),
                "CNI_NETNS": f"/proc/self/fd/{fd}",
                "CNI_IFNAME": str(request.get("ifname", "")),
                "CNI_ARGS": str(request.get("args", "")),
                "CNI_PATH": str(request.get("path", "")),
            }
            args = parse_request(env, json.dumps(request.get("conf")).encode())
            uid = _cni_arg(args.args, "K8S_POD_UID")
            source = PodCacheSource(self.cached, self.api, uid, self.metrics)
            plugin = Plugin(pod_source_factory=lambda conf: source, via_agent=False,
                            own_logging=False)
            try:
                if args.command == "ADD":
                    plugin.add(args)
                else:
                    plugin.check(args)
            finally:
                if plugin.event is not None:
                    self.metrics.plugin_add(plugin.event["outcome"], plugin.event["phases"])
        except Defer as exc:
            log.debug("deferring %s of %s to the plugin: %s", request.get("command"), shown, exc)
            return {"result": "fallback", "reason": str(exc)}
        except CNIError as exc:
            fd_path = f"/proc/self/fd/{fd}"
            return {"result": "error", "code": exc.code, "msg": exc.msg.replace(fd_path, shown),
                    "details": exc.details.replace(fd_path, shown)}
        except Exception as exc:  # noqa: BLE001 - an agent bug must not fail a pod: defer
            log.error("serving %s of %s failed, deferring to the plugin: %r",
                      request.get("command"), shown, exc)
            return {"result": "fallback", "reason": f"agent error: {type(exc).__name__}"}
        event = plugin.event or {}
        return {"result": "ok", "outcome": event.get("outcome", "checked"),
                "reason": event.get("reason", "")}

    def _check_fd(self, fd: int, shown: str) -> None:
        netns.check_netns_fd(fd, f"netns of {shown or 'the request'}")
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) == (self._own_netns.st_dev, self._own_netns.st_ino):
            raise netns.InvalidNetNS(
                f"netns of {shown or 'the request'} is the agent's own (the host's): refused")


def _cni_arg(raw: str, key: str) -> str:
    for item in raw.split(";"):
        name, _, value = item.partition("=")
        if name == key:
            return value
    return ""


class CniServer(KeptUnixServer):
    """The agent-served ADD socket at `path`, in a run dir made 0700 (see `KeptUnixServer`)."""

    def __init__(self, path: Path, service: CniService, check_interval: float = 1.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        handler = type("_Handler", (_Handler,), {"service": service})
        super().__init__(path, handler, "agent-served ADD socket", MAX_CONNECTIONS,
                         check_interval)


class _Handler(socketserver.BaseRequestHandler):
    service: CniService

    def handle(self) -> None:
        sock: socket.socket = self.request
        fds: list[int] = []
        try:
            uid = _peer_uid(sock)
            if uid != 0:
                log.warning("refused a request on the plugin socket from uid %d", uid)
                _send(sock, {"result": "fallback", "reason": "only root may use this socket"})
                return
            request, fds = _receive(sock, time.monotonic() + REQUEST_DEADLINE)
            if len(fds) != 1:
                _send(sock, {"result": "error", "code": 8,
                             "msg": f"expected one netns descriptor, got {len(fds)}"})
                return
            answer = self.service.answer(request, fds[0])
            command = request.get("command") if isinstance(request, dict) else None
            self.service.metrics.served.labels(
                command=command if command in SERVED_COMMANDS else "other",
                result=answer["result"]).inc()
            _send(sock, answer)
        except (OSError, ValueError) as exc:
            log.debug("plugin connection ended early: %s", exc)
        finally:
            for fd in fds:
                os.close(fd)


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _receive(sock: socket.socket, deadline: float) -> tuple[Any, list[int]]:
    """The request frame and the descriptors that came with it (the caller closes them)."""
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    data, fds, _flags, _addr = socket.recv_fds(sock, 65536, 4)
    try:
        if len(data) < 4:
            data += _more(sock, 4 - len(data), deadline)
        (length,) = struct.unpack(">I", data[:4])
        if length > agent_client.MAX_REQUEST:
            raise ValueError(f"request of {length} bytes is over the limit")
        body = data[4:]
        if len(body) < length:
            body += _more(sock, length - len(body), deadline)
        return json.loads(body[:length]), list(fds)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _more(sock: socket.socket, count: int, deadline: float) -> bytes:
    return agent_client.read_exactly(sock, count, deadline)


def _send(sock: socket.socket, answer: dict[str, Any]) -> None:
    try:
        sock.sendall(agent_client.frame(answer))
    except OSError as exc:
        log.debug("plugin gone before its answer: %s", exc)
