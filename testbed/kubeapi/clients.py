"""How clients reach the API stand-in: the kubeconfig the installer would write, the official
`kubernetes` client pointed at it, and an address where nothing answers.

`kubernetes` is imported inside `kubernetes_api_client` only, so the plugin's tests, which never
call it, do not pay for it.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from cni.kubeconfig import render_kubeconfig
from testbed.kubeapi.server import KubeApiServer

DEFAULT_TOKEN = "test-sa-token-0123456789"


def write_kubeconfig(
    directory: Path,
    server: KubeApiServer | str,
    *,
    token: str | None = None,
    ca_data: bytes | None = None,
    insecure: bool = False,
    name: str = "istio-cni-kubeconfig",
) -> Path:
    """Write the kubeconfig our installer would write for `server` into `directory`.

    Given a `KubeApiServer`, the token defaults to the one it requires (else `DEFAULT_TOKEN`)
    and the CA to its own.
    """
    if isinstance(server, KubeApiServer):
        token = token or server.token
        ca_data = ca_data if ca_data is not None or insecure else server.ca_pem
        server = server.url
    path = directory / name
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
