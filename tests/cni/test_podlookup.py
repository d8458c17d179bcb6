"""cni.podlookup against a real local API server: retries, deadline, TLS, error codes.

Faults are caused server-side over a real socket; only the pause between attempts is injected
(`sleep=`) so the tests do not wait. No assertion is about elapsed time.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from cni.errors import CNIError, PluginNotAvailable, PodLookupFailed, TryAgainLater
from cni.kubeconfig import KubeAccess, load_kubeconfig
from cni.podlookup import ApiPodSource, RetryPolicy, get_pod, pod_path
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
    api.delay(PATH, seconds=30.0, count=1)
    policy = RetryPolicy(attempts=3, interval=1.0, deadline=30.0, timeout=0.3)

    assert lookup(access_for(api, tmp_path), policy)["metadata"]["name"] == NAME
    assert api.count("GET", PATH) == 2


def test_slow_responses_forever(api: KubeApiServer, tmp_path: Path) -> None:
    api.delay(PATH, seconds=30.0)
    policy = RetryPolicy(attempts=2, interval=1.0, deadline=30.0, timeout=0.2)

    exc = failure(access_for(api, tmp_path), TryAgainLater, policy=policy)

    assert "timed out" in exc.msg and "2 attempt(s)" in exc.msg
    assert isinstance(exc.__cause__, TimeoutError)


def test_hanging_server_cannot_outlast_the_deadline(api: KubeApiServer, tmp_path: Path) -> None:
    """The per-attempt timeout (60 s) is capped by the deadline (0.5 s)."""
    api.hang(PATH)
    policy = RetryPolicy(attempts=30, interval=1.0, deadline=0.5, timeout=60.0)

    exc = failure(access_for(api, tmp_path), TryAgainLater, policy=policy)

    assert "timed out" in exc.msg and PATH in exc.msg


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
