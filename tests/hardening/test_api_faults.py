"""API faults at the ADD level, through the CNI protocol: the plugin chained after the real
bridge + host-local in a sandboxed node, talking to the API stand-in over a real socket.

Faults are injected server-side (`fail_next`, `hang`), never with sleeps. Every ADD honours its
retry budget (`pod_lookup_attempts`, counted as GETs the server saw) and its overall deadline
(`pod_lookup_deadline_seconds`), and a failure is a clear CNI error naming the attempts. The
cases already covered in tests/e2e/test_plugin_chain.py (API down → 11, 401 → 100, missing
kubeconfig → 50, excluded pods without a kubeconfig) are not repeated here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.kubeapi import KubeApiServer
from testbed.node import Node, istio_lines, missing_prerequisites, sandboxed_node
from testbed.pods import workload

pytestmark = pytest.mark.root
POD_GET = r"/api/v1/namespaces/[^/]+/pods/[^/]+$"


@pytest.fixture
def node(tmp_path: Path, kube_api: KubeApiServer) -> Iterator[Node]:
    """The e2e tier's sandboxed node (netns, bridge + host-local, run dir), `icni-h-` names."""
    if reason := missing_prerequisites():
        pytest.skip(reason)
    istio = {"pod_lookup_attempts": 5, "pod_lookup_interval_seconds": 0.01,
             "pod_lookup_deadline_seconds": 20}
    with sandboxed_node(tmp_path, kube_api, prefix="icni-h", subnet_index=7,
                        subnet_v4="10.98.7.0/24", istio=istio) as node:
        yield node


def tune(node: Node, **settings: object) -> None:
    node.istio_entry().update(settings)


def add(node: Node, pod: dict) -> tuple[str, list]:
    pod_ns = node.new_pod_netns()
    return pod_ns, node.add(pod_ns, pod)


def assert_redirected(pod_ns: str, calls: list) -> None:
    assert [c.status for c in calls] == [0, 0], calls[-1].stdout + calls[-1].stderr
    assert any("-A OUTPUT -j ISTIO_OUTPUT" in ln for ln in istio_lines(pod_ns))


def assert_failed(pod_ns: str, calls: list, code: int) -> dict:
    assert [c.status for c in calls] == [0, 1], calls[-1].stdout + calls[-1].stderr
    err = calls[-1].result
    assert set(err) <= {"cniVersion", "code", "msg", "details"}
    assert err["code"] == code, err
    assert "Traceback" not in calls[-1].stdout
    assert istio_lines(pod_ns) == []  # fail closed: nothing programmed
    return err


def attempts_in(msg: str) -> int:
    match = re.search(r"gave up after (\d+) attempt\(s\)", msg)
    assert match, msg
    return int(match[1])


# --- transient failures, then the pod: the ADD completes -----------------------------------

def test_500s_then_200_succeeds_within_the_budget(node: Node):
    pod = node.api.add_pod(workload("meshed-pod"))
    node.api.fail_next(POD_GET, 500, count=4, method="GET")  # attempts: 5
    pod_ns, calls = add(node, pod)
    assert_redirected(pod_ns, calls)
    assert node.api.count("GET", POD_GET) == 5


def test_429_and_503_mixed_then_200_succeeds(node: Node):
    pod = node.api.add_pod(workload("meshed-pod"))
    node.api.fail_next(POD_GET, 429, count=1, method="GET")
    node.api.fail_next(POD_GET, 503, count=2, method="GET")
    pod_ns, calls = add(node, pod)
    assert_redirected(pod_ns, calls)
    assert node.api.count("GET", POD_GET) == 4


def test_pod_not_yet_visible_404_then_200_succeeds(node: Node):
    """The runtime can call ADD before the API server serves the pod (upstream's reason for
    retrying): 404 for the first N GETs, then the pod."""
    pod = node.api.add_pod(workload("meshed-pod"))
    node.api.fail_next(POD_GET, 404, count=3, method="GET")
    pod_ns, calls = add(node, pod)
    assert_redirected(pod_ns, calls)
    assert node.api.count("GET", POD_GET) == 4


# --- the budget runs out: a clear failure, exactly `attempts` GETs ---------------------------

@pytest.mark.parametrize("attempts", [1, 3, 6])
def test_500s_forever_use_exactly_the_attempt_budget(node: Node, attempts: int):
    pod = node.api.add_pod(workload("meshed-pod"))
    tune(node, pod_lookup_attempts=attempts)
    node.api.fail_next(POD_GET, 500, count=1000, method="GET")
    pod_ns, calls = add(node, pod)
    err = assert_failed(pod_ns, calls, 11)
    assert node.api.count("GET", POD_GET) == attempts
    assert attempts_in(err["msg"]) == attempts
    assert "500" in err["msg"] and "injected failure 500" in err["msg"]


def test_pod_never_visible_fails_for_good_after_the_budget(node: Node):
    pod = workload("meshed-pod", name="never-created")
    tune(node, pod_lookup_attempts=4)
    pod_ns, calls = add(node, pod)
    err = assert_failed(pod_ns, calls, 100)
    assert node.api.count("GET", POD_GET) == 4
    assert attempts_in(err["msg"]) == 4
    assert "404" in err["msg"] and "never-created" in err["msg"]


def test_deadline_cuts_the_retries_short(node: Node):
    """A budget of 10,000 attempts 50 ms apart, a deadline of 1 s: the deadline wins, and the
    message's attempt count is what the server saw."""
    pod = node.api.add_pod(workload("meshed-pod"))
    tune(node, pod_lookup_attempts=10_000, pod_lookup_interval_seconds=0.05,
         pod_lookup_deadline_seconds=1)
    node.api.fail_next(POD_GET, 503, count=100_000, method="GET")
    pod_ns, calls = add(node, pod)
    err = assert_failed(pod_ns, calls, 11)
    seen = node.api.count("GET", POD_GET)
    assert 1 <= seen < 10_000
    assert attempts_in(err["msg"]) == seen


def test_server_that_never_answers_fails_within_the_deadline(node: Node):
    """Accepts the connection, reads the request, never answers: the attempt's socket timeout
    is capped by what is left of the deadline, so one hung GET cannot outlive the ADD."""
    pod = node.api.add_pod(workload("meshed-pod"))
    tune(node, pod_lookup_attempts=30, pod_lookup_interval_seconds=1,
         pod_lookup_deadline_seconds=1.5)
    node.api.hang(POD_GET, method="GET")
    pod_ns, calls = add(node, pod)
    err = assert_failed(pod_ns, calls, 11)
    assert attempts_in(err["msg"]) == node.api.count("GET", POD_GET) == 1
    assert "timed out" in err["msg"]


def test_hung_first_attempt_then_answer_within_the_deadline(node: Node):
    """Only the first GET hangs; its timeout leaves room in the deadline for a second one."""
    pod = node.api.add_pod(workload("meshed-pod"))
    tune(node, pod_lookup_attempts=3, pod_lookup_interval_seconds=0.01,
         pod_lookup_deadline_seconds=60)
    node.api.hang(POD_GET, count=1, method="GET")
    pod_ns, calls = add(node, pod)
    # each attempt is capped at 5 s (RetryPolicy.timeout): the second attempt gets the pod
    assert_redirected(pod_ns, calls)
    assert node.api.count("GET", POD_GET) == 2


def test_excluded_and_agent_pods_never_wait_for_a_hung_api(node: Node):
    node.api.hang(r".*")
    for pod in (workload("meshed-pod", namespace="kube-system"),
                workload("plain-pod", name="istio-cni-node-x7k2p", namespace="istio-system")):
        pod_ns, calls = add(node, pod)
        assert [c.status for c in calls] == [0, 0], calls[-1].stdout
        assert istio_lines(pod_ns) == []
    assert node.api.requests == []
