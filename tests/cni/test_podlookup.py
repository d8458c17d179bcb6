"""cni.podlookup against a real local API server: retries, deadline, TLS, error codes.

Faults are caused server-side over a real socket; only the pause between attempts is injected
(`sleep=`) so the tests do not wait. No assertion is about elapsed time. Answers no API server
gives (an endless body, one byte at a time) come from `HostileServer`, a raw TCP server here,
also through the plugin binary, whose run is bounded by `subprocess.run(timeout=...)`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cni.errors import CNIError, PluginNotAvailable, PodLookupFailed, TryAgainLater
from cni.kubeconfig import KubeAccess, load_kubeconfig
from cni.podlookup import MAX_POD_BYTES, ApiPodSource, RetryPolicy, get_pod, pod_path
from testbed.cnirun import Runtime
from testbed.kubeapi import KubeApiServer, down_url, make_tls_material, write_kubeconfig

TOKEN = "sa-token-do-not-leak-7f3a9c"
NS, NAME = "default", "web-0"
PATH = pod_path(NS, NAME)
POD = {
    "metadata": {"name": NAME, "namespace": NS},
    "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy"}]},
}


class Sleeps(list[float]):
    """Records the pauses asked for instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def access_for(server: KubeApiServer, tmp_path: Path, **kwargs: object) -> KubeAccess:
    """Load the kubeconfig the installer would write: exercises the real load path too."""
    return load_kubeconfig(str(write_kubeconfig(tmp_path, server, **kwargs)))  # type: ignore[arg-type]


def lookup(access: KubeAccess, policy: RetryPolicy | None = None, **kwargs: object) -> dict:
    policy = policy or RetryPolicy(attempts=5, interval=1.0, deadline=30.0, timeout=5.0)
    kwargs.setdefault("sleep", Sleeps())
    return get_pod(access, NS, NAME, policy, **kwargs)  # type: ignore[arg-type]


def failure(access: KubeAccess, cls: type[CNIError], **kwargs: object) -> CNIError:
    with pytest.raises(cls) as caught:
        lookup(access, **kwargs)  # type: ignore[arg-type]
    exc = caught.value
    assert TOKEN not in exc.msg and TOKEN not in exc.details
    assert exc.code == cls.code
    return exc


@pytest.fixture
def api(kube_api: KubeApiServer) -> KubeApiServer:
    kube_api.require_token(TOKEN)
    kube_api.add_pod(POD)
    return kube_api


def test_returns_the_pod(api: KubeApiServer, tmp_path: Path) -> None:
    pod = lookup(access_for(api, tmp_path))

    assert pod["metadata"]["name"] == NAME
    (request,) = api.requests
    assert (request.method, request.path) == ("GET", PATH)
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Accept"] == "application/json"


def test_pod_not_yet_visible_then_found(api: KubeApiServer, tmp_path: Path) -> None:
    api.fail_next(PATH, 404, count=2)
    sleeps = Sleeps()

    pod = lookup(access_for(api, tmp_path), sleep=sleeps)

    assert pod["metadata"]["name"] == NAME
    assert api.count("GET", PATH) == 3
    assert sleeps == [1.0, 1.0]


def test_pod_never_found(kube_api: KubeApiServer, tmp_path: Path) -> None:
    kube_api.require_token(TOKEN)

    exc = failure(access_for(kube_api, tmp_path), PodLookupFailed)

    assert "gave up after 5 attempt(s)" in exc.msg
    assert PATH in exc.msg and "404" in exc.msg and "not found" in exc.msg
    assert kube_api.count("GET", PATH) == 5


def test_rejected_token_fails_at_once(api: KubeApiServer, tmp_path: Path) -> None:
    access = access_for(api, tmp_path, token="expired-token-value")

    exc = failure(access, PodLookupFailed)

    assert "rejected the token" in exc.msg and "401" in exc.msg
    assert "expired-token-value" not in exc.msg
    assert api.count("GET", PATH) == 1


def test_forbidden_fails_at_once(api: KubeApiServer, tmp_path: Path) -> None:
    api.fail_next(PATH, 403, count=10)

    exc = failure(access_for(api, tmp_path), PodLookupFailed)

    assert "403" in exc.msg
    assert api.count("GET", PATH) == 1


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_errors_then_success_reuse_the_connection(
    api: KubeApiServer, tmp_path: Path, status: int
) -> None:
    api.fail_next(PATH, status, count=2)

    assert lookup(access_for(api, tmp_path))["metadata"]["name"] == NAME

    clients = {r.client for r in api.requests}
    assert api.count("GET", PATH) == 3
    assert len(clients) == 1  # one keep-alive connection served every attempt


def test_server_errors_forever(api: KubeApiServer, tmp_path: Path) -> None:
    api.fail_next(PATH, 500, count=1000)
    policy = RetryPolicy(attempts=4, interval=1.0, deadline=30.0, timeout=5.0)

    exc = failure(access_for(api, tmp_path), TryAgainLater, policy=policy)

    assert "gave up after 4 attempt(s)" in exc.msg
    assert PATH in exc.msg and "500" in exc.msg
    assert api.count("GET", PATH) == 4


def test_slow_response_times_out_and_is_retried(api: KubeApiServer, tmp_path: Path) -> None:
    """The first GET hangs past the attempt's bound; the second, answered at once, must fit
    in the same bound: 3 s, generous for a loopback answer on a loaded machine."""
    api.delay(PATH, seconds=60.0, count=1)
    policy = RetryPolicy(attempts=3, interval=0.0, deadline=60.0, timeout=3.0)

    assert lookup(access_for(api, tmp_path), policy)["metadata"]["name"] == NAME
    assert api.count("GET", PATH) == 2


def test_slow_responses_forever(api: KubeApiServer, tmp_path: Path) -> None:
    api.delay(PATH, seconds=30.0)
    policy = RetryPolicy(attempts=2, interval=1.0, deadline=30.0, timeout=0.2)

    exc = failure(access_for(api, tmp_path), TryAgainLater, policy=policy)

    assert "timed out" in exc.msg and "2 attempt(s)" in exc.msg
    assert isinstance(exc.__cause__, TimeoutError)


def bounded(limit: float, what: str) -> Callable[[Callable[[], CNIError]], CNIError]:
    """Run the failing lookup; it must end well within `limit` seconds. A behavioural bound,
    not a speed test: `limit` is far above the deadline under test and far below what the
    lookup would take without it (a per-attempt timeout of 30-60 s), so a loaded machine
    cannot fail it and a lookup that ignored the deadline cannot pass it."""
    def run(call: Callable[[], CNIError]) -> CNIError:
        start = time.monotonic()
        exc = call()
        took = time.monotonic() - start
        assert took < limit, f"{what}: the lookup took {took:.1f} s"
        return exc
    return run


def test_hanging_server_cannot_outlast_the_deadline(api: KubeApiServer, tmp_path: Path) -> None:
    """The per-attempt timeout (60 s) is capped by the deadline (0.5 s)."""
    api.hang(PATH)
    policy = RetryPolicy(attempts=30, interval=1.0, deadline=0.5, timeout=60.0)

    exc = bounded(20, "the 0.5 s deadline did not cap the 60 s attempt")(
        lambda: failure(access_for(api, tmp_path), TryAgainLater, policy=policy))

    assert "timed out" in exc.msg and PATH in exc.msg and "1 attempt(s)" in exc.msg, exc.msg


def test_deadline_bounds_the_number_of_attempts(kube_api: KubeApiServer, tmp_path: Path) -> None:
    """With a clock that advances only when we pause, 30 × 1 s within 3.5 s is 4 attempts."""
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    policy = RetryPolicy(attempts=30, interval=1.0, deadline=3.5, timeout=5.0)

    exc = failure(
        access_for(kube_api, tmp_path), PodLookupFailed, policy=policy, sleep=sleep,
        clock=lambda: now[0],
    )  # fmt: skip

    assert "gave up after 4 attempt(s) in 3.5s" in exc.msg
    assert kube_api.count("GET", PATH) == 4


def test_server_down(tmp_path: Path) -> None:
    access = load_kubeconfig(str(write_kubeconfig(tmp_path, down_url(), token=TOKEN)))
    policy = RetryPolicy(attempts=3, interval=1.0, deadline=30.0, timeout=5.0)

    exc = failure(access, TryAgainLater, policy=policy)

    assert "3 attempt(s)" in exc.msg and "Connection refused" in exc.msg
    assert isinstance(exc.__cause__, ConnectionRefusedError)


def test_one_warning_on_first_failure(
    api: KubeApiServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    api.fail_next(PATH, 500, count=3)

    with caplog.at_level(logging.DEBUG, logger="cni.podlookup"):
        lookup(access_for(api, tmp_path))

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"{NS}/{NAME}" in warnings[0].getMessage()
    assert all(TOKEN not in r.getMessage() for r in caplog.records)


def test_tls_with_ca_data(kube_api_tls: KubeApiServer, tmp_path: Path) -> None:
    kube_api_tls.require_token(TOKEN)
    kube_api_tls.add_pod(POD)

    access = access_for(kube_api_tls, tmp_path)

    assert access.server.startswith("https://") and access.ca_data
    assert lookup(access)["metadata"]["name"] == NAME


def test_tls_insecure_skip_verify(kube_api_tls: KubeApiServer, tmp_path: Path) -> None:
    kube_api_tls.add_pod(POD)

    assert lookup(access_for(kube_api_tls, tmp_path, insecure=True))["metadata"]["name"] == NAME


def test_tls_with_wrong_ca(kube_api_tls: KubeApiServer, tmp_path: Path) -> None:
    kube_api_tls.require_token(TOKEN)
    other = make_tls_material(tmp_path / "other-ca")
    access = access_for(kube_api_tls, tmp_path, ca_data=other.ca_pem)

    exc = failure(access, PodLookupFailed)

    assert "TLS verification" in exc.msg and "certificate verify failed" in exc.msg
    assert kube_api_tls.requests == []  # nothing was sent, least of all the token


def test_tls_with_garbage_ca(kube_api_tls: KubeApiServer, tmp_path: Path) -> None:
    access = access_for(kube_api_tls, tmp_path, ca_data=b"not a certificate")

    exc = failure(access, PluginNotAvailable)

    assert access.source in exc.msg and "TLS" in exc.msg


def test_api_pod_source_reuses_its_connection(api: KubeApiServer, tmp_path: Path) -> None:
    source = ApiPodSource(access_for(api, tmp_path), RetryPolicy(attempts=1))
    try:
        assert source.get_pod(NS, NAME) == source.get_pod(NS, NAME)
    finally:
        source.close()

    assert api.count("GET", PATH) == 2
    assert len({r.client for r in api.requests}) == 1


def test_api_pod_source_reconnects_when_the_server_dropped_it(
    api: KubeApiServer, tmp_path: Path
) -> None:
    source = ApiPodSource(access_for(api, tmp_path), RetryPolicy(attempts=1))
    try:
        source.get_pod(NS, NAME)
        api.drop_connections()

        assert source.get_pod(NS, NAME)["metadata"]["name"] == NAME
    finally:
        source.close()
    assert len({r.client for r in api.requests}) == 2


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_ipv6_server(tmp_path: Path) -> None:
    with KubeApiServer(host="::1") as server:
        server.add_pod(POD)
        access = access_for(server, tmp_path)

        assert access.server.startswith("http://[::1]:")
        assert lookup(access)["metadata"]["name"] == NAME


@pytest.mark.parametrize("bad", [{"attempts": 0}, {"deadline": 0}, {"timeout": -1}])
def test_policy_rejects_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**bad)  # type: ignore[arg-type]


# --- answers no API server gives: endless, huge, trickled -------------------------------------

Behaviour = Callable[[socket.socket, threading.Event], None]
POD_JSON = json.dumps(POD).encode()
SAFETY_STOP = 8 * MAX_POD_BYTES
"""The endless bodies end here, only so that a client without a cap fails the test (it reads
this much, then finds no JSON) instead of exhausting the machine; the capped client stops at
`MAX_POD_BYTES`."""


@contextmanager
def hostile_server(behaviour: Behaviour) -> Iterator[tuple[str, list[int]]]:
    """A raw TCP server on 127.0.0.1: each connection gets its request read, then `behaviour`.
    Yields its URL and a list that counts connections. Stops (and closes all) on exit."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop, conns, threads = threading.Event(), [0], []

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                behaviour(conn, stop)
            except OSError:
                pass  # the client gave up: that is what these tests are about

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conns[0] += 1
            thread = threading.Thread(target=serve, args=(conn,), daemon=True)
            threads.append(thread)
            thread.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", conns
    finally:
        stop.set()
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        acceptor.join(10)
        for thread in threads:
            thread.join(10)


def endless_body(head: bytes, chunked: bool = False) -> Behaviour:
    def framed(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data) if chunked else data

    def behaviour(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(head + framed(b'{"metadata": {"name": "'))
        block = b"x" * 65536
        frame = framed(block)
        sent = 0
        while sent < SAFETY_STOP and not stop.is_set():
            conn.sendall(frame)
            sent += len(block)
    return behaviour


def trickle(data: bytes, every: float = 0.05) -> Behaviour:
    """Send `data` one byte at a time, `every` seconds apart: each receive gets a byte well
    within any socket timeout, so only a bound on the whole GET stops it."""
    def behaviour(conn: socket.socket, stop: threading.Event) -> None:
        for i in range(len(data)):
            conn.sendall(data[i:i + 1])
            if stop.wait(every):
                return
    return behaviour


OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
ENDLESS = {
    "until the server closes": endless_body(OK_HEAD + b"Connection: close\r\n\r\n"),
    "chunked": endless_body(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n", chunked=True),
}
ANSWER = OK_HEAD + b"Content-Length: %d\r\n\r\n%s" % (len(POD_JSON), POD_JSON)
TRICKLED = {
    # ~120 bytes at 20 a second: an uncapped client has the pod after ~6 s, well past 1 s
    "the body": lambda: _after_head_trickle(),
    "the status line and headers": lambda: trickle(ANSWER),
}


def _after_head_trickle() -> Behaviour:
    head = OK_HEAD + b"Content-Length: %d\r\n\r\n" % len(POD_JSON)

    def behaviour(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(head)
        trickle(POD_JSON)(conn, stop)
    return behaviour


def hostile_access(url: str, tmp_path: Path) -> KubeAccess:
    return load_kubeconfig(str(write_kubeconfig(tmp_path, url, token=TOKEN)))


@pytest.mark.parametrize("kind", ENDLESS)
def test_endless_body_is_cut_at_the_cap_and_not_retried(tmp_path: Path, kind: str) -> None:
    with hostile_server(ENDLESS[kind]) as (url, conns):
        policy = RetryPolicy(attempts=2, interval=0.0, deadline=60.0, timeout=30.0)

        exc = failure(hostile_access(url, tmp_path), PodLookupFailed, policy=policy)

    assert f"larger than the {MAX_POD_BYTES} bytes" in exc.msg, exc.msg
    assert PATH in exc.msg and url in exc.msg
    assert conns == [1]  # too large is not transient: no second download


def test_announced_huge_body_is_refused_before_reading_it(tmp_path: Path) -> None:
    head = OK_HEAD + b"Content-Length: 10000000000\r\n\r\n"
    with hostile_server(endless_body(head)) as (url, conns):
        policy = RetryPolicy(attempts=2, interval=0.0, deadline=60.0, timeout=30.0)

        exc = failure(hostile_access(url, tmp_path), PodLookupFailed, policy=policy)

    assert "announces 10000000000 bytes" in exc.msg, exc.msg
    assert conns == [1]


@pytest.mark.parametrize("where", TRICKLED)
def test_trickling_server_cannot_outlast_the_deadline(tmp_path: Path, where: str) -> None:
    """One byte every 50 ms never trips a per-receive timeout; the attempt's bound still ends
    the GET: the lookup fails as timed out instead of returning the pod seconds later."""
    with hostile_server(TRICKLED[where]()) as (url, _):
        policy = RetryPolicy(attempts=1, interval=0.0, deadline=1.0, timeout=30.0)

        exc = bounded(15, "the 1 s deadline did not cap the trickled 30 s attempt")(
            lambda: failure(hostile_access(url, tmp_path), TryAgainLater, policy=policy))

    assert "timed out" in exc.msg and "1 attempt(s)" in exc.msg, exc.msg
    assert isinstance(exc.__cause__, TimeoutError)


def test_trickle_cut_by_the_attempt_bound_leaves_room_for_the_next_attempt(
    tmp_path: Path,
) -> None:
    """The first connection trickles; the attempt's own bound (3 s of a 60 s deadline) ends
    it, and the second attempt, on a fresh connection, gets the pod (within the same 3 s:
    generous for a loopback answer on a loaded machine)."""
    served = [0]

    def first_trickles(conn: socket.socket, stop: threading.Event) -> None:
        served[0] += 1
        if served[0] == 1:
            trickle(ANSWER)(conn, stop)
        else:
            conn.sendall(ANSWER)

    with hostile_server(first_trickles) as (url, conns):
        policy = RetryPolicy(attempts=3, interval=0.0, deadline=60.0, timeout=3.0)

        assert lookup(hostile_access(url, tmp_path), policy)["metadata"]["name"] == NAME

    assert conns == [2]


def test_tls_handshake_that_never_comes_is_bounded(tmp_path: Path) -> None:
    def silent(conn: socket.socket, stop: threading.Event) -> None:
        stop.wait(60)

    listener = socket.socket()
    with listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts (in the kernel) and never speaks TLS
        url = f"https://127.0.0.1:{listener.getsockname()[1]}"
        access = load_kubeconfig(str(write_kubeconfig(tmp_path, url, token=TOKEN, insecure=True)))
        policy = RetryPolicy(attempts=1, interval=0.0, deadline=0.5, timeout=30.0)

        exc = bounded(15, "the 0.5 s deadline did not cap the 30 s TLS handshake")(
            lambda: failure(access, TryAgainLater, policy=policy))

    assert "timed out" in exc.msg, exc.msg


# --- the same through the plugin binary: pod_lookup_deadline_seconds bounds the ADD --------

def plugin_add(tmp_path: Path, url: str) -> dict:
    """ADD of a pod that needs a lookup, through `python -m cni`; `Runtime.call` fails the test
    (TimeoutExpired) if the plugin outlives its generous subprocess timeout."""
    kubeconfig = write_kubeconfig(tmp_path, url, token=TOKEN)
    conf = {"cniVersion": "1.0.0", "name": "net", "type": "istio-cni",
            "cni_agent_run_dir": str(tmp_path), "kubernetes": {"kubeconfig": str(kubeconfig)},
            "pod_lookup_attempts": 30, "pod_lookup_interval_seconds": 0.01,
            "pod_lookup_deadline_seconds": 2}
    runtime = Runtime(binaries={"istio-cni": [sys.executable, "-m", "cni"]},
                      extra_env={"PYTHONPATH": os.getcwd()})
    call = runtime.call("istio-cni", "ADD", str(tmp_path / "no-netns"), "c1", conf,
                        cni_args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={NAME}")
    assert call.status == 1, call.stdout + call.stderr
    assert "Traceback" not in call.stdout + call.stderr
    return call.result


@pytest.mark.parametrize("where", TRICKLED)
def test_plugin_add_against_a_trickling_server_ends_by_the_deadline(
    tmp_path: Path, where: str
) -> None:
    with hostile_server(TRICKLED[where]()) as (url, _):
        err = plugin_add(tmp_path, url)

    assert err["code"] == TryAgainLater.code and "timed out" in err["msg"], err


def test_plugin_add_against_an_endless_body_fails_clearly(tmp_path: Path) -> None:
    with hostile_server(ENDLESS["until the server closes"]) as (url, conns):
        err = plugin_add(tmp_path, url)

    assert err["code"] == PodLookupFailed.code, err
    assert f"larger than the {MAX_POD_BYTES} bytes" in err["msg"]
    assert conns == [1]


# --- the bounds themselves (scripts/mutation.sh: each fails on a mutant that survived) ---------

@pytest.mark.parametrize("status", [400, 405, 410, 422])
def test_any_other_client_error_fails_at_once(api: KubeApiServer, tmp_path: Path,
                                              status: int) -> None:
    """Only 429, 5xx, timeouts and broken connections are asked again: a 4xx other than 404
    is the same answer next time, so one GET and no pause."""
    api.fail_next(PATH, status, count=10)
    sleeps = Sleeps()

    exc = failure(access_for(api, tmp_path), PodLookupFailed, sleep=sleeps)

    assert api.count("GET", PATH) == 1 and sleeps == []
    assert f"GET {PATH}: {status} " in exc.msg, exc.msg


def fake_time(start: float = 0.0) -> tuple[Sleeps, Callable[[float], None],
                                          Callable[[], float]]:
    """A clock that advances only by the pauses asked for, and the record of those pauses."""
    now, sleeps = [start], Sleeps()

    def sleep(seconds: float) -> None:
        sleeps(seconds)
        now[0] += seconds

    return sleeps, sleep, lambda: now[0]


def test_the_pause_comes_only_between_attempts(api: KubeApiServer, tmp_path: Path) -> None:
    """Three attempts, two pauses: none after the last (the ADD would only wait longer to
    fail), and the message's time is the time the attempts took."""
    api.fail_next(PATH, 500, count=10)
    sleeps, sleep, clock = fake_time(start=1000.0)

    exc = failure(access_for(api, tmp_path), TryAgainLater,
                  policy=RetryPolicy(attempts=3, interval=0.25, deadline=30.0, timeout=5.0),
                  sleep=sleep, clock=clock)

    assert sleeps == [0.25, 0.25] and api.count("GET", PATH) == 3
    assert "gave up after 3 attempt(s) in 0.5s" in exc.msg, exc.msg


def test_the_last_pause_is_cut_to_the_deadline(api: KubeApiServer, tmp_path: Path) -> None:
    api.fail_next(PATH, 500, count=10)
    sleeps, sleep, clock = fake_time()

    failure(access_for(api, tmp_path), TryAgainLater,
            policy=RetryPolicy(attempts=10, interval=1.0, deadline=2.5, timeout=5.0),
            sleep=sleep, clock=clock)

    assert sleeps == [1.0, 1.0, 0.5] and api.count("GET", PATH) == 3


def _body_of(size: int) -> bytes:
    """A pod document of exactly `size` bytes."""
    head = json.dumps({"metadata": {"name": NAME, "namespace": NS}, "pad": ""}).encode()
    return head[:-2] + b"x" * (size - len(head)) + head[-2:]


@pytest.mark.parametrize("framing", ["content-length", "close-delimited"])
def test_a_pod_of_exactly_the_cap_is_read(tmp_path: Path, framing: str) -> None:
    """The cap is the most a pod may take, not one byte less (announced or read)."""
    body = _body_of(MAX_POD_BYTES)
    length = b"Content-Length: %d\r\n" % len(body) if framing == "content-length" else b""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + length + \
        b"Connection: close\r\n\r\n"

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(head + body)

    with hostile_server(answer) as (url, _):
        pod = lookup(hostile_access(url, tmp_path))

    assert pod["metadata"]["name"] == NAME and len(pod["pad"]) == MAX_POD_BYTES - len(
        _body_of(0))


@pytest.mark.parametrize("bad", [{"timeout": 0}, {"interval": -0.5}, {"attempts": -1},
                                 {"deadline": -1}])
def test_a_policy_without_a_bound_is_refused(bad: dict) -> None:
    with pytest.raises(ValueError, match="need attempts >= 1, deadline, timeout > 0"):
        RetryPolicy(**{"attempts": 3, "interval": 1.0, "deadline": 5.0, "timeout": 1.0, **bad})


def test_a_source_without_a_policy_takes_the_default_bounds(api: KubeApiServer,
                                                             tmp_path: Path) -> None:
    """`ApiPodSource(access)` (the plugin's default) retries within upstream's bounds."""
    api.fail_next(PATH, 503, count=1)
    source = ApiPodSource(access_for(api, tmp_path))
    try:
        assert source.get_pod(NS, NAME)["metadata"]["name"] == NAME
    finally:
        source.close()
    assert api.count("GET", PATH) == 2
