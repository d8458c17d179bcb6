"""The end-to-end tier: a sandboxed node made of network namespaces, the real bridge and
host-local plugins, the API stand-in, and istio-cni run through the CNI protocol."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.agent import serve_plugin_calls
from testbed.kubeapi import KubeApiServer, kubernetes_api_client
from testbed.node import Node, missing_prerequisites, sandboxed_node

_SUBNETS = iter(range(10, 250))
AGENT_SERVES = os.environ.get("ISTIO_CNI_E2E_AGENT") == "1"
"""Run the tier with the node agent serving the plugin's ADD and CHECK (`cni.sock`): the
README's test command runs it both ways."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests of what only the in-process path does (its own pod lookup, its own report to the
    agent) have nothing to look at when the agent serves."""
    if not AGENT_SERVES:
        return
    skip = pytest.mark.skip(reason="tests the in-process path; the agent serves here")
    for item in items:
        if item.get_closest_marker("in_process") is not None:
            item.add_marker(skip)


@pytest.fixture
def node(tmp_path: Path, kube_api: KubeApiServer, request) -> Iterator[Node]:
    if reason := missing_prerequisites():
        pytest.skip(reason)
    idx = next(_SUBNETS)
    param = getattr(request, "param", "auto")  # an iptables backend, or istio-cni keys
    istio = {"pod_lookup_attempts": 3, "pod_lookup_interval_seconds": 0.05,
             "pod_lookup_deadline_seconds": 5,
             **(param if isinstance(param, dict) else {"iptables_backend": param})}
    with sandboxed_node(tmp_path, kube_api, prefix="icni-e2e", subnet_index=idx,
                        subnet_v4=f"10.99.{idx}.0/24", subnet_v6=f"fd00:99:{idx}::/64",
                        istio=istio) as node:
        if AGENT_SERVES:
            node.agent = serve_plugin_calls(node.cleanup, node.run_dir,
                                            kubernetes_api_client(kube_api))
        yield node
