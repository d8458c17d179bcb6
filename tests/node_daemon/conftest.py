"""Fixtures for the node daemon: pod netns for the root tier.

Pods are built with `testbed.pods` (the companion meshed workload, renamed and placed). Pod
netns are `icni-r-<hex>` with a veth carrying a random 10.213.x.y (other suites run in
parallel and use other ranges), plus a "pause container" inside that the daemon finds through
/proc; all are removed after the test.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from cni.pipeline import check_pod, plan, program_pod
from testbed.cleanup import Cleanup
from testbed.netns import Netns, create_netns


def random_ip() -> str:
    return f"10.213.{random.randint(1, 254)}.{random.randint(2, 254)}"


@pytest.fixture
def pod_netns(cleanup: Cleanup) -> Callable[[], Netns]:
    """Factory: a pod netns with an IP (`.ip`) and a "pause" process (`.pause`)."""

    def make() -> Netns:
        return create_netns(cleanup, "icni-r", v4=random_ip(), pause=True)

    return make


def spec(pod):
    """The redirect spec the pipeline makes of this pod."""
    return plan(pod)[2]


def istio_lines(ns: Netns) -> list[str]:
    """Every ISTIO line the netns holds, in both iptables variants."""
    out = ns.run("iptables-nft-save", check=False) + ns.run("iptables-legacy-save", check=False)
    return [ln for ln in out.splitlines() if "ISTIO" in ln]


def drifted(ns, pod) -> None:
    """`pod`'s rules programmed into `ns`, then ISTIO_OUTPUT flushed (an app with NET_ADMIN)."""
    assert program_pod(ns.path, spec(pod)) == "applied"
    for binary in ("iptables-nft", "iptables-legacy"):
        ns.run(binary, "-t", "nat", "-F", "ISTIO_OUTPUT", check=False)
    assert check_pod(ns.path, spec(pod)).missing


def in_sync(ns, pod) -> bool:
    """`ns` holds exactly `pod`'s rules."""
    diff = check_pod(ns.path, spec(pod))
    return (diff.missing, diff.extra) == ((), ())
