"""Every limit the agent's TCP endpoints promise, each with the number docs/reliability.md
states (so a loosened or removed limit fails here), over real loopback connections (pure tier:
no root). Deadlines are measured on a clock the test moves by hand: a deadline is checked at
1.9 s and at 2.0 s of *its* time, never by how long the machine took.

The limits (`node_daemon.httploop`): 16 connections per source address and 256 per server, the
oldest closed to make room; the request head complete within 2 s of accept and at most 8,192
bytes; the answer written within 10 s of accept.
"""

from __future__ import annotations

import socket
import threading

import pytest

from node_daemon import health
from node_daemon.httploop import LoopServer
from testbed.wait import wait_for
from tests.node_daemon.endpoint_clients import (
    HandClock,
    closed_by_server,
    connect_from,
    probe,
    raw_exchange,
)

ROUTES = {"/healthz": lambda: (200, "text/plain", b"ok\n")}


@pytest.fixture
def clock() -> HandClock:
    return HandClock()


@pytest.fixture
def server(clock: HandClock):
    """The endpoint with its shipped limits, on a hand-moved clock."""
    srv = LoopServer("127.0.0.1", 0, ROUTES, "test-endpoint", clock=clock)
    yield srv
    srv.stop()


def settle(srv: LoopServer) -> None:
    """Make sure the loop has swept at least once after the clock was moved."""
    for _ in range(2):
        seen = srv.iterations
        srv.poke()
        wait_for(lambda seen=seen: srv.iterations > seen, what="a pass of the loop")


def test_the_health_and_metrics_servers_ship_these_limits() -> None:
    srv = health.health_server("127.0.0.1", 0, lambda: (True, ""))
    web = health.metrics_server("127.0.0.1", 0, lambda: b"")
    try:
        for s in (srv, web):
            assert (s.max_per_peer, s.max_connections, s.header_deadline,
                    s.connection_deadline) == (16, 256, 2.0, 10.0), s.name
    finally:
        srv.stop()
        web.stop()


def test_one_address_holds_at_most_16_connections_the_oldest_closed_first(server) -> None:
    socks = []
    try:
        for i in range(20):
            socks.append(connect_from("127.0.0.2", server.port))
            wait_for(lambda i=i: server.counters.accepted == i + 1, what=f"accept #{i + 1}")
        assert server.open_connections("127.0.0.2") == 16
        assert server.counters.evicted == 4
        for sock in socks[:4]:
            wait_for(lambda sock=sock: closed_by_server(sock), what="the oldest closed")
        assert not any(closed_by_server(sock) for sock in socks[4:])
        # another address is not affected, and is answered
        assert probe(server.port, source="127.0.0.1") == (200, b"ok\n")
        assert server.open_connections("127.0.0.2") == 16
    finally:
        for sock in socks:
            sock.close()


def test_the_server_holds_at_most_256_connections_closing_the_busiest_address_s_oldest(
        server) -> None:
    peers = [f"127.0.1.{i}" for i in range(1, 18)]  # 17 addresses x 16 = 272 connections
    socks: dict[str, list[socket.socket]] = {p: [] for p in peers}
    try:
        for peer in peers:
            for _ in range(16):
                socks[peer].append(connect_from(peer, server.port))
        wait_for(lambda: server.counters.accepted == 272, what="272 accepted")
        assert server.open_connections() == 256
        assert server.counters.evicted == 16
        # the room was made at the addresses holding most, never at the newcomer
        assert server.open_connections(peers[-1]) == 16
        assert all(server.open_connections(p) >= 15 for p in peers)
        assert probe(server.port, source="127.0.0.1") == (200, b"ok\n")
        # the probe made room for itself (one more closed at the busiest address), then left
        wait_for(lambda: server.open_connections() == 255, what="the probe's connection closed")
        assert server.counters.evicted == 17
    finally:
        for group in socks.values():
            for sock in group:
                sock.close()


def test_a_head_not_complete_2_s_after_accept_is_closed_though_bytes_keep_coming(
        server, clock) -> None:
    with connect_from("127.0.0.3", server.port) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        wait_for(lambda: server.open_connections() == 1, what="accepted")
        for now, header in ((1.0, b"X-a: 1\r\n"), (1.9, b"X-b: 2\r\n")):
            clock.set(now)
            slow.sendall(header)  # a byte now and then: progress must not extend the deadline
            settle(server)
            assert not closed_by_server(slow), f"closed at {now} s"
        clock.set(2.0)
        settle(server)
        wait_for(lambda: closed_by_server(slow), what="closed at 2 s")
        assert server.counters.expired == 1 and server.counters.answered == 0


def test_an_answer_not_taken_10_s_after_accept_is_dropped(clock) -> None:
    body = b"x" * (32 << 20)  # far more than the socket buffers hold
    srv = LoopServer("127.0.0.1", 0, {"/metrics": lambda: (200, "text/plain", body)},
                     "test-metrics", clock=clock)
    try:
        with socket.socket() as reader:
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader.bind(("127.0.0.4", 0))
            reader.connect(("127.0.0.1", srv.port))
            reader.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
            wait_for(lambda: srv.counters.accepted == 1, what="accepted")
            clock.set(9.9)
            settle(srv)
            assert srv.open_connections() == 1 and srv.counters.answered == 0
            clock.set(10.0)
            settle(srv)
            assert srv.open_connections() == 0
            assert srv.counters.expired == 1 and srv.counters.answered == 0
    finally:
        srv.stop()


def _head(size: int) -> bytes:
    """A GET /healthz head of exactly `size` bytes, blank line included."""
    start, end = b"GET /healthz HTTP/1.1\r\nX-Pad: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


def test_a_head_of_8192_bytes_is_answered_one_more_is_refused_431(server) -> None:
    assert len(_head(8192)) == 8192
    assert raw_exchange(server.port, _head(8192)).startswith(b"HTTP/1.1 200 OK\r\n")
    answer = raw_exchange(server.port, _head(8193))
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
    endless = raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * 20000)
    assert endless.startswith(b"HTTP/1.1 431 "), endless[:80]


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /healthz HTTP/1.0\r\n\r\n", b"200"),
    (b"GET /healthz?verbose HTTP/1.1\nHost: x\n\n", b"200"),
    (b"HEAD /healthz HTTP/1.1\r\n\r\n", b"200"),
    (b"GET /nope HTTP/1.1\r\n\r\n", b"404"),
    (b"POST /healthz HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"405"),
    (b"GET /healthz\r\n\r\n", b"400"),
    (b"\xff\xfe garbage\r\n\r\n", b"400"),
])
def test_requests_are_answered_once_and_closed(server, request_bytes, status) -> None:
    answer = raw_exchange(server.port, request_bytes)
    assert answer.split(b" ", 2)[1] == status, answer
    assert b"\r\nConnection: close\r\n" in answer


def test_a_failing_route_is_a_500_and_the_server_goes_on(clock) -> None:
    def broken() -> tuple[int, str, bytes]:
        raise RuntimeError("boom")

    srv = LoopServer("127.0.0.1", 0, {**ROUTES, "/readyz": broken}, "test", clock=clock)
    try:
        assert probe(srv.port, "/readyz")[0] == 500
        assert probe(srv.port) == (200, b"ok\n")
    finally:
        srv.stop()


def test_resets_and_half_sent_requests_cost_no_thread_and_print_no_traceback(
        server, capfd) -> None:
    before = threading.active_count()
    half_open = []
    try:
        for _ in range(40):
            s = connect_from("127.0.0.5", server.port)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            half_open.append(s)
        for _ in range(20):  # clients that reset right after sending
            s = connect_from("127.0.0.6", server.port)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            s.close()
        wait_for(lambda: server.counters.accepted == 60, what="all accepted")
        assert threading.active_count() == before
        assert probe(server.port) == (200, b"ok\n")
    finally:
        for s in half_open:
            s.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipeError" not in err
