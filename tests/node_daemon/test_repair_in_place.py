"""Repair in place and the drift check, for real (root tier).

A pod netns made without rules, a "pause" process inside, the validation probe stand-in
failing with 126; the controller, watching the API stand-in, finds the netns through /proc by
the pod's IP and programs it; the probe then passes. The drift check restores rules an app
flushed or altered.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from cni import netns
from cni.backends.libiptc import find_xtables_libdir
from cni.held_netns import in_held_netns
from cni.pipeline import check_pod, plan, program_pod
from node_daemon.actions import Actions, Reporter
from node_daemon.config import RepairConfig
from node_daemon.controller import RepairController
from node_daemon.metrics import Metrics
from node_daemon.netns_finder import NetnsFinder
from testbed.controller import start_controller
from testbed.kubeapi import kubernetes_api_client
from testbed.pods import BROKEN_WAITING, COMPLETED, NODE, make_pod
from testbed.wait import wait_for

pytestmark = pytest.mark.root
PROBE = str(Path(__file__).resolve().parents[2] / "companions" / "validation_probe.py")
CFG = RepairConfig(node_name=NODE)


def spec(pod):
    """The redirect spec the pipeline makes of this pod."""
    return plan(pod)[2]


def probe(ns, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns.name, sys.executable, "-I", PROBE,
                           "--timeout", str(timeout), "--interval", "0.2"],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def daemon(kube_api, cleanup) -> Callable[..., RepairController]:
    """Factory: a started, synced controller finding pod netns through /proc, with the drift
    check; stopped after the test."""

    def make(cfg: RepairConfig, drift_interval: float = 0.0) -> RepairController:
        return start_controller(cleanup, kubernetes_api_client(kube_api), cfg,
                                finder=NetnsFinder(Path("/proc")), drift=True,
                                drift_interval=drift_interval)

    return make


def test_finder_maps_each_pod_ip_to_its_netns_and_never_the_host(pod_netns):
    a, b = pod_netns(), pod_netns()
    host_ips = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    with NetnsFinder(Path("/proc")).scan([a.ip, b.ip, "127.0.0.1", *host_ips]) as found:
        found_a, found_b = found.choose("", [a.ip]), found.choose("", [b.ip])
        assert found_a.pid == a.pause.pid and found_b.pid == b.pause.pid
        with in_held_netns(found.netns_for("", [a.ip])):
            assert netns.read_facts().ipv6(dual_stack=False) is False
        assert found_a.held.ino != found_b.held.ino
        assert "127.0.0.1" not in found
        assert not [ip for ip in host_ips if ip in found]
        assert found.held == 2  # only the netns that answer a wanted IP stay open


def test_repair_in_place_makes_the_validation_probe_pass(kube_api, daemon, pod_netns):
    ns = pod_netns()
    before = probe(ns, timeout=1)
    assert before.returncode == 126, before.stderr
    assert "iptables validation failed; workload is not ready for Istio" in before.stderr

    c = daemon(replace(CFG, repair_pods=True))
    kube_api.add_pod(make_pod("broken", ip=ns.ip, init_status=BROKEN_WAITING))
    wait_for(lambda: c.metrics.value("istio_cni_repair_pods_repaired_total", type="repair",
                                     result="success") == 1, what="repaired")
    [event] = [e for e in kube_api.events if e["reason"] == "RepairBrokenPod"]
    assert event["type"] == "Normal" and "applied" not in event["message"]
    assert "programmed" in event["message"]

    after = probe(ns, timeout=5)
    assert after.returncode == 0, after.stderr
    pod = kube_api.get_pod("shop", "broken")
    assert check_pod(ns.path, spec(pod)).missing == ()
    # Later updates of the still-crashlooping pod do not re-program it (upstream's uid memory).
    kube_api.update_pod("shop", "broken", {"metadata": {"labels": {"touch": "1"}}})
    wait_for(lambda: c.informer.get("shop/broken")["metadata"]["labels"].get("touch") == "1"
             and c.queue.idle(), what="update reconciled")
    assert c.metrics.value("istio_cni_repair_pods_repaired_total", type="repair",
                           result="success") == 1


def _flush(ns, how: str) -> None:
    for binary in ("iptables-nft", "iptables-legacy"):
        if how == "flush":
            ns.run(binary, "-t", "nat", "-F", check=False)
        elif how == "delete":
            ns.run(binary, "-t", "nat", "-F", check=False)
            ns.run(binary, "-t", "nat", "-X", check=False)
        elif how == "alter":
            ns.run(binary, "-t", "nat", "-I", "ISTIO_OUTPUT", "1", "-p", "tcp", "--dport",
                   "9999", "-j", "RETURN", check=False)


@pytest.mark.parametrize("how", ["flush", "delete", "alter"])
def test_drift_check_puts_flushed_or_altered_rules_back(kube_api, daemon, pod_netns, how):
    ns = pod_netns()
    pod = make_pod("app", ip=ns.ip, init_status=COMPLETED, phase="Running")
    assert program_pod(ns.path, spec(pod)) == "applied"
    kube_api.add_pod(pod)
    c = daemon(replace(CFG, label_pods=True))
    wait_for(lambda: "shop/app" in c.informer.cache, what="cached")
    c.check_drift_now()
    wait_for(lambda: c.metrics.value("istio_cni_drift_pods_total", result="in_sync") == 1,
             what="first check in sync")

    _flush(ns, how)
    assert check_pod(ns.path, spec(pod)).missing or how == "alter"
    c.check_drift_now()
    wait_for(lambda: c.metrics.value("istio_cni_drift_pods_total", result="success") == 1,
             what="drift repaired")
    diff = check_pod(ns.path, spec(pod))
    assert (diff.missing, diff.extra) == ((), ())
    [event] = [e for e in kube_api.events if e["reason"] == "RulesDrift"]
    assert "missing or altered" in event["message"]
    assert probe(ns, timeout=5).returncode == 0


def test_drift_check_runs_periodically_and_skips_never_programmed_pods(kube_api, daemon,
                                                                       pod_netns):
    programmed, never = pod_netns(), pod_netns()
    pod = make_pod("app", ip=programmed.ip, init_status=COMPLETED, phase="Running")
    program_pod(programmed.path, spec(pod))
    kube_api.add_pod(pod)
    kube_api.add_pod(make_pod("racer", ip=never.ip, init_status=BROKEN_WAITING))
    _flush(programmed, "flush")
    c = daemon(CFG, drift_interval=0.1)  # no repair mode: the racer is left alone
    wait_for(lambda: c.metrics.value("istio_cni_drift_pods_total", result="success") >= 1,
             what="periodic drift repair")
    assert check_pod(never.path, spec(pod)).clean


def test_python_iptables_node_repairs_a_pod_with_no_iptables_binaries(pod_netns, tmp_path,
                                                                       monkeypatch):
    """The agent's repair action on a node configured for python-iptables: it resets altered
    rules and programs them again with no iptables binary on PATH."""
    if shutil.which("iptables-legacy") is None or find_xtables_libdir() is None:
        pytest.skip("needs iptables-legacy (to alter the rules) and xtables extensions")
    ns = pod_netns()
    pod = make_pod("app", ip=ns.ip, init_status=BROKEN_WAITING)
    assert program_pod(ns.path, spec(pod), "python-iptables") == "applied"
    ns.run("iptables-legacy", "-t", "nat", "-I", "ISTIO_OUTPUT", "1", "-p", "tcp", "--dport",
           "9999", "-j", "RETURN")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("iptables-legacy-restore") is None

    metrics = Metrics()
    actions = Actions(replace(CFG, repair_pods=True), None, Reporter(None, metrics, NODE),
                      NetnsFinder(Path("/proc")), backend="python-iptables")
    result = actions.repair(pod)
    assert (result.result, "repaired" in result.message) == ("success", True), result.message
    diff = check_pod(ns.path, spec(pod), "python-iptables")
    assert (diff.missing, diff.extra) == ((), ())
    monkeypatch.undo()
    assert "--dport 9999" not in ns.run("iptables-legacy-save")
    assert probe(ns, timeout=5).returncode == 0
