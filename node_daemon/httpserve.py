"""The agent's Unix-socket servers, bounded: threads, bytes and time per connection.

The plugin's log socket and the agent-served ADD socket live in the run dir, 0600 (only root
reaches them); each connection gets a thread, because a handler may block (an ADD programs a
pod). A client that resets, half-sends a request or trickles bytes must still cost a bounded
amount and never a traceback:

- at most `max_connections` connections are served at once; one more is closed at accept
  (`refused` counts them), so 1,500 half-open connections hold `max_connections` threads;
- every connection has a wall-clock deadline covering all its reads (a socket timeout alone
  restarts with every byte a trickling client sends), measured on the handler's `clock`;
- errors a client causes (reset, broken pipe, timeout) are logged at debug in one line.

`KeptUnixServer` is such a socket in the run dir: born 0600, and recreated when the run dir is
wiped. The TCP endpoints (health, metrics), which any pod can reach, are `node_daemon.httploop`.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 32
CONNECTION_DEADLINE = 5.0
_CLIENT_ERRORS = (ConnectionError, TimeoutError, socket.timeout)


class DeadlineReader(io.RawIOBase):
    """A socket's read side that fails with TimeoutError once `deadline` (on `clock`) is past."""

    def __init__(self, sock: socket.socket, deadline: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline
        self._clock = clock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - self._clock()
        if remaining <= 0:
            raise TimeoutError("connection deadline passed")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class BoundedServerMixin(socketserver.ThreadingMixIn):
    """ThreadingMixIn with a cap on concurrent connections and quiet client errors."""

    daemon_threads = True
    block_on_close = False
    max_connections = MAX_CONNECTIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self.refused = 0
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            log.debug("%s: %d connections already open; closing a new one",
                      type(self).__name__, self.max_connections)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One debug line, never a traceback: what reaches here is the client's doing or a
        handler bug that the handler already answered 500 for."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, _CLIENT_ERRORS):
            log.debug("%s: client went away: %s", type(self).__name__, exc)
        else:
            log.warning("%s: request failed: %r", type(self).__name__, exc)


class BoundedHandler(BaseHTTPRequestHandler):
    """Reads through a `DeadlineReader`; writes to a gone client are dropped, not raised."""

    deadline_seconds = CONNECTION_DEADLINE
    timeout = CONNECTION_DEADLINE
    clock: Callable[[], float] = staticmethod(time.monotonic)
    """What `deadline_seconds` is measured on (tests move a clock of their own)."""

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own file: its reference would keep the fd open
        deadline = self.clock() + self.deadline_seconds
        self.rfile = io.BufferedReader(DeadlineReader(self.connection, deadline, self.clock))

    def reply(self, code: int, ctype: str, body: bytes) -> None:
        """Send one response; a client that already hung up is not an error.

        The connection is not closed on a failed write: a client may have pipelined more
        requests and closed without reading (the plugin does), and those are still to be read.
        """
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except _CLIENT_ERRORS:
            self._headers_buffer = []

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """No access log: probes and pod starts would each add a line."""

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("http: " + format, *args)


class _UnixServer(BoundedServerMixin, socketserver.UnixStreamServer):
    request_queue_size = 128  # every pod of a node may start at once; the cap applies after


class KeptUnixServer:
    """A bounded Unix-socket server at `path` that keeps its socket file.

    The socket is created 0600 (under a umask, so there is no moment it is open to others).
    If the file is removed (a wiped tmpfs, an admin's `rm -rf` of the run dir), a watchdog
    rebinds within `check_interval` seconds; `healthy()` says whether the file at `path` is the
    socket served (readiness reports it). `stop()` closes it and removes its file.
    """

    def __init__(self, path: Path, handler: type[socketserver.BaseRequestHandler], what: str,
                 max_connections: int = MAX_CONNECTIONS, check_interval: float = 1.0) -> None:
        self.path, self.what = path, what
        self.rebinds = 0
        self._handler = handler
        self._server_class = type("_Server", (_UnixServer,), {"max_connections": max_connections})
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server, self._thread, self._inode = self._bind()
        self._watchdog = threading.Thread(target=self._watch, args=(check_interval,),
                                          name=f"{what}-watchdog", daemon=True)
        self._watchdog.start()

    def _bind(self) -> tuple[socketserver.BaseServer, threading.Thread, int]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.unlink(self.path)  # a stale socket from a previous run
        except FileNotFoundError:
            pass
        old_umask = os.umask(0o177)
        try:
            server = self._server_class(str(self.path), self._handler)
        finally:
            os.umask(old_umask)
        inode = os.stat(self.path).st_ino
        thread = threading.Thread(target=server.serve_forever, args=(0.1,), name=self.what,
                                  daemon=True)
        thread.start()
        return server, thread, inode

    @property
    def refused(self) -> int:
        """Connections closed at accept because `max_connections` were being served (by the
        socket bound now)."""
        return int(getattr(self._server, "refused", 0))

    def healthy(self) -> bool:
        """True while `path` is the socket this server listens on."""
        try:
            return os.stat(self.path).st_ino == self._inode
        except OSError:
            return False

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            if self.healthy():
                continue
            with self._lock:
                if self._stop.is_set():
                    return
                old = (self._server, self._thread)
                try:
                    self._server, self._thread, self._inode = self._bind()
                except OSError as exc:
                    log.warning("cannot recreate the %s %s: %s", self.what, self.path, exc)
                    continue
                self.rebinds += 1
                log.warning("%s %s was removed; recreated it", self.what, self.path)
            _close(*old)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            _close(self._server, self._thread)
        self._watchdog.join(timeout=5)
        if self.healthy():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _close(server: socketserver.BaseServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
