"""A pod's netns is the one its cgroup names, never one that merely holds its IP (root).

A pod with NET_ADMIN can add another pod's IP to its own netns. If its processes are older,
"the oldest netns holding the IP" is the attacker's: the drift check or repair in place then
writes the victim's rules there and reports the victim fixed, while the victim stays
unredirected. Here both pods are real netns with real processes; where a test says so, the
processes are put into real cgroups named the way the kubelet names a pod's
(`testbed.cgroups`), so the agent can tell whose each netns is.

The module also runs against code older than the choice rule (the new API is imported inside
the tests that need it).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from node_daemon.actions import Actions, Reporter
from node_daemon.config import RepairConfig
from node_daemon.drift import DriftChecker
from node_daemon.metrics import Metrics
from node_daemon.netns_finder import NetnsFinder
from testbed import cgroups
from testbed.netns import Netns, start_in
from testbed.pods import BROKEN_WAITING, COMPLETED, NODE, make_pod
from tests.node_daemon.conftest import drifted, in_sync, istio_lines

pytestmark = pytest.mark.root
CFG = RepairConfig(node_name=NODE)


def with_uid(pod: dict) -> dict:
    pod["metadata"]["uid"] = str(uuid.uuid4())
    return pod


def steal(attacker: Netns, victim: Netns) -> None:
    """The attacker (NET_ADMIN in its own netns) adds the victim's IP to its interface."""
    attacker.run("ip", "addr", "add", f"{victim.ip}/32", "dev", f"{attacker.name[-8:]}a")


def in_pod_cgroup(cleanup, pid: int, uid: str, driver: str = "systemd") -> None:
    """Process `pid` becomes a container process of the pod with `uid`."""
    if not cgroups.writable():
        pytest.skip("no writable cgroup v2 hierarchy on this host")
    cgroups.pod_cgroup(cleanup, uid, driver).add(pid)


def drift_once(pod):
    [result] = DriftChecker(CFG, Reporter(None, Metrics(), NODE),
                            NetnsFinder(Path("/proc"))).check_all([pod])
    return result


@pytest.fixture
def attacked(pod_netns):
    """An attacker pod, started first (its processes are older), then the victim; the
    attacker's netns holds the victim's IP too."""
    attacker = pod_netns()
    victim = pod_netns()
    steal(attacker, victim)
    return attacker, victim


def test_drift_never_writes_an_older_netns_holding_the_pods_ip(attacked):
    """No cgroup names either pod: two netns hold the IP and nothing says which is the pod's.
    Neither is written; the victim's result is a failure naming both netns."""
    attacker, victim = attacked
    pod = with_uid(make_pod("victim", ip=victim.ip, init_status=COMPLETED, phase="Running"))
    drifted(victim, pod)

    result = drift_once(pod)
    assert istio_lines(attacker) == []
    assert not in_sync(victim, pod)  # left as it was: nothing written there either
    assert result.result == "fail", result.message
    assert f"IP {victim.ip} is in 2 netns" in result.message, result.message
    assert f"/{attacker.pause.pid}/ns/net" in result.message
    assert f"/{victim.pause.pid}/ns/net" in result.message
    assert "nothing written" in result.message


def test_repair_in_place_never_writes_an_older_netns_holding_the_pods_ip(attacked):
    attacker, victim = attacked
    pod = with_uid(make_pod("victim", ip=victim.ip, init_status=BROKEN_WAITING))
    actions = Actions(replace(CFG, repair_pods=True), None, Reporter(None, Metrics(), NODE),
                      NetnsFinder(Path("/proc")))

    result = actions.repair(pod)
    assert istio_lines(attacker) == [] and istio_lines(victim) == []
    assert result.result == "fail", result.message
    assert "not repaired" in result.message and f"IP {victim.ip} is in 2 netns" in result.message


@pytest.mark.parametrize("victim_cgroup", ["systemd", "cgroupfs", None])
def test_the_cgroup_decides_whose_netns_it_is(attacked, cleanup, caplog, victim_cgroup):
    """The attacker's processes are in its pod's cgroup: its netns is its own, never the
    victim's, whatever IP it holds; the victim's netns (named by the victim's cgroup, in
    either driver's spelling, or by none) is the one fixed, and a warning names both pods."""
    attacker, victim = attacked
    pod = with_uid(make_pod("victim", ip=victim.ip, init_status=COMPLETED, phase="Running"))
    attacker_uid = str(uuid.uuid4())
    in_pod_cgroup(cleanup, attacker.pause.pid, attacker_uid)
    if victim_cgroup:
        in_pod_cgroup(cleanup, victim.pause.pid, pod["metadata"]["uid"], victim_cgroup)
    drifted(victim, pod)

    with caplog.at_level(logging.WARNING, logger="node_daemon.netns_finder"):
        result = drift_once(pod)
    assert result.result == "success", result.message
    assert in_sync(victim, pod)
    assert istio_lines(attacker) == []
    [warning] = [r.getMessage() for r in caplog.records if "never used" in r.getMessage()]
    assert "shop/victim" in warning and f"pod uid {attacker_uid}" in warning


def test_another_pods_netns_is_never_used_though_it_alone_holds_the_ip(attacked, cleanup):
    """The victim's netns is gone (its interface and IP with it); only the attacker's netns,
    its cgroup naming the attacker's pod, holds the IP: nothing is written, by drift, repair
    in place or `explain`, and each says whose netns holds the IP."""
    from admin.explain_live import explain_live

    attacker, victim = attacked
    in_pod_cgroup(cleanup, attacker.pause.pid, attacker_uid := str(uuid.uuid4()))
    victim.run("ip", "link", "del", f"{victim.name[-8:]}a")
    running = with_uid(make_pod("victim", ip=victim.ip, init_status=COMPLETED, phase="Running"))
    broken = with_uid(make_pod("victim", ip=victim.ip, init_status=BROKEN_WAITING))
    actions = Actions(replace(CFG, repair_pods=True), None, Reporter(None, Metrics(), NODE),
                      NetnsFinder(Path("/proc")))

    drift, repair = drift_once(running), actions.repair(broken)
    report = explain_live(running, CFG, NetnsFinder(Path("/proc")))
    assert istio_lines(attacker) == []
    for message in (drift.message, repair.message, report.netns_error):
        assert f"{victim.ip}" in message and f"pod uid {attacker_uid}" in message, message
    assert (drift.result, repair.result, report.live_state) == ("fail", "fail", "unknown")


def test_a_pods_netns_by_cgroup_must_hold_its_ip(pod_netns, cleanup):
    """UID first, and the IP must be inside: the pod's own netns (by cgroup) lost its IP,
    which a netns naming no pod holds: that one is not taken instead."""
    own, other = pod_netns(), pod_netns()
    pod = with_uid(make_pod("p", ip=other.ip, init_status=COMPLETED, phase="Running"))
    in_pod_cgroup(cleanup, own.pause.pid, pod["metadata"]["uid"])
    drifted(other, pod)

    result = drift_once(pod)
    assert result.result == "fail" and "does not hold IP" in result.message, result.message
    assert not in_sync(other, pod) and istio_lines(own) == []


@pytest.mark.parametrize("case", ["two netns of the pod", "a netns shared with another pod"])
def test_a_netns_not_the_pods_alone_is_refused(pod_netns, cleanup, case):
    """Two netns whose cgroups name the pod both hold its IP: which is live cannot be told.
    A process of another pod has entered the pod's netns: the netns is no longer the pod's
    alone. Either way nothing is written and the failure says why."""
    ns = pod_netns()
    pod = with_uid(make_pod("p", ip=ns.ip, init_status=COMPLETED, phase="Running"))
    uid = pod["metadata"]["uid"]
    in_pod_cgroup(cleanup, ns.pause.pid, uid)
    drifted(ns, pod)
    if case == "two netns of the pod":
        twin = pod_netns()
        steal(twin, ns)
        in_pod_cgroup(cleanup, twin.pause.pid, uid)
        expected = f"IP {ns.ip} is in 2 netns of this pod"
    else:
        twin = None
        intruder = start_in(cleanup, ns.name, "intruder",
                            ["sh", "-c", "echo ready; exec sleep 600"])
        intruder.wait_line(lambda ln: ln == "ready", 10, "ready")
        in_pod_cgroup(cleanup, intruder.pid, other := str(uuid.uuid4()))
        expected = f"of shop/p, pod uid {other}"  # the pod's own name first

    result = drift_once(pod)
    assert result.result == "fail" and expected in result.message, result.message
    assert not in_sync(ns, pod)
    assert twin is None or istio_lines(twin) == []
