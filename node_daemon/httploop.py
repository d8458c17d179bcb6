"""The agent's TCP endpoints (health :8000, metrics :15014): GET-only HTTP in one thread.

These ports listen on the pod IP, so any pod may connect. The kubelet's probes must be answered
whatever the others do, and a threaded server with a cap cannot promise that: its slots are
filled by whoever connects first and sends nothing (40 idle sockets made every probe fail, and
six failed liveness probes restart the agent). Here one thread multiplexes every connection
over a selector, so an idle one costs a socket and a small record, not a thread, and:

- a connection must deliver its whole request head (at most `MAX_HEAD` bytes) within
  `HEADER_DEADLINE` seconds of being accepted, and be done (answer written) within
  `CONNECTION_DEADLINE`: wall-clock deadlines, so a client trickling a byte a second gains
  nothing;
- one source address holds at most `MAX_PER_PEER` connections and the server at most
  `MAX_CONNECTIONS`. A new connection is always accepted: past a limit, the *oldest* connection
  of that address (or, at the server's limit, of the busiest address) is closed instead. A
  client that sends its request at once, as the kubelet does, is answered as soon as its bytes
  arrive, so to crowd a probe out an attacker would have to share the node's address *and*
  open connections faster than the probe's request follows its handshake;
- the head is read as soon as a connection is accepted and the answer written in the same
  pass, before deadlines are enforced: a loop that was not scheduled for a while answers what
  arrived before it expires anything;
- one request per connection (`Connection: close`): no keep-alive for an idle client to hold.

Routes run in the loop's thread, so they must be quick and never block (readiness reads flags
and stats a few files; metrics renders text). Without a NetworkPolicy these ports are open to
every pod (`networkpolicy.yaml`, docs/deploy.md).
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 256
"""Open connections per server; at the limit the busiest address's oldest one is closed."""
MAX_PER_PEER = 16
"""Open connections per source address; past it that address's oldest one is closed. The node's
own traffic (the kubelet's two probes, at most one at a time each) needs two."""
HEADER_DEADLINE = 2.0
"""Seconds from accept to the end of the request head. The kubelet sends it with the handshake;
its probes time out after 1 s (readiness, default) or 5 s (our liveness)."""
CONNECTION_DEADLINE = 10.0
"""Seconds from accept until the answer is written (a scraper that stops reading)."""
MAX_HEAD = 8192
"""Bytes of a request head, request line and headers, including the blank line that ends it."""
ACCEPTS_PER_PASS = 128
"""Connections accepted per pass of the loop, so a connect flood cannot starve the answers."""
REPORT_INTERVAL = 60.0
"""At most one warning per this many seconds about connections closed by a limit."""

Route = Callable[[], tuple[int, str, bytes]]
"""Returns (status, content type, body)."""
Clock = Callable[[], float]


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    fd: int
    peer: str
    born: float
    head: bytearray = field(default_factory=bytearray)
    out: memoryview | None = None
    """The answer still to be written; None while the head is being read."""


@dataclass
class Counters:
    """Connections by what became of them (read from other threads for tests and reports)."""

    accepted: int = 0
    answered: int = 0
    evicted: int = 0
    """Closed to make room: the oldest of an address over `max_per_peer`, or of the busiest
    address at `max_connections`."""
    expired: int = 0
    """Closed at `header_deadline` (head incomplete) or `connection_deadline` (answer unwritten)."""
    dropped: int = 0
    """Closed by the client before its answer, or on a socket error."""


class LoopServer:
    """A GET-only HTTP server for a fixed set of paths, every connection in one thread.

    `clock` (monotonic seconds) is what the deadlines are measured with; tests pass a clock they
    move by hand and call `poke()` so the loop looks at it again.
    """

    def __init__(self, host: str, port: int, routes: dict[str, Route], name: str, *,
                 max_connections: int = MAX_CONNECTIONS, max_per_peer: int = MAX_PER_PEER,
                 header_deadline: float = HEADER_DEADLINE,
                 connection_deadline: float = CONNECTION_DEADLINE,
                 clock: Clock = time.monotonic) -> None:
        self.name = name
        self.routes = dict(routes)
        self.max_connections, self.max_per_peer = max_connections, max_per_peer
        self.header_deadline = header_deadline
        self.connection_deadline = max(connection_deadline, header_deadline)
        self.counters = Counters()
        self.iterations = 0
        """Passes of the loop so far: a test that moved the clock waits for two more."""
        self._clock = clock
        self._conns: dict[int, _Conn] = {}  # by fd, oldest first
        self._by_peer: dict[str, dict[int, _Conn]] = {}  # each oldest first
        self._reported = (0, 0)  # (evicted, expired) at the last warning
        self._next_report = clock() + REPORT_INTERVAL
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family,
                                              backlog=socket.SOMAXCONN)
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ)
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def open_connections(self, peer: str | None = None) -> int:
        """Connections open now, all or from source address `peer`."""
        if peer is None:
            return len(self._conns)
        return len(self._by_peer.get(peer, ()))

    def poke(self) -> None:
        """Wake the loop (after a test moved its clock, or to stop)."""
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a full wake pipe already wakes it

    def stop(self) -> None:
        self._stopping = True
        self.poke()
        self._thread.join(timeout=5)
        for conn in list(self._conns.values()):
            self._close(conn)
        self._sel.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    # --- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        timeout: float | None = None
        while not self._stopping:
            for key, mask in self._sel.select(timeout):
                conn = key.data
                if conn is not None and self._conns.get(conn.fd) is not conn:
                    continue  # closed earlier in this pass (made room for another)
                try:
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    elif mask & selectors.EVENT_WRITE:
                        self._write(conn)
                    else:
                        self._read(conn)
                except Exception as exc:  # a bug must cost one connection, not the endpoint
                    log.warning("%s: %r", self.name, exc)
                    if conn is not None:
                        self._close(conn)
            timeout = self._sweep()
            self._report()
            self.iterations += 1

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_PASS):
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the backlog keeps them for later
                log.warning("%s: accept failed: %s", self.name, exc)
                return
            sock.setblocking(False)
            conn = _Conn(sock, sock.fileno(), str(addr[0]), self._clock())
            self._make_room(conn.peer)
            self._conns[conn.fd] = conn
            self._by_peer.setdefault(conn.peer, {})[conn.fd] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)
            self.counters.accepted += 1
            self._read(conn)  # the request usually came with the handshake

    def _make_room(self, peer: str) -> None:
        """Close the oldest connection of `peer` if it is at its limit, else of the busiest
        address if the server is at its limit."""
        mine = self._by_peer.get(peer, {})
        if len(mine) >= self.max_per_peer:
            victim = next(iter(mine.values()))
        elif len(self._conns) >= self.max_connections:
            victim = next(iter(max(self._by_peer.values(), key=len).values()))
        else:
            return
        self.counters.evicted += 1
        self._close(victim)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(MAX_HEAD + 1 - len(conn.head))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            self._drop(conn)
            return
        conn.head += data
        size = _head_size(conn.head)
        if size > MAX_HEAD or (size < 0 and len(conn.head) > MAX_HEAD):
            self._answer(conn, 431, "text/plain",
                         f"request head over {MAX_HEAD} bytes\n".encode())
        elif size > 0:
            self._respond(conn, bytes(conn.head[:size]))

    def _respond(self, conn: _Conn, head: bytes) -> None:
        parts = head.split(b"\n", 1)[0].rstrip(b"\r").split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._answer(conn, 400, "text/plain", b"bad request line\n")
            return
        method, target = parts[0], parts[1].decode("latin-1")
        if method not in (b"GET", b"HEAD"):
            self._answer(conn, 405, "text/plain", b"GET only\n", extra="Allow: GET, HEAD\r\n")
            return
        route = self.routes.get(target.split("?", 1)[0])
        if route is None:
            status, ctype, body = 404, "text/plain", b"not found\n"
        else:
            try:
                status, ctype, body = route()
            except Exception as exc:
                log.warning("%s: %s failed: %r", self.name, target, exc)
                status, ctype, body = 500, "text/plain", b"internal error\n"
        self._answer(conn, status, ctype, body, with_body=method == b"GET")

    def _answer(self, conn: _Conn, status: int, ctype: str, body: bytes, extra: str = "",
                with_body: bool = True) -> None:
        """Queue the answer, stop reading, and write what the socket takes now."""
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n").encode()
        conn.out = memoryview(head + body if with_body else head)
        self._sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        assert conn.out is not None
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self.counters.answered += 1
            _discard_unread(conn.sock)
            self._close(conn)

    def _sweep(self) -> float | None:
        """Close connections past their deadline; seconds until the next one (None: none)."""
        now = self._clock()
        wait: float | None = None
        for conn in list(self._conns.values()):  # oldest first
            age = now - conn.born
            limit = self.header_deadline if conn.out is None else self.connection_deadline
            if age >= limit:
                self.counters.expired += 1
                self._close(conn)
                continue
            left = limit - age
            wait = left if wait is None else min(wait, left)
            if age < self.header_deadline:
                break  # every younger one is further from both deadlines
        # A clock that a test moves by hand is looked at again at least once a second.
        return None if wait is None else min(wait, 1.0)

    def _report(self) -> None:
        now = self._clock()
        if now < self._next_report:
            return
        self._next_report = now + REPORT_INTERVAL
        evicted = self.counters.evicted - self._reported[0]
        expired = self.counters.expired - self._reported[1]
        self._reported = (self.counters.evicted, self.counters.expired)
        if evicted or expired:
            busiest = max(self._by_peer, key=lambda p: len(self._by_peer[p]), default="-")
            log.warning("%s: in the last %.0f s, closed %d connections past their deadline "
                        "and %d to make room (busiest address now: %s)", self.name,
                        REPORT_INTERVAL, expired, evicted, busiest)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _drop(self, conn: _Conn) -> None:
        self.counters.dropped += 1
        self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if self._conns.get(conn.fd) is not conn:
            return  # closed already (its descriptor number may be another's by now)
        del self._conns[conn.fd]
        mine = self._by_peer.get(conn.peer)
        if mine is not None:
            mine.pop(conn.fd, None)
            if not mine:
                del self._by_peer[conn.peer]
        self._sel.unregister(conn.sock)
        conn.sock.close()


def _head_size(head: bytearray) -> int:
    """Bytes of the head up to and including the blank line that ends it; -1 while it has not
    ended (lines may end in CRLF or, as HTTP allows a server to accept, a bare LF)."""
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") if (i := head.find(sep)) >= 0]
    return min(ends) if ends else -1


def _discard_unread(sock: socket.socket) -> None:
    """Read (and drop) what the client sent past its head, a little, so that closing does not
    reset the connection under an answer it has not read yet."""
    try:
        sock.recv(65536)
    except OSError:
        pass
