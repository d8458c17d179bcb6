"""The limits the plugin's log socket promises, each with the number its module states, so a
loosened or removed limit fails here (pure tier: no root): 32 connections served at once (one
more is closed at accept), 2 s for a connection's whole request, a body of at most 1 MiB.
The deadline is measured on a clock the test moves by hand, never by how long the machine took.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from node_daemon.httpserve import BoundedHandler, KeptUnixServer
from node_daemon.logsink import LogSink
from node_daemon.metrics import Metrics
from testbed.wait import wait_for
from tests.node_daemon.endpoint_clients import HandClock, closed_by_server


def _unix(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


class _Parked(BoundedHandler):
    """Reads a request with a deadline far away: each connection holds its thread."""

    deadline_seconds = 3600.0
    inside = 0
    lock = threading.Lock()

    def setup(self) -> None:
        super().setup()
        with _Parked.lock:
            _Parked.inside += 1

    def do_POST(self) -> None:  # never reached: the request never ends
        self.reply(200, "text/plain", b"")


def test_the_run_dir_socket_serves_32_connections_and_closes_the_33rd_at_accept(
        tmp_path) -> None:
    _Parked.inside = 0
    server = KeptUnixServer(tmp_path / "s.sock", _Parked, "test socket")
    socks = []
    try:
        for _ in range(32):
            s = _unix(tmp_path / "s.sock")
            s.sendall(b"POST /log HTTP/1.1\r\n")
            socks.append(s)
        wait_for(lambda: _Parked.inside == 32, what="32 connections being served")
        extra = _unix(tmp_path / "s.sock")
        socks.append(extra)
        wait_for(lambda: server.refused == 1 or _Parked.inside > 32, what="the 33rd handled")
        assert (server.refused, _Parked.inside) == (1, 32)
        wait_for(lambda: closed_by_server(extra), what="the 33rd closed")
        assert not any(closed_by_server(s) for s in socks[:32])
    finally:
        for s in socks:
            s.close()
        server.stop()


def test_a_log_socket_request_not_read_2_s_after_accept_is_cut_though_bytes_keep_coming(
        tmp_path) -> None:
    clock = HandClock()
    reads = threading.Event()
    metrics = Metrics()
    sink = LogSink(tmp_path / "log.sock", metrics, clock=clock)
    stop = threading.Event()
    try:
        with _unix(tmp_path / "log.sock") as slow:
            slow.sendall(b"POST /log HTTP/1.1\r\nContent-Length: 100000\r\n\r\n[")

            def trickle() -> None:  # a byte every 50 ms, so no per-read timeout ever fires
                while not stop.wait(0.05):
                    try:
                        slow.sendall(b" ")
                    except OSError:
                        return
                    reads.set()

            feeder = threading.Thread(target=trickle, daemon=True)
            feeder.start()
            wait_for(reads.is_set, what="the trickle started")
            wait_for(lambda: clock.reads >= 1, what="the handler took its start time")
            clock.set(2.0)
            wait_for(lambda: closed_by_server(slow), what="the request cut at 2 s")
            stop.set()
            feeder.join(timeout=5)
        assert metrics.value("istio_cni_plugin_log_lines_total") == 0
    finally:
        stop.set()
        sink.stop()


def _post(path: Path, body: bytes) -> bytes:
    with _unix(path) as sock:
        sock.sendall(b"POST /log HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body))
        try:
            sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the body was read
        answer = b""
        try:
            while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
                answer += chunk
        except ConnectionResetError:
            pass
        return answer.split(b"\r\n", 1)[0]


def test_a_log_body_of_1_mib_is_read_one_byte_more_is_refused_413(tmp_path) -> None:
    sink = LogSink(tmp_path / "log.sock", Metrics())
    try:
        mib = 1 << 20
        assert _post(tmp_path / "log.sock", b"[" + b" " * (mib - 2) + b"]") \
            == b"HTTP/1.1 200 OK"
        assert _post(tmp_path / "log.sock", b"[" + b" " * (mib - 1) + b"]") \
            == b"HTTP/1.1 413 Request Entity Too Large"
    finally:
        sink.stop()
