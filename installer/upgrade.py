"""Upgrade or uninstall? Deciding, on SIGTERM, whether to take the plugin off the node.

Upstream's sidecar mode always removes the plugin on shutdown, so every pod created on the node
while the agent is restarting (rolling update, OOM, `kubectl delete pod`) starts without
redirection and waits for the repair controller. With UNINSTALL_ON_SHUTDOWN=auto (default) we
remove it only when the DaemonSet itself is going away: the DaemonSet in POD_NAMESPACE is gone
(404) or has a deletionTimestamp. Otherwise the entry, binary and kubeconfig stay, and the next
agent takes them over. The trade-off, documented in docs/installer.md: while no agent runs, the
plugin keeps using the old kubeconfig; once that pod's bound token is invalidated, ADDs of
non-excluded pods fail (fail closed, the runtime retries) until the new agent rewrites it, which
is the same blocking upstream ambient mode chooses. When the API cannot answer, we uninstall:
a stale plugin on a node whose agent never returns blocks every pod; a missing one only delays
redirection until repair.
"""

from __future__ import annotations

import json
import logging
import ssl
import urllib.error
import urllib.request
from typing import Protocol
from urllib.parse import quote

from installer.config import InstallerConfig
from installer.kubeconfig_writer import KubeconfigError, read_service_account, server_url

log = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 5.0
"""Well inside the 30 s termination grace period, leaving time for the uninstall itself."""


class ProbeError(Exception):
    """Whether the DaemonSet is being deleted could not be determined."""


class DaemonSetProbe(Protocol):
    def being_deleted(self) -> bool:
        """True if the DaemonSet is gone or being deleted; raises ProbeError when unknown."""
        ...


class ApiDaemonSetProbe:
    """GET the DaemonSet with the agent's own service account (needs RBAC get daemonsets)."""

    def __init__(self, cfg: InstallerConfig, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
        self._cfg = cfg
        self._timeout = timeout

    def url(self) -> str:
        ns, name = quote(self._cfg.pod_namespace, safe=""), quote(self._cfg.daemonset_name,
                                                                  safe="")
        return f"{server_url(self._cfg)}/apis/apps/v1/namespaces/{ns}/daemonsets/{name}"

    def _tls(self, ca_data: bytes | None) -> ssl.SSLContext:
        if self._cfg.skip_tls_verify:
            return ssl._create_unverified_context()  # noqa: S323 - the admin asked for it
        return ssl.create_default_context(cadata=ca_data.decode() if ca_data else None)

    def being_deleted(self) -> bool:
        cfg = self._cfg
        if not cfg.pod_namespace:
            raise ProbeError("POD_NAMESPACE is not set, so the DaemonSet cannot be looked up")
        try:
            sa = read_service_account(cfg)
            url = self.url()
        except KubeconfigError as exc:
            raise ProbeError(str(exc)) from exc
        try:
            context = self._tls(sa.ca_data) if url.startswith("https:") else None
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ProbeError(f"cannot use the API server CA: {exc}") from exc
        request = urllib.request.Request(url, headers={
            "Authorization": f"Bearer {sa.token}", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self._timeout,  # noqa: S310
                                        context=context) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return True
            if exc.code in (401, 403):
                # `kubectl delete -f daemonset.yaml` deletes the DaemonSet first, but its pods
                # are stopped by the garbage collector after kubectl has also deleted the
                # ServiceAccount (401: its token is void) and the Role (403). Nothing else
                # takes our grant away while we run, so this is the manifest being deleted.
                log.info("shutdown: GET %s: HTTP %d: the ServiceAccount or its Role is gone "
                         "with the DaemonSet", url, exc.code)
                return True
            raise ProbeError(f"GET {url}: HTTP {exc.code} {exc.reason}") from exc
        except (OSError, ValueError) as exc:
            raise ProbeError(f"GET {url}: {exc}") from exc
        return bool((body.get("metadata") or {}).get("deletionTimestamp"))


def should_uninstall(cfg: InstallerConfig, probe: DaemonSetProbe) -> bool:
    """Apply UNINSTALL_ON_SHUTDOWN; logs the decision and its reason."""
    policy = cfg.uninstall_on_shutdown
    if policy == "true":
        log.info("shutdown: removing the plugin (UNINSTALL_ON_SHUTDOWN=true)")
        return True
    if policy == "false":
        log.info("shutdown: keeping the plugin in place (UNINSTALL_ON_SHUTDOWN=false)")
        return False
    try:
        deleting = probe.being_deleted()
    except ProbeError as exc:
        log.warning("shutdown: cannot tell upgrade from uninstall (%s): removing the plugin so "
                    "the node is not left with a plugin nobody maintains", exc)
        return True
    if deleting:
        log.info("shutdown: DaemonSet %s/%s is gone or being deleted: removing the plugin",
                 cfg.pod_namespace, cfg.daemonset_name)
        return True
    log.info("shutdown: DaemonSet %s/%s stays (upgrade or restart): keeping the plugin so new "
             "pods are still redirected", cfg.pod_namespace, cfg.daemonset_name)
    return False
