"""The plugin's credential: a token of its own ServiceAccount, minted and renewed by the agent.

The plugin runs on the host and reads its token from the kubeconfig in the run dir. It used to
be this pod's own projected token, which the API rejects as soon as the pod object is deleted:
a rollout whose new image cannot be pulled then failed every pod's ADD on the node (401), and
whoever read that file held every grant of the agent's ServiceAccount, cluster-wide node writes
included. Now the agent asks for a token of a dedicated ServiceAccount (`PLUGIN_SERVICE_ACCOUNT`,
granted only `pods: get`) with a TokenRequest, valid `PLUGIN_TOKEN_SECONDS` and bound to this
node's Node object (it dies with the Node), and renews it every `refresh_interval` (an hour, or
half the lifetime when that is shorter). Whatever happens to the agent, the plugin's token in
the run dir stays valid for at least `lifetime - refresh_interval` after the last renewal.

Where the agent may not create that token (upstream's chart grants no `serviceaccounts/token`)
or `PLUGIN_SERVICE_ACCOUNT` is empty, `current()` is None and the installer writes this pod's
own token, as before; that is said once at start. A TokenRequest that fails is retried on the
next pass; meanwhile the plugin keeps the last token it was given (or this pod's own at first).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from node_daemon.kubeapi import ApiError
from node_daemon.selfapi import AccessQuestion, IssuedToken, Timeout

log = logging.getLogger(__name__)

REFRESH_CAP = 3600.0
"""Renew at least this often (seconds)."""
RETRY_SECONDS = 30.0
"""After a failed TokenRequest, the next attempt."""
REQUEST_TIMEOUT: Timeout = (3.0, 10.0)


class TokenApi(Protocol):
    def request_token(self, namespace: str, service_account: str, seconds: int,
                      node: str | None, timeout: Timeout) -> IssuedToken: ...


def token_question(namespace: str, service_account: str) -> AccessQuestion:
    return AccessQuestion("create", "serviceaccounts", subresource="token",
                          namespace=namespace, name=service_account)


class PluginToken:
    """The token the installer writes into the plugin's kubeconfig, kept fresh."""

    def __init__(self, api: TokenApi, namespace: str, service_account: str, node: str,
                 seconds: int, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
                 ) -> None:
        self.api, self.namespace, self.service_account = api, namespace, service_account
        self.node, self.seconds, self._now = node, seconds, now
        self.refresh_interval = min(REFRESH_CAP, seconds / 2)
        self._bind_node = True
        self._lock = threading.Lock()
        self._token: IssuedToken | None = None
        self._issued: datetime | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> str | None:
        """The plugin's token, or None until one was issued (the installer then writes this
        pod's own)."""
        with self._lock:
            return self._token.token if self._token else None

    @property
    def expires(self) -> datetime | None:
        with self._lock:
            return self._token.expires if self._token else None

    def renew(self) -> bool:
        """One TokenRequest; True when a new token is in place."""
        try:
            issued = self._request()
        except ApiError as exc:
            log.warning("plugin credential: token request for %s/%s failed: %s; the plugin "
                        "keeps its current token, retrying in %gs", self.namespace,
                        self.service_account, exc.message, RETRY_SECONDS)
            return False
        first = self._token is None
        with self._lock:
            self._token, self._issued = issued, self._now()
        (log.info if first else log.debug)(
            "plugin credential: a token of %s/%s%s, valid until %s, renewed every %gs",
            self.namespace, self.service_account,
            f" bound to node {self.node}" if self._bind_node else "",
            issued.expires.strftime("%Y-%m-%dT%H:%M:%SZ"), self.refresh_interval)
        return True

    def _request(self) -> IssuedToken:
        if self._bind_node and self.node:
            try:
                return self.api.request_token(self.namespace, self.service_account,
                                              self.seconds, self.node, REQUEST_TIMEOUT)
            except ApiError as exc:
                if exc.status not in (400, 422):
                    raise
                # an API server without node-bound tokens (Kubernetes < 1.32 by default)
                log.info("plugin credential: node-bound tokens refused (%s); using tokens "
                         "with an expiry only", exc.message)
                self._bind_node = False
        return self.api.request_token(self.namespace, self.service_account, self.seconds,
                                      None, REQUEST_TIMEOUT)

    def due_in(self) -> float:
        """Seconds until the next renewal (0: now)."""
        with self._lock:
            issued, token = self._issued, self._token
        if issued is None or token is None:
            return 0.0
        lifetime = (token.expires - issued).total_seconds()
        interval = min(self.refresh_interval, lifetime / 2)
        return max(0.0, interval - (self._now() - issued).total_seconds())

    def start(self, renewed: Callable[[], None]) -> None:
        """Renew in a daemon thread, calling `renewed()` (rewrite the kubeconfig) after each."""
        def run() -> None:
            while not self._stop.is_set():
                due = self.due_in()
                if due > 0:
                    self._stop.wait(due)
                    continue
                if self.renew():
                    try:
                        renewed()
                    except Exception as exc:  # noqa: BLE001 - retried at the next renewal
                        log.warning("plugin credential: kubeconfig not rewritten: %s", exc)
                else:
                    self._stop.wait(RETRY_SECONDS)

        self._thread = threading.Thread(target=run, name="plugin-token", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
