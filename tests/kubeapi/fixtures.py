"""pytest fixtures and helpers around the test API server.

`kube_api` / `kube_api_tls` are function-scoped: each test gets fresh state and the server is
stopped after it. The TLS material is made once per session. `kubernetes` is imported lazily
(only by `kubernetes_api_client`), so loading these fixtures costs the plugin's tests nothing.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni.kubeconfig import render_kubeconfig
from tests.kubeapi.server import KubeApiServer
from tests.kubeapi.tls import TLSMaterial, make_tls_material, openssl_available

DEFAULT_TOKEN = "test-sa-token-0123456789"


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


def write_kubeconfig(
    tmp_path: Path,
    server: KubeApiServer | str,
    *,
    token: str | None = None,
    ca_data: bytes | None = None,
    insecure: bool = False,
    name: str = "istio-cni-kubeconfig",
) -> Path:
    """Write the kubeconfig our installer would write for `server`; returns its path.

    Given a `KubeApiServer`, the token defaults to the one it requires (else `DEFAULT_TOKEN`)
    and the CA to its own.
    """
    if isinstance(server, KubeApiServer):
        token = token or server.token
        ca_data = ca_data if ca_data is not None or insecure else server.ca_pem
        server = server.url
    path = tmp_path / name
    path.write_text(render_kubeconfig(server, token or DEFAULT_TOKEN, ca_data, insecure))
    path.chmod(0o600)
    return path


def down_url(host: str = "127.0.0.1") -> str:
    """An http URL on `host` where nothing listens (a port just bound and released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def kubernetes_api_client(server: KubeApiServer, token: str | None = None) -> Any:
    """A `kubernetes.client.ApiClient` pointed at `server` (TLS verified against its CA)."""
    from kubernetes import client

    config = client.Configuration()
    config.host = server.url
    if server.tls is not None:
        config.ssl_ca_cert = str(server.tls.ca_file)
    token = token or server.token
    if token:
        config.api_key = {"authorization": token}
        config.api_key_prefix = {"authorization": "Bearer"}
    return client.ApiClient(config)
