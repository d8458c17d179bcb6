"""The node agent's repair controller, wired the way `istio-cni-node run` wires it, against
the API stand-in (or any kubeconfig), for the tests, the demo and the benchmarks.

One place builds the chain (PodApi → Reporter → Actions [→ DriftChecker] → RepairController),
starts it, registers its stop on the caller's `Cleanup` and waits for its first list; callers
pick the config, the netns finder and the backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cni.backends import RuleMode
from node_daemon.actions import Actions, Reporter
from node_daemon.config import RepairConfig
from node_daemon.controller import STALE_AFTER, RepairController
from node_daemon.drift import DriftChecker
from node_daemon.kubeapi import PodApi
from node_daemon.metrics import Metrics
from node_daemon.netns_finder import HELD_NETNS_LIMIT, NetnsTable
from testbed.cleanup import Cleanup
from testbed.wait import wait_for


class NoNetns:
    """A netns finder that finds nothing (where there are no pod netns): repair in place
    then fails and is reported, which is all the API sees of it. Counts its calls."""

    limit = HELD_NETNS_LIMIT

    def __init__(self) -> None:
        self.calls = 0

    def scan(self, ips: Iterable[str], pods: Mapping[str, str] | None = None) -> NetnsTable:
        self.calls += 1
        return NetnsTable()


def start_controller(cleanup: Cleanup, api_client: Any, cfg: RepairConfig, *,
                     finder: Any = None, backend: str | RuleMode = "auto",
                     drift: bool = False,
                     watch_timeout: int = 300, drift_interval: float = 0.0,
                     stale_after: float = STALE_AFTER,
                     synced_within: float | None = 15.0) -> RepairController:
    """A started controller for `cfg` over `api_client` (a `kubernetes.client.ApiClient`).

    `finder` locates pod netns (None: repair in place is not possible); `drift` adds the
    drift checker. The controller's `Metrics` is `controller.metrics`. With `synced_within`,
    returns once its first list is done (a WaitTimeout after that many seconds)."""
    pods = PodApi(api_client)
    metrics = Metrics()
    reporter = Reporter(pods, metrics, cfg.node_name)
    actions = Actions(cfg, pods, reporter, finder, backend)
    checker = DriftChecker(cfg, reporter, finder, backend) if drift else None
    controller = RepairController(pods, cfg, actions, checker, watch_timeout, drift_interval,
                                  stale_after)
    controller.metrics = metrics  # type: ignore[attr-defined]
    controller.start()
    cleanup.add("stop the repair controller", controller.stop)
    if synced_within is not None:
        wait_for(lambda: controller.synced, synced_within, "the controller's first list")
    return controller
