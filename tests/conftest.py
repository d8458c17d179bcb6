"""Suite-wide fixtures: the Kubernetes API stand-in (from `testbed`), and the root tier's
stated skips.

`kube_api` / `kube_api_tls` are function-scoped: each test gets fresh state and the server is
stopped after it. The TLS material is made once per session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from testbed.cleanup import Cleanup
from testbed.kubeapi import KubeApiServer, TLSMaterial, make_tls_material, openssl_available


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Root-tier tests skip with a reason when not root (CI runs as root, so they run there)."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: real network namespaces and iptables")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def kube_api() -> Iterator[KubeApiServer]:
    """A plain-HTTP API server with fresh state, stopped after the test."""
    with KubeApiServer() as server:
        yield server


@pytest.fixture(scope="session")
def kube_api_tls_material(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    if not openssl_available():
        pytest.skip("the openssl CLI is needed to make test TLS certificates")
    return make_tls_material(tmp_path_factory.mktemp("kubeapi-tls"))


@pytest.fixture
def kube_api_tls(kube_api_tls_material: TLSMaterial) -> Iterator[KubeApiServer]:
    """An HTTPS API server (certificate for 127.0.0.1/::1/localhost), stopped after the test."""
    with KubeApiServer(tls=kube_api_tls_material) as server:
        yield server


@pytest.fixture
def cleanup() -> Iterator[Cleanup]:
    """The test's undo stack (testbed's one cleanup convention): what a test or fixture creates
    is registered on it at once and removed after the test, newest first."""
    with Cleanup() as undo:
        yield undo
