"""The plugin's kubeconfig: the plugin's credential and the API server's CA, in the run dir.

It lives in CNI_AGENT_RUN_DIR (not net.d, where other CNIs' watchers would see the churn), holds
the *contents* of a token (the plugin runs on the host, where the pod's token path does not
exist), and is rewritten only when its bytes would change: at install, whenever the service
account dir changes (the kubelet rotates the token by swapping the `..data` symlink), and when
the agent renews the plugin's own token. The token is the plugin's own when the agent passes a
`TokenSource` that has one (`node_daemon.plugin_token`: a ServiceAccount granted only
`pods: get`, a token that outlives this pod); otherwise this pod's projected token, as upstream.
JSON, rendered by `cni.kubeconfig.render_kubeconfig`, because the plugin parses JSON fastest.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cni.kubeconfig import render_kubeconfig
from installer import atomic, rundir
from installer.config import InstallerConfig

log = logging.getLogger(__name__)


TokenSource = Callable[[], str | None]
"""The plugin's own token, or None to write this pod's service account token."""


class KubeconfigError(Exception):
    """The kubeconfig cannot be built or written; the message names the path and the reason."""


@dataclass(frozen=True)
class ServiceAccount:
    token: str
    ca_data: bytes | None


def server_url(cfg: InstallerConfig) -> str:
    """`<protocol>://<host>:<port>`, an IPv6 host bracketed (Go's net.JoinHostPort)."""
    if not cfg.k8s_service_host or not cfg.k8s_service_port:
        raise KubeconfigError(
            "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must both be set (the kubelet "
            "sets them in every pod; set them by hand when running outside one)")
    host = cfg.k8s_service_host.strip("[]")
    try:
        if ipaddress.ip_address(host.split("%")[0]).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a DNS name
    return f"{cfg.k8s_service_protocol}://{host}:{cfg.k8s_service_port}"


def read_service_account(cfg: InstallerConfig) -> ServiceAccount:
    token_path = cfg.service_account_path / "token"
    try:
        token = token_path.read_text().strip()
    except FileNotFoundError:
        raise KubeconfigError(f"service account token {token_path} does not exist (is this "
                              "running in a pod with a service account token mounted?)") from None
    except OSError as exc:
        raise KubeconfigError(f"cannot read service account token {token_path}: "
                              f"{exc.strerror or exc}") from exc
    except UnicodeDecodeError:
        raise KubeconfigError(f"service account token {token_path} is not UTF-8 text") from None
    if not token:
        raise KubeconfigError(f"service account token {token_path} is empty")
    if cfg.skip_tls_verify:
        return ServiceAccount(token, None)
    ca_path = Path(cfg.kube_ca_file) if cfg.kube_ca_file else cfg.service_account_path / "ca.crt"
    try:
        ca = ca_path.read_bytes()
    except OSError as exc:
        raise KubeconfigError(f"cannot read the API server CA {ca_path}: {exc.strerror or exc} "
                              "(set KUBE_CA_FILE, or SKIP_TLS_VERIFY=true)") from exc
    return ServiceAccount(token, ca)


def render(cfg: InstallerConfig, token_source: TokenSource | None = None) -> str:
    sa = read_service_account(cfg)
    token = (token_source() if token_source is not None else None) or sa.token
    return render_kubeconfig(server_url(cfg), token, sa.ca_data, cfg.skip_tls_verify)


def write_kubeconfig(cfg: InstallerConfig, token_source: TokenSource | None = None) -> bool:
    """Write the kubeconfig if its content or mode differ; True when it was (re)written."""
    text = render(cfg, token_source).encode()
    path = cfg.kubeconfig_path
    try:
        if atomic.read_bytes(path) == text and atomic.file_mode(path, -1) == cfg.kubeconfig_mode:
            return False
        rundir.ensure(path.parent)
        atomic.atomic_write(path, text, cfg.kubeconfig_mode)
    except OSError as exc:
        raise KubeconfigError(f"cannot write kubeconfig {path}: {exc.strerror or exc}") from exc
    log.info("wrote kubeconfig %s (server %s, mode %o)", path, server_url(cfg),
             cfg.kubeconfig_mode)
    return True


def remove_kubeconfig(cfg: InstallerConfig) -> None:
    path = cfg.kubeconfig_path
    try:
        if atomic.remove_file(path):
            log.info("removed kubeconfig %s", path)
    except OSError as exc:
        raise KubeconfigError(f"cannot remove kubeconfig {path}: {exc.strerror or exc}") from exc
