"""The end-to-end tier: a sandboxed node made of network namespaces, the real bridge and
host-local plugins, the API stand-in, and istio-cni run through the CNI protocol."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.kubeapi import KubeApiServer
from testbed.node import Node, missing_prerequisites, sandboxed_node

_SUBNETS = iter(range(10, 250))


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
        yield node
