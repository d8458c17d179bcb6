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
