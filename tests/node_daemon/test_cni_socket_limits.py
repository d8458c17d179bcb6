"""The limits the agent-served ADD socket (`cni.sock`) and its framing promise, each at the
number its module states and one past it, written here as literals so a loosened, tightened or
removed limit fails here: 64 calls served at once (one more closed at accept, its plugin falls
back), 5 s for a connection's whole request (`node_daemon.cni_server`); 16 MiB of stdin, a
1 MiB request, a 4 MiB answer and 64 KiB of stderr (`cni.wire`).

Real Unix sockets, the real server, handler and client (`cni.agent_client`); the agent's
`ready` check is the seam that holds a call "being served". The deadline is measured on a clock
whose every read the test answers, so it is checked at 4.9 s and at 5.0 s of *its* time, never
by how long the machine took. Root tier: the server answers only a root peer (`SO_PEERCRED`).
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from cni import agent_client, wire
from cni.errors import DecodingFailure
from cni.protocol import parse_request
from node_daemon.cni_server import CniServer, CniService
from node_daemon.metrics import Metrics
from testbed.netns import create_netns
from testbed.wait import wait_for
from tests.node_daemon.endpoint_clients import closed_by_server

pytestmark = pytest.mark.root

KIB, MIB = 1024, 1024 * 1024
ADD = {b"CNI_COMMAND": b"ADD"}


class _Agent:
    """A `CniService` whose readiness check is the test's: it counts the calls that reach it
    (each one read whole and being served) and holds them until `release`."""

    def __init__(self, hold: bool = False) -> None:
        self.metrics = Metrics()
        self.service = CniService(self.metrics, self._ready)
        self.inside = 0
        self._lock = threading.Lock()
        self._released = threading.Event()
        if not hold:
            self._released.set()

    def _ready(self) -> tuple[bool, str]:
        with self._lock:
            self.inside += 1
        self._released.wait(120)
        return False, "held by the test"

    def release(self) -> None:
        self._released.set()

    def fallbacks(self) -> float:
        return self.metrics.value("istio_cni_agent_served_total", command="ADD",
                                  result="fallback")


DEFERRED = "node agent deferred: agent not ready: held by the test"


@pytest.fixture
def netns_fd(tmp_path: Path):
    """A descriptor to hand over; the agent defers before it looks at it."""
    fd = os.open(tmp_path / "fd", os.O_RDONLY | os.O_CREAT, 0o600)
    yield fd
    os.close(fd)


def _request_with_body(size: int) -> bytes:
    """An ADD request frame whose body is exactly `size` bytes (stdin padded with spaces)."""
    overhead = len(wire.request(ADD, b"")) - wire.HEADER_SIZE
    frame = wire.request(ADD, b" " * (size - overhead))
    assert len(frame) - wire.HEADER_SIZE == size
    return frame


# --- MAX_CONNECTIONS: 64 calls served at once -------------------------------------------------

def test_64_calls_are_served_at_once_and_the_65th_is_closed_at_accept(tmp_path, netns_fd):
    agent = _Agent(hold=True)
    path = tmp_path / "run" / "cni.sock"
    server = CniServer(path, agent.service)
    payload = wire.request(ADD, b"{}")
    results: dict[int, object] = {}

    def call(i: int) -> None:
        results[i] = agent_client.call(str(path), payload, netns_fd, 120)

    threads = [threading.Thread(target=call, args=(i,), daemon=True) for i in range(65)]
    try:
        for t in threads[:64]:
            t.start()
        wait_for(lambda: agent.inside == 64 or server.refused, what="64 calls being served")
        assert (agent.inside, server.refused) == (64, 0)
        threads[64].start()
        wait_for(lambda: server.refused or agent.inside > 64, what="the 65th call handled")
        assert (server.refused, agent.inside) == (1, 64)
        threads[64].join(60)
        extra = results[64]
        assert isinstance(extra, agent_client.Fallback), extra
        assert extra.reason.startswith(f"node agent at {path} did not answer"), extra.reason
    finally:
        agent.release()
        for t in threads:
            if t.ident is not None:  # started
                t.join(60)
        server.stop()
    held = [results[i] for i in range(64)]
    assert all(isinstance(r, agent_client.Fallback) and r.reason == DEFERRED for r in held), held
    assert agent.fallbacks() == 64


# --- REQUEST_DEADLINE: 5 s for the whole request ----------------------------------------------

class _AnsweredClock:
    """A clock whose every read waits for the test to answer it: the test decides what each
    deadline check sees, and answers only once the bytes the server reads next are already
    there, so no real socket timeout ever decides anything."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting = 0
        self._answers: list[float] = []

    def __call__(self) -> float:
        with self._cond:
            self._waiting += 1
            self._cond.notify_all()
            answered = self._cond.wait_for(lambda: self._answers, timeout=60)
            self._waiting -= 1
            return self._answers.pop(0) if answered else float("inf")  # test gone: cut

    def waiting(self) -> bool:
        with self._cond:
            return self._waiting > len(self._answers)

    def answer(self, now: float) -> None:
        with self._cond:
            self._answers.append(now)
            self._cond.notify_all()


def test_a_request_not_complete_5_s_after_accept_is_cut_though_bytes_keep_coming(tmp_path):
    clock = _AnsweredClock()
    agent = _Agent()
    path = tmp_path / "run" / "cni.sock"
    server = CniServer(path, agent.service, clock=clock)
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(wire.REQUEST_MAGIC + (1000).to_bytes(4, "big") + b" ")
            # accept (the start), then every check before a read, a byte there for each read
            for now in (0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 4.9):
                wait_for(lambda: clock.waiting() or closed_by_server(sock),
                         what=f"the server's clock read at {now} s")
                assert clock.waiting(), f"the request was cut before {now} s"
                sock.sendall(b" ")
                clock.answer(now)
            wait_for(lambda: clock.waiting() or closed_by_server(sock),
                     what="the server's clock read at 5.0 s")
            sock.sendall(b" ")
            clock.answer(5.0)
            wait_for(lambda: closed_by_server(sock) or clock.waiting(),
                     what="the request cut at 5.0 s")
            assert not clock.waiting(), "the server read on at 5.0 s"
    finally:
        server.stop()
    assert agent.inside == 0 and agent.fallbacks() == 0


def test_a_request_whose_header_comes_in_pieces_is_read_whole(tmp_path, netns_fd):
    """The descriptor comes with the header's first 3 bytes (the kernel ends a read at a write
    that carries descriptors, so the server's first read gets exactly those), the rest of the
    header and the body in two more writes: the server reads on to the whole frame."""
    agent = _Agent()
    path = tmp_path / "run" / "cni.sock"
    server = CniServer(path, agent.service)
    frame = wire.request(ADD, b"{}")
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(60)
            sock.connect(str(path))
            socket.send_fds(sock, [frame[:3]], [netns_fd])
            sock.sendall(frame[3:6])
            sock.sendall(frame[6:])
            deadline = time.monotonic() + 60
            header = wire.read_exactly(sock, wire.HEADER_SIZE, deadline)
            length = wire.body_length(header, wire.ANSWER_MAGIC, wire.MAX_ANSWER)
            answer = wire.parse_answer(wire.read_exactly(sock, length, deadline))
    finally:
        server.stop()
    assert answer == "agent not ready: held by the test"
    assert agent.inside == 1 and agent.fallbacks() == 1


# --- MAX_REQUEST: a 1 MiB request -------------------------------------------------------------

def test_the_agent_reads_a_1_mib_request_and_closes_one_byte_more_unanswered(tmp_path,
                                                                           netns_fd):
    agent = _Agent()
    path = tmp_path / "run" / "cni.sock"
    server = CniServer(path, agent.service)
    try:
        exact = agent_client.call(str(path), _request_with_body(MIB), netns_fd, 60)
        assert isinstance(exact, agent_client.Fallback) and exact.reason == DEFERRED, exact
        over = agent_client.call(str(path), _request_with_body(MIB + 1), netns_fd, 60)
        assert isinstance(over, agent_client.Fallback), over
        assert over.reason.startswith(f"node agent at {path} did not answer"), over.reason
    finally:
        server.stop()
    assert agent.inside == 1 and agent.fallbacks() == 1


def test_the_plugin_sends_a_1_mib_request_and_does_one_byte_more_itself(tmp_path, cleanup):
    agent = _Agent()
    run_dir = tmp_path / "run"
    server = CniServer(run_dir / "cni.sock", agent.service)
    cleanup.add("stop the agent socket", server.stop)
    pod = create_netns(cleanup, "icni-sock")
    env = {**ADD, b"CNI_NETNS": pod.path.encode()}
    config = b'{"cni_agent_run_dir": "%s"}' % str(run_dir).encode()
    pad = MIB - len(wire.request(env, config))

    exact = agent_client.serve(env, config + b" " * pad)
    assert isinstance(exact, agent_client.Fallback) and exact.reason == DEFERRED, exact.reason
    over = agent_client.serve(env, config + b" " * (pad + 1))
    assert isinstance(over, agent_client.Fallback), over
    assert over.reason == "a 1048577-byte request is over the agent's limit"
    assert agent.inside == 1


# --- MAX_CONFIG_BYTES: 16 MiB of stdin --------------------------------------------------------

def test_stdin_of_16_mib_is_read_and_taken_one_byte_more_is_refused():
    config = b'{"cniVersion": "1.0.0", "name": "n", "type": "istio-cni"}'
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    exact = config + b" " * (16 * MIB - len(config))
    assert wire.read_stdin(io.BytesIO(exact)) == exact
    assert parse_request(env, exact).conf["name"] == "n"
    longer = wire.read_stdin(io.BytesIO(exact + b" " * (64 * KIB)))
    assert longer == exact + b" "  # it stops one byte past the limit
    with pytest.raises(DecodingFailure, match="larger than 16777216 bytes"):
        parse_request(env, longer)


# --- MAX_ANSWER: a 4 MiB answer -----------------------------------------------------------------

class _AnsweringAgent:
    """A root-owned socket that reads one request and answers `frame`, whatever the request."""

    def __init__(self, path: Path, frame: bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(1)
        self.frame = frame
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.settimeout(30)
            deadline = time.monotonic() + 30
            header, fds, _, _ = socket.recv_fds(conn, wire.HEADER_SIZE, 4)
            for fd in fds:
                os.close(fd)
            try:
                header += wire.read_exactly(conn, wire.HEADER_SIZE - len(header), deadline)
                wire.read_exactly(conn, int.from_bytes(header[4:], "big"), deadline)
                conn.sendall(self.frame)
            except OSError:
                pass  # the client stopped reading: what is tested is what it returned

    def close(self) -> None:
        self.thread.join(30)
        self.sock.close()


def _answer_with_body(size: int) -> bytes:
    overhead = len(wire.answered(0, b"", b"")) - wire.HEADER_SIZE
    frame = wire.answered(0, b"x" * (size - overhead), b"")
    assert len(frame) - wire.HEADER_SIZE == size
    return frame


@pytest.mark.parametrize("size, taken", [(4 * MIB, True), (4 * MIB + 1, False)])
def test_the_plugin_reads_a_4_mib_answer_and_falls_back_on_one_byte_more(
        tmp_path, netns_fd, size, taken):
    path = tmp_path / "agent.sock"
    agent = _AnsweringAgent(path, _answer_with_body(size))
    try:
        answer = agent_client.call(str(path), wire.request(ADD, b"{}"), netns_fd, 60)
    finally:
        agent.close()
    if taken:
        assert isinstance(answer, agent_client.Answer), answer.reason
        assert (answer.status, len(answer.stdout), answer.stderr) == (0, 4 * MIB - 18, b"")
    else:
        assert isinstance(answer, agent_client.Fallback), answer
        assert answer.reason == (f"node agent at {path} did not answer: frame of 4194305 "
                                 "bytes is over the 4194304-byte limit")


# --- MAX_STDERR: the last 64 KiB of stderr ------------------------------------------------------

def test_the_agent_sends_64_kib_of_stderr_whole_and_the_last_64_kib_of_more():
    stderr = bytes(range(256)) * 256  # 64 KiB, no two neighbouring bytes alike
    assert len(stderr) == 65536

    def sent(err: bytes) -> bytes:
        parsed = wire.parse_answer(wire.answered(1, b"out", err)[wire.HEADER_SIZE:])
        assert isinstance(parsed, tuple) and parsed[:2] == (1, b"out")
        return parsed[2]

    assert sent(stderr) == stderr
    assert sent(b"first line\n" + stderr) == stderr
    assert sent(b"!" + stderr) == stderr
