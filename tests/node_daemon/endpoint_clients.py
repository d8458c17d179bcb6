"""Clients for the agent's TCP endpoints in tests: raw connections from a chosen loopback
address (all of 127.0.0.0/8 is on `lo`, so each 127.0.0.x is a separate peer without any
setup), a probe like the kubelet's, and a clock a test moves by hand."""

from __future__ import annotations

import http.client
import socket
import threading


class HandClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0
        """How often the clock was read: a server that read it has taken its start time."""
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.reads += 1
            return self.now

    def set(self, seconds: float) -> None:
        with self._lock:
            self.now = seconds


def connect_from(source: str, port: int, host: str = "127.0.0.1") -> socket.socket:
    """A connected TCP socket from `source` (a loopback address) to `host`:`port`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect((host, port))
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Has the server closed `sock`? (EOF or reset after any answer bytes; never blocks)."""
    timeout = sock.gettimeout()
    sock.settimeout(0)  # with a timeout set, recv would first wait for data
    try:
        while True:
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.settimeout(timeout)


def probe(port: int, path: str = "/healthz", source: str = "127.0.0.1",
          timeout: float = 10.0) -> tuple[int, bytes]:
    """One HTTP GET on a new connection from `source`, as the kubelet's httpGet probe does."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0))
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, source: str = "127.0.0.1") -> bytes:
    """Send `data`, read until the server closes; what it answered."""
    with connect_from(source, port) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer
