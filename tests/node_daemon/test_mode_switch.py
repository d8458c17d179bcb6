"""A node switched between iptables and native nftables mode (root tier).

A pod programmed in one mode, then looked at in the other: CHECK (the pipeline's check) reports
a conflict naming the mode the pod was programmed in, with that mode's state as `extra`; the
drift check (and so repair, which reconciles the same way) resets the other mode's state and
programs the configured one, leaving nothing of the other mode behind.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cni import nft_exec
from cni.backends import RuleMode
from cni.pipeline import check_pod, plan, program_pod
from node_daemon.actions import Reporter
from node_daemon.config import RepairConfig
from node_daemon.drift import DriftChecker
from node_daemon.metrics import Metrics
from node_daemon.netns_finder import NetnsFinder
from testbed.pods import COMPLETED, NODE, make_pod

pytestmark = pytest.mark.root
MODES = {"iptables": RuleMode(), "nftables": RuleMode(native_nftables=True)}
SWITCHES = [("iptables", "nftables"), ("nftables", "iptables")]


@pytest.fixture(autouse=True)
def _nftables_available() -> None:
    if nft_exec.LibNftables.load() is None and nft_exec.NftBinary.find() is None:
        pytest.skip("neither libnftables nor nft is installed")


def iptables_state(ns) -> str:  # noqa: ANN001
    return "".join(ns.run(tool, check=False) for tool in (
        "iptables-nft-save", "iptables-legacy-save"))


def nftables_state(ns) -> str:  # noqa: ANN001
    return ns.run("nft", "list", "tables", check=False)


def has_state(ns, mode: str) -> bool:  # noqa: ANN001
    if mode == "iptables":
        return "ISTIO_OUTPUT" in iptables_state(ns)
    return "istio-proxy-nat" in nftables_state(ns)


@pytest.mark.parametrize(("before", "after"), SWITCHES)
def test_check_in_the_other_mode_is_a_conflict_naming_the_mode(pod_netns, before, after):
    ns = pod_netns()
    spec = plan(make_pod("app", ip=ns.ip, init_status=COMPLETED))[2]
    assert program_pod(ns.path, spec, MODES[before]) == "applied"
    diff = check_pod(ns.path, spec, MODES[after])
    assert diff.other_mode == MODES[before].label
    assert diff.state == "conflict" and diff.missing and diff.extra
    assert all(e.startswith(f"{MODES[before].label} mode: ") for e in diff.extra)
    assert check_pod(ns.path, spec, MODES[before]).state == "identical"


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize(("before", "after"), SWITCHES)
def test_drift_resets_the_other_mode_and_programs_the_configured_one(pod_netns, before, after,
                                                                     warm):
    """Cold, and warm as the agent runs it (`RuleMode.warm`: the same decisions)."""
    ns = pod_netns()
    pod = make_pod("app", ip=ns.ip, init_status=COMPLETED, phase="Running")
    spec = plan(pod)[2]
    program_pod(ns.path, spec, MODES[before])
    metrics = Metrics()
    checker = DriftChecker(RepairConfig(node_name=NODE), Reporter(None, metrics, NODE),
                           NetnsFinder(Path("/proc")), MODES[after]._replace(warm=warm))
    [result] = checker.check_all([pod])
    assert result.result == "success", result.message
    assert f"programmed in {MODES[before].label} mode" in result.message
    assert has_state(ns, after) and not has_state(ns, before)
    diff = check_pod(ns.path, spec, MODES[after])
    assert (diff.missing, diff.extra, diff.other_mode) == ((), (), "")
    [again] = checker.check_all([pod])
    assert again.result == "in_sync"
