"""What the agent asks the API about itself: its own pod, its DaemonSet, its permissions, the
plugin's token, and whether an admission policy holds its node writes.

Each call takes its own (connect, read) timeout, because the callers run against a clock: the
shutdown decision within the pod's grace period, the start-up review once, before anything
waits on it. Failures are `kubeapi.ApiError`s (status 0: no HTTP answer in time), so a caller
tells "the API said no" (401, 403, 404) from "the API did not answer".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from node_daemon.kubeapi import ApiError, _translated

Timeout = tuple[float, float]


@dataclass(frozen=True)
class AccessQuestion:
    """One SelfSubjectAccessReview: may this agent `verb` `resource[/subresource]` [`name`]
    in `group` [in `namespace`]?"""

    verb: str
    resource: str
    group: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    def __str__(self) -> str:
        what = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        if self.group:
            what = f"{what}.{self.group}"
        if self.name:
            what = f"{what}/{self.name}"
        return f"{self.verb} {what}" + (f" in {self.namespace}" if self.namespace else "")

    def body(self) -> dict[str, Any]:
        attrs = {"verb": self.verb, "group": self.group, "resource": self.resource}
        for key in ("subresource", "namespace", "name"):
            if getattr(self, key):
                attrs[key] = getattr(self, key)
        return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {"resourceAttributes": attrs}}


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires: datetime


class SelfApi:
    """`api_client` is a `kubernetes.client.ApiClient` (the agent's own credentials); calls go
    through a client of their own with the same configuration and no retries, because urllib3
    retries a timed-out GET three times, which would make each timeout four."""

    def __init__(self, api_client: Any) -> None:
        import copy

        from kubernetes import client

        configuration = copy.copy(api_client.configuration)
        configuration.retries = False
        api_client = client.ApiClient(configuration)
        self._core = client.CoreV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)

    def get_pod(self, namespace: str, name: str, timeout: Timeout) -> dict[str, Any]:
        with _translated(f"get pod {namespace}/{name}"):
            resp = self._core.read_namespaced_pod(name, namespace, _preload_content=False,
                                                  _request_timeout=timeout)
            return json.loads(resp.data)

    def get_daemonset(self, namespace: str, name: str, timeout: Timeout) -> dict[str, Any]:
        with _translated(f"get daemonset {namespace}/{name}"):
            resp = self._apps.read_namespaced_daemon_set(name, namespace, _preload_content=False,
                                                         _request_timeout=timeout)
            return json.loads(resp.data)

    def may(self, question: AccessQuestion, timeout: Timeout) -> bool:
        """The API server's answer to one SelfSubjectAccessReview."""
        with _translated(f"access review ({question})"):
            resp = self._authz.create_self_subject_access_review(
                question.body(), _preload_content=False, _request_timeout=timeout)
            return bool((json.loads(resp.data).get("status") or {}).get("allowed"))

    def request_token(self, namespace: str, service_account: str, seconds: int,
                      node: str | None, timeout: Timeout) -> IssuedToken:
        """A TokenRequest for `service_account`, valid `seconds`, bound to the Node `node`
        (the token dies with the Node object) unless `node` is None."""
        spec: dict[str, Any] = {"expirationSeconds": seconds}
        if node:
            spec["boundObjectRef"] = {"kind": "Node", "apiVersion": "v1", "name": node}
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        with _translated(f"token request for {namespace}/{service_account}"):
            resp = self._core.create_namespaced_service_account_token(
                service_account, namespace, body, _preload_content=False,
                _request_timeout=timeout)
            status = json.loads(resp.data).get("status") or {}
        token, stamp = status.get("token"), status.get("expirationTimestamp")
        if not isinstance(token, str) or not token or not isinstance(stamp, str):
            raise ApiError(0, f"token request for {namespace}/{service_account}: the answer "
                              "has no token or expiry")
        return IssuedToken(token, datetime.fromisoformat(stamp.replace("Z", "+00:00")))

    def dry_run_patch_node(self, name: str, patch: dict[str, Any], timeout: Timeout,
                           status: bool = False) -> None:
        """A patch of the node (a JSON merge patch) or of its status (a strategic merge
        patch), `dryRun=All`: admission decides, nothing is stored."""
        with _translated(f"dry-run patch node {name}{' status' if status else ''}"):
            if status:
                self._core.patch_node_status(
                    name, patch, dry_run="All",
                    _content_type="application/strategic-merge-patch+json",
                    _preload_content=False, _request_timeout=timeout)
            else:
                self._core.patch_node(name, patch, dry_run="All",
                                      _content_type="application/merge-patch+json",
                                      _preload_content=False, _request_timeout=timeout)
