"""Who is asking, and may they: the API stand-in's authentication and RBAC, as kube-apiserver's.

Off until a test turns it on (`KubeApiServer.auth.load_rbac(docs)` or a token issued here); the
stand-in then answers like a cluster with RBAC: an unknown, expired or voided bearer token is a
401; a known one is authorized against the Roles, ClusterRoles and bindings loaded from a
manifest (403 otherwise, with the API server's message). Service account tokens are voided as
the real ones are: the account deleted, the object a token is bound to (a pod, a node) deleted
or replaced, or past its expiry on the stand-in's clock (`advance_clock`). Tokens of pods carry
the pod's node in `extra["authentication.kubernetes.io/node-name"]` (Kubernetes 1.30+), and
TokenRequests bound to a Node carry it too, so admission policies can read it.

What a request asks is worked out as the API server's request-info does (`attributes`): GET on
a collection is `list` (`watch` with `?watch=true`), on a name `get`; POST `create`, PUT
`update`, PATCH `patch`, DELETE `delete`. Every authenticated user may create
SelfSubjectAccessReviews (`system:basic-user`). Pure bookkeeping; no I/O.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from testbed.kubeapi.store import ApiError

NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
"""The user-info extra key a bound service account token carries its node's name in."""
AUTHENTICATED = "system:authenticated"
SERVICE_ACCOUNTS = "system:serviceaccounts"


@dataclass(frozen=True)
class Attributes:
    """What one request asks the authorizer (kube-apiserver's `authorizer.Attributes`)."""

    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def resource_path(self) -> str:
        """`pods` or `pods/status`, as RBAC rules name it."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?"
    r"/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$")
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def attributes(method: str, path: str, query: dict[str, str]) -> Attributes | None:
    """The request's attributes; None for a non-resource path (discovery, /version)."""
    m = _PATH.match(path)
    if m is None:
        return None
    if method == "GET":
        if m["name"]:
            verb = "get"
        else:
            verb = "watch" if query.get("watch", "").lower() in ("1", "true") else "list"
    elif method == "DELETE":
        verb = "delete" if m["name"] else "deletecollection"
    else:
        verb = _VERBS.get(method, method.lower())
    return Attributes(verb, m["group"] or "", m["resource"], m["sub"] or "", m["ns"] or "",
                      m["name"] or "")


@dataclass(frozen=True)
class Identity:
    """An authenticated user, and what voids its token."""

    username: str
    groups: tuple[str, ...] = (AUTHENTICATED,)
    extra: dict[str, list[str]] = field(default_factory=dict)
    service_account: tuple[str, str] | None = None
    """(namespace, name) of a service account: deleting it voids the token."""
    bound: tuple[str, str, str, str] | None = None
    """(kind, namespace, name, uid) of the object the token is bound to (Pod or Node)."""
    expires: float | None = None
    """Expiry on the stand-in's clock (epoch seconds); None: never."""

    @property
    def user_info(self) -> dict[str, Any]:
        """As admission and SelfSubjectReviews show it."""
        return {"username": self.username, "groups": list(self.groups),
                "extra": {k: list(v) for k, v in self.extra.items()}}


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def forbidden(identity: Identity, attrs: Attributes) -> ApiError:
    """The API server's 403 for an RBAC denial."""
    what = f'resource "{attrs.resource_path}" in API group "{attrs.group}"'
    where = f' in the namespace "{attrs.namespace}"' if attrs.namespace else (
        " at the cluster scope")
    subject = f'{attrs.resource_path} "{attrs.name}"' if attrs.name else attrs.resource_path
    return ApiError(403, f'{subject} is forbidden: User "{identity.username}" cannot '
                         f"{attrs.verb} {what}{where}",
                    name=attrs.name, kind=attrs.resource)


class Auth:
    """Tokens, service accounts and RBAC of one stand-in. Thread-safe."""

    def __init__(self, exists: Callable[[str, str, str, str], bool]) -> None:
        """`exists(kind, namespace, name, uid)`: whether a bound object still exists."""
        self._exists = exists
        self._lock = threading.Lock()
        self._tokens: dict[str, Identity] = {}
        self._service_accounts: set[tuple[str, str]] = set()
        self._roles: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self._bindings: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._skew = 0.0
        self.enabled = False
        """True once a token was issued or RBAC loaded: every request is then authenticated
        and authorized."""

    # -- the clock ------------------------------------------------------------------------------

    def now(self) -> float:
        """The stand-in's clock (wall clock plus `advance_clock`)."""
        return time.time() + self._skew

    def advance_clock(self, seconds: float) -> None:
        """Move the stand-in's clock forward: tokens expire as if that much time had passed."""
        with self._lock:
            self._skew += seconds

    # -- what exists ----------------------------------------------------------------------------

    def load_rbac(self, docs: list[dict[str, Any]]) -> None:
        """The ServiceAccounts, Roles, ClusterRoles and bindings among `docs` (a manifest)."""
        with self._lock:
            self.enabled = True
            for doc in docs:
                kind, meta = doc.get("kind"), doc.get("metadata") or {}
                key = (kind, meta.get("namespace", ""), meta.get("name", ""))
                if kind == "ServiceAccount":
                    self._service_accounts.add((key[1], key[2]))
                elif kind in ("Role", "ClusterRole"):
                    self._roles[key] = list(doc.get("rules") or [])
                elif kind in ("RoleBinding", "ClusterRoleBinding"):
                    self._bindings[key] = doc

    def delete(self, kind: str, name: str, namespace: str = "") -> None:
        """Delete one loaded document (as `kubectl delete` / `helm uninstall` would)."""
        with self._lock:
            if kind == "ServiceAccount":
                self._service_accounts.discard((namespace, name))
            else:
                self._roles.pop((kind, namespace, name), None)
                self._bindings.pop((kind, namespace, name), None)

    def add_service_account(self, namespace: str, name: str) -> None:
        with self._lock:
            self._service_accounts.add((namespace, name))

    # -- tokens ---------------------------------------------------------------------------------

    def issue(self, identity: Identity, token: str | None = None) -> str:
        """Register a token for `identity` (a fresh random one unless given)."""
        token = token or "tok-" + secrets.token_hex(12)
        with self._lock:
            self.enabled = True
            self._tokens[token] = identity
        return token

    def pod_token(self, namespace: str, service_account: str, pod: dict[str, Any],
                  token: str | None = None, seconds: float = 3600) -> str:
        """The projected token the kubelet gives `pod` (bound to it, with its node's name)."""
        meta = pod["metadata"]
        extra = {"authentication.kubernetes.io/pod-name": [meta["name"]],
                 "authentication.kubernetes.io/pod-uid": [meta["uid"]]}
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            extra[NODE_NAME_EXTRA] = [node]
        return self.issue(self._sa_identity(namespace, service_account, extra,
                                            ("Pod", meta.get("namespace", namespace),
                                             meta["name"], meta["uid"]), seconds), token)

    def request_token(self, namespace: str, service_account: str, seconds: int,
                      bound: tuple[str, str, str, str] | None) -> tuple[str, float]:
        """A TokenRequest's token and its expiry (the account must exist)."""
        with self._lock:
            if (namespace, service_account) not in self._service_accounts:
                raise ApiError(404, f'serviceaccounts "{service_account}" not found',
                               name=service_account, kind="serviceaccounts")
        extra = {NODE_NAME_EXTRA: [bound[2]]} if bound and bound[0] == "Node" else {}
        identity = self._sa_identity(namespace, service_account, extra, bound, seconds)
        return self.issue(identity), float(identity.expires or 0)

    def _sa_identity(self, namespace: str, name: str, extra: dict[str, list[str]],
                     bound: tuple[str, str, str, str] | None, seconds: float) -> Identity:
        return Identity(service_account_user(namespace, name),
                        (SERVICE_ACCOUNTS, f"{SERVICE_ACCOUNTS}:{namespace}", AUTHENTICATED),
                        extra, (namespace, name), bound, self.now() + seconds)

    def expiry(self, token: str) -> float | None:
        with self._lock:
            identity = self._tokens.get(token)
        return identity.expires if identity else None

    def authenticate(self, authorization: str | None) -> Identity:
        """The identity behind `Authorization: Bearer <token>`, else a 401."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""  # the scheme is caseless
        with self._lock:
            identity = self._tokens.get(token)
            sa_alive = identity is not None and (identity.service_account is None or
                                                 identity.service_account
                                                 in self._service_accounts)
        if identity is None or not sa_alive:
            raise ApiError(401, "Unauthorized")
        if identity.expires is not None and self.now() >= identity.expires:
            raise ApiError(401, "Unauthorized")
        if identity.bound is not None and not self._exists(*identity.bound):
            raise ApiError(401, "Unauthorized")
        return identity

    # -- RBAC -----------------------------------------------------------------------------------

    def allowed(self, identity: Identity, attrs: Attributes) -> bool:
        if attrs.group == "authorization.k8s.io" and attrs.verb == "create" and \
                attrs.resource in ("selfsubjectaccessreviews", "selfsubjectrulesreviews"):
            return True  # system:basic-user, bound to every authenticated user
        with self._lock:
            bindings = list(self._bindings.items())
            roles = dict(self._roles)
        for (kind, namespace, _), binding in bindings:
            if not any(_subject_matches(s, identity) for s in binding.get("subjects") or []):
                continue
            if kind == "RoleBinding" and attrs.namespace != namespace:
                continue
            ref = binding.get("roleRef") or {}
            role_ns = namespace if ref.get("kind") == "Role" else ""
            rules = roles.get((ref.get("kind", ""), role_ns, ref.get("name", "")), [])
            if any(_rule_allows(rule, attrs) for rule in rules):
                return True
        return False

    def authorize(self, identity: Identity, attrs: Attributes | None) -> None:
        """Raise the API server's 403 unless `identity` may do `attrs`."""
        if attrs is not None and not self.allowed(identity, attrs):
            raise forbidden(identity, attrs)


def _subject_matches(subject: dict[str, Any], identity: Identity) -> bool:
    kind = subject.get("kind")
    if kind == "ServiceAccount":
        return identity.username == service_account_user(subject.get("namespace", ""),
                                                          subject.get("name", ""))
    if kind == "User":
        return identity.username == subject.get("name")
    if kind == "Group":
        return subject.get("name") in identity.groups
    return False


def _rule_allows(rule: dict[str, Any], attrs: Attributes) -> bool:
    def has(key: str, value: str) -> bool:
        values = rule.get(key) or []
        return "*" in values or value in values

    names = rule.get("resourceNames") or []
    return (has("apiGroups", attrs.group) and has("verbs", attrs.verb)
            and (has("resources", attrs.resource_path))
            and (not names or attrs.name in names))

