"""A thread that cannot switch back out of a pod's netns never carries on as if it had (root).

`setns` back to the agent's own netns cannot be made to fail from outside, so that one call is
the injected fault (pytest-mock): every switch back to this process's netns fails with ENOMEM
from the moment the fault is armed. Everything else is real: pod netns, pause processes,
rules, the API stand-in, a subprocess for the exit. Each case runs on a thread of its own, so
the test's own thread never leaves its netns.

The module also runs against older code (what it needs of the new API is imported inside the
tests), where the failure was swallowed as one pod's failure and the thread stayed behind.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from cni import netns
from node_daemon.actions import Actions, Reporter
from node_daemon.config import RepairConfig
from node_daemon.drift import DriftChecker
from node_daemon.metrics import Metrics
from node_daemon.netns_finder import NetnsFinder
from testbed.controller import start_controller
from testbed.kubeapi import kubernetes_api_client
from testbed.pods import BROKEN_WAITING, COMPLETED, NODE, make_pod
from testbed.wait import wait_for
from tests.node_daemon.conftest import drifted

pytestmark = pytest.mark.root
CFG = RepairConfig(node_name=NODE)


def _key(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


HOME = _key(os.stat("/proc/self/ns/net"))
"""This process's own netns (the agent's, in the agent)."""


@pytest.fixture
def returns_fail(mocker):
    """Arm the fault: from then on, switching a thread back to `HOME` fails."""
    real = netns._setns

    def setns(fd: int, nstype: int) -> None:
        if _key(os.fstat(fd)) == HOME:
            raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
        real(fd, nstype)

    return lambda: mocker.patch.object(netns, "_setns", setns)


class ScanThen(NetnsFinder):
    """The agent's finder, with `then` run right after its scan (the fault armed there hits
    the visit that writes, not the scan's own)."""

    def __init__(self, then) -> None:
        super().__init__(Path("/proc"))
        self.then = then

    def scan(self, *args, **kwargs):
        table = super().scan(*args, **kwargs)
        self.then()
        return table


def on_a_thread(work) -> dict:
    """`work()` on a new thread: what it returned or raised, and the netns the thread was in
    when it finished."""
    out: dict = {}

    def run() -> None:
        try:
            out["returned"] = work()
        except BaseException as exc:  # noqa: BLE001 - what escaped is what is asserted
            out["raised"] = exc
        out["netns"] = _key(os.stat("/proc/thread-self/ns/net"))

    thread = threading.Thread(target=run, name="netns-work")
    thread.start()
    thread.join(120)
    assert not thread.is_alive()
    return out


def _work(case: str, pod_ns, arm):
    """The scan, a drift pass, a repair in place or `explain` of a pod in `pod_ns`."""
    from admin.explain_live import explain_live

    running = make_pod("p", ip=pod_ns.ip, init_status=COMPLETED, phase="Running")
    if case == "scan":
        arm()
        return lambda: NetnsFinder(Path("/proc")).scan([pod_ns.ip]).close()
    if case == "drift":
        drifted(pod_ns, running)
        checker = DriftChecker(CFG, Reporter(None, Metrics(), NODE), ScanThen(arm))
        return lambda: checker.check_all([running])
    if case == "repair":
        broken = make_pod("p", ip=pod_ns.ip, init_status=BROKEN_WAITING)
        actions = Actions(replace(CFG, repair_pods=True), None,
                          Reporter(None, Metrics(), NODE), ScanThen(arm))
        return lambda: actions.repair(broken)
    return lambda: explain_live(running, CFG, ScanThen(arm))


@pytest.mark.parametrize("case", ["scan", "drift", "repair", "explain"])
def test_a_failed_return_is_never_one_pods_failure(pod_netns, returns_fail, case):
    """The work ends with `NetnsReturnFailed` (no result, no report: nothing swallowed it),
    naming the netns, and the thread is by then in neither the pod's netns nor ours: it was
    moved into an empty one while the error unwound."""
    pod_ns = pod_netns()
    out = on_a_thread(_work(case, pod_ns, returns_fail))
    assert "returned" not in out, f"swallowed: {out.get('returned')!r}"
    raised = out["raised"]
    assert type(raised).__name__ == "NetnsReturnFailed", repr(raised)
    assert "could not switch this thread back out of /proc/" in str(raised)
    assert not isinstance(raised, Exception)  # no `except Exception` can swallow it
    assert out["netns"] not in (HOME, _key(os.stat(pod_ns.path)))


def test_the_repair_worker_ends_with_it(kube_api, cleanup, pod_netns, returns_fail,
                                        monkeypatch):
    """The controller's worker survives any `Exception` (one pod's bug must not stop it);
    not this: it ends with `NetnsReturnFailed`, which the agent turns into an exit."""
    ended: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", ended.append)
    pod_ns = pod_netns()
    pod = make_pod("p", ip=pod_ns.ip, init_status=COMPLETED, phase="Running")
    drifted(pod_ns, pod)
    kube_api.add_pod(pod)
    c = start_controller(cleanup, kubernetes_api_client(kube_api), CFG, drift=True,
                         finder=ScanThen(returns_fail))
    [worker] = [t for t in threading.enumerate() if t.name == "repair-worker"]

    c.check_drift_now()
    wait_for(lambda: not worker.is_alive(), 30, "the repair worker to end")
    [args] = ended
    assert args.thread is worker
    assert type(args.exc_value).__name__ == "NetnsReturnFailed"


def test_a_thread_ending_with_it_ends_the_agent():
    """With the agent's hook installed (`node_daemon.fatal`), a thread that ends with
    `NetnsReturnFailed` ends the process at once, with code 70 and a critical line naming
    the thread, before anything else runs; other threads' errors do not."""
    script = textwrap.dedent("""
        import logging, threading
        from cni.errors import NetnsReturnFailed
        from node_daemon.fatal import exit_when_stuck

        logging.basicConfig(level=logging.INFO)
        exit_when_stuck()

        def fail(exc):
            raise exc

        for exc in (ValueError("an ordinary bug"), NetnsReturnFailed("stuck in net:[1]")):
            t = threading.Thread(target=fail, args=(exc,), name="repair-worker")
            t.start()
            t.join()
            print("survived", type(exc).__name__, flush=True)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 70, run.stderr
    assert run.stdout == "survived ValueError\n"
    assert "CRITICAL" in run.stderr and "repair-worker: stuck in net:[1]" in run.stderr
