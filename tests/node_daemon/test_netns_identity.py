"""The netns the agent found is the netns it writes to, even once its pid names another (root).

A pod netns is found by scanning `<host proc>/<pid>/ns/net`; between that scan and the write,
the pod's pause process can exit and its pid go to a process of another pod. We reproduce
that shape for real: the agent is given a host /proc of our own (`HostProc`: one entry per
pid, each a link to a real process's /proc directory), and between the scan and the use pod
A's pid is re-pointed at pod B's pause process, exactly what pid reuse looks like from /proc.
Real netns, real pause processes, real iptables rules in both pods.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from cni import netns
from cni.pipeline import program_pod
from cni.userns import foreign_owner
from node_daemon.actions import Actions, Reporter
from node_daemon.config import RepairConfig
from node_daemon.drift import DriftChecker
from node_daemon.metrics import Metrics
from node_daemon.netns_finder import NetnsFinder
from testbed.netns import Netns
from testbed.pods import BROKEN_WAITING, COMPLETED, NODE, make_pod
from testbed.userns import create_userns_netns
from tests.node_daemon.conftest import drifted, in_sync, istio_lines, random_ip, spec

pytestmark = pytest.mark.root
CFG = RepairConfig(node_name=NODE)


class HostProc:
    """A host /proc the test controls: `<dir>/<pid>` links to `/proc/<pid>` of a real
    process, so everything under it (ns/net, stat) is that process's; `reuse` re-points a pid
    at another process, as the kernel does when it hands a freed pid to a new process."""

    def __init__(self, root: Path, pids: list[int]) -> None:
        self.root = root
        (root / "stat").symlink_to("/proc/stat")
        for pid in [1, *pids]:
            (root / str(pid)).symlink_to(f"/proc/{pid}")

    def reuse(self, pid: int, by: int) -> None:
        """Pid `pid` now belongs to process `by` (one rename: never a moment without it)."""
        tmp = self.root / f".{pid}"
        tmp.symlink_to(f"/proc/{by}")
        os.replace(tmp, self.root / str(pid))


class ScanThen(NetnsFinder):
    """The agent's finder, with `then` run right after each scan returns (the moment between
    the scan and the use of what it found)."""

    def __init__(self, host_proc: Path, then: Callable[[], None]) -> None:
        super().__init__(host_proc)
        self.then = then

    def scan(self, *args, **kwargs):  # the old finder's scan took no IPs
        table = super().scan(*args, **kwargs)
        self.then()
        return table


def drift_once(pod, finder: NetnsFinder):
    """One drift pass over `pod` alone, fixing, with `finder`; its one result."""
    [result] = DriftChecker(CFG, Reporter(None, Metrics(), NODE), finder).check_all([pod])
    return result


def gone(ns: Netns) -> None:
    """Pod A is deleted: its pause process exits and the CNI DEL removes its interface (and
    IP); the netns file itself may live on (here: its bind mount; on a node: our fd)."""
    ns.pause.stop()
    ns.run("ip", "link", "del", f"{ns.name[-8:]}a")


@pytest.fixture
def two_pods(pod_netns, tmp_path):
    """Pods A and B with pause processes, and a host /proc that lists A's pid only."""
    a, b = pod_netns(), pod_netns()
    return a, b, HostProc(tmp_path, [a.pause.pid])


def test_drift_never_writes_the_pod_whose_process_took_the_pid(two_pods):
    """A's pause exits and its pid goes to a process in B's netns after the scan: B gets
    nothing, and A's result is a failure naming what changed, not "programmed in place"."""
    a, b, proc = two_pods
    pod = make_pod("a", ip=a.ip, init_status=COMPLETED, phase="Running")
    drifted(a, pod)

    def pid_reused() -> None:
        gone(a)
        proc.reuse(a.pause.pid, by=b.pause.pid)

    result = drift_once(pod, ScanThen(proc.root, pid_reused))
    assert istio_lines(b) == []  # B: nothing written
    assert result.result == "fail", result.message
    assert a.ip in result.message and "nothing written" in result.message
    assert "in place" not in result.message


def test_drift_fixes_the_netns_it_found_although_its_pid_now_names_another(two_pods):
    """The same swap while A still runs (only its pid entry moved): the drift check fixes A,
    the netns it held, and never touches B."""
    a, b, proc = two_pods
    pod = make_pod("a", ip=a.ip, init_status=COMPLETED, phase="Running")
    drifted(a, pod)

    result = drift_once(pod, ScanThen(proc.root,
                                      lambda: proc.reuse(a.pause.pid, by=b.pause.pid)))
    assert result.result == "success", result.message
    assert in_sync(a, pod)
    assert istio_lines(b) == []


def test_a_user_namespaced_pod_is_fixed_through_the_held_netns(pod_netns, cleanup, tmp_path):
    """A pod owned by its own user namespace (`hostUsers: false`) is written by a forked child
    inside that user namespace; the child inherits the netns entered by the held descriptor,
    so it too fixes A although A's pid now names B's process."""
    a = create_userns_netns(cleanup, "icni-r")
    ip = random_ip()
    a.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    a.run("ip", "addr", "add", f"{ip}/24", "dev", "eth0")
    a.run("ip", "link", "set", "eth0", "up")
    a.run("ip", "link", "set", "eth0p", "up")
    with netns.in_netns(a.path):
        owner = foreign_owner()  # not ours: every step on A runs in a forked child
    assert owner is not None
    os.close(owner)
    b = pod_netns()
    proc = HostProc(tmp_path, [a.holder.pid])
    pod = make_pod("a", ip=ip, init_status=COMPLETED, phase="Running")
    drifted(a, pod)

    result = drift_once(pod, ScanThen(proc.root,
                                      lambda: proc.reuse(a.holder.pid, by=b.pause.pid)))
    assert result.result == "success", result.message
    assert in_sync(a, pod)
    assert istio_lines(b) == []


def test_repair_in_place_never_writes_the_pod_whose_process_took_the_pid(two_pods):
    """Repair in place, the same swap between its scan and its write."""
    a, b, proc = two_pods
    pod = make_pod("a", ip=a.ip, init_status=BROKEN_WAITING)

    def pid_reused() -> None:
        gone(a)
        proc.reuse(a.pause.pid, by=b.pause.pid)

    actions = Actions(replace(CFG, repair_pods=True), None, Reporter(None, Metrics(), NODE),
                      ScanThen(proc.root, pid_reused))
    result = actions.repair(pod)
    assert istio_lines(b) == [] and istio_lines(a) == []
    assert result.result == "fail", result.message
    assert "failed to repair" in result.message and a.ip in result.message


def test_a_pid_reused_between_listing_and_opening_is_passed_over(two_pods):
    """Inside the scan itself: A's pid is listed (its netns stat'ed), then re-pointed at B's
    process before it is opened. The scan holds neither netns for A's IP: B's netns is not
    the one listed, and it does not have A's IP anyway."""
    a, b, proc = two_pods

    class ListThen(NetnsFinder):
        def namespaces(self):
            listed = super().namespaces()
            proc.reuse(a.pause.pid, by=b.pause.pid)
            return listed

    with ListThen(proc.root).scan([a.ip, b.ip]) as found:
        assert a.ip not in found and b.ip not in found and found.held == 0


def test_a_held_descriptor_reused_for_another_netns_is_refused(pod_netns):
    """The identity proof after entering: the held descriptor's number now names B's netns
    (closed and reused): entering it is refused before anything is read or written."""
    from cni.errors import NetnsChanged  # (here: the module also runs against older code)
    from cni.held_netns import hold_netns

    a, b = pod_netns(), pod_netns()
    pod = make_pod("a", ip=a.ip, init_status=COMPLETED)
    held = hold_netns(a.path)
    b_fd = netns.open_netns(b.path)
    try:
        os.dup2(b_fd, held.fd)
        with pytest.raises(NetnsChanged, match=r"entered net:\[\d+\] instead"):
            program_pod(held, spec(pod))
        with pytest.raises(NetnsChanged, match="no longer holds"):  # B has B's IP, not A's
            program_pod(held._replace(ino=os.fstat(b_fd).st_ino).expecting([a.ip]), spec(pod))
    finally:
        os.close(b_fd)
        held.close()
    assert istio_lines(b) == [] and istio_lines(a) == []


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_scans_hold_at_most_their_limit_and_close_everything(pod_netns):
    """A drift pass over more pods than the finder may hold at once scans in batches, never
    holds more than its limit, and leaves no descriptor open; so does repair in place."""
    nss = [pod_netns() for _ in range(3)]
    pods = [make_pod(f"p{i}", ip=ns.ip, init_status=COMPLETED, phase="Running")
            for i, ns in enumerate(nss)]
    for ns, pod in zip(nss, pods, strict=True):
        program_pod(ns.path, spec(pod))
    held: list[int] = []

    class Counting(NetnsFinder):
        def scan(self, *args, **kwargs):
            table = super().scan(*args, **kwargs)
            held.append(table.held)
            return table

    before = _open_fds()
    results = DriftChecker(CFG, Reporter(None, Metrics(), NODE),
                           Counting(Path("/proc"), limit=2)).check_all(pods)
    assert [r.result for r in results] == ["in_sync"] * 3
    assert held == [2, 1]
    broken = make_pod("x", ip=nss[0].ip, init_status=BROKEN_WAITING)
    actions = Actions(replace(CFG, repair_pods=True), None, Reporter(None, Metrics(), NODE),
                      NetnsFinder(Path("/proc")))
    assert actions.repair(broken).result == "success"
    assert _open_fds() == before


def test_explain_compares_the_netns_it_found_not_the_pid_s_new_owner(two_pods):
    """`explain --live` reads the held netns too: A's rules are in sync, and B's empty netns,
    which A's pid names by the time the rules are read, is not reported as A's."""
    from admin.explain_live import explain_live

    a, b, proc = two_pods
    pod = make_pod("a", ip=a.ip, init_status=COMPLETED, phase="Running")
    program_pod(a.path, spec(pod))
    finder = ScanThen(proc.root, lambda: proc.reuse(a.pause.pid, by=b.pause.pid))
    report = explain_live(pod, CFG, finder)
    assert (report.live_state, report.netns_error) == ("in sync", "")
    assert f"/{a.pause.pid}/ns/net (net:[" in report.netns
