"""The plugin's kubeconfig: load it into a small `KubeAccess`, and render the one we install.

Hot path: the plugin loads this file for every redirected pod, so it parses with `json` first
(our installer writes JSON, which is valid YAML and which kubectl reads) and imports `yaml` only
when the file is not JSON (a hand-written or upstream-written kubeconfig). Supports what
upstream's installer writes (server, certificate-authority-data or insecure-skip-tls-verify,
token) and the common rest: CA/cert/key files (relative to the kubeconfig's directory), client
cert/key data, tokenFile. Every failure is a `PluginNotAvailable` naming the path and the reason.
A token never appears in a message or a repr. The kubeconfig and its token file are read with
`cni.fileread.read_regular_file`: a FIFO or a device in their place is an error, not a hang.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cni.errors import PluginNotAvailable
from cni.fileread import read_regular_file

CLUSTER_NAME = "local"
USER_NAME = "istio-cni"
CONTEXT_NAME = "istio-cni-context"

MAX_FILE_BYTES = 4 * 1024 * 1024
"""The most we read of the kubeconfig or of a file it names (token, CA bundle, client cert/key).

Generous for every real one: a kubeconfig with dozens of contexts and embedded certificates stays
well under 1 MiB, and the largest file one names, a full CA bundle such as Debian's
ca-certificates.crt, is about 220 KiB."""


@dataclass(frozen=True)
class KubeAccess:
    """How to reach and authenticate to the API server: what the pod lookup needs, no more."""

    server: str
    token: str | None = field(default=None, repr=False)
    ca_data: bytes | None = None
    ca_file: str | None = None
    insecure_skip_tls_verify: bool = False
    client_cert_data: bytes | None = None
    client_key_data: bytes | None = field(default=None, repr=False)
    client_cert_file: str | None = None
    client_key_file: str | None = None
    source: str = ""
    """The kubeconfig path this came from, for error messages."""


def load_kubeconfig(path: str) -> KubeAccess:
    """Read `path` and resolve its current context into a `KubeAccess`."""
    doc = _parse(path, _read(path))
    cluster, user = _current_context(path, doc)
    base = os.path.dirname(os.path.abspath(path))
    return KubeAccess(
        server=_server(path, cluster),
        token=_token(path, user, base),
        ca_data=_b64(path, cluster, "certificate-authority-data"),
        ca_file=_file(cluster, "certificate-authority", base),
        insecure_skip_tls_verify=cluster.get("insecure-skip-tls-verify") is True,
        client_cert_data=_b64(path, user, "client-certificate-data"),
        client_key_data=_b64(path, user, "client-key-data"),
        client_cert_file=_file(user, "client-certificate", base),
        client_key_file=_file(user, "client-key", base),
        source=path,
    )


def render_kubeconfig(server: str, token: str, ca_data: bytes | None, insecure: bool) -> str:
    """The kubeconfig our installer writes, as JSON, with upstream's names and structure.

    Like upstream, `insecure` wins over a CA: the cluster then carries only
    `insecure-skip-tls-verify: true`.
    """
    cluster: dict[str, Any] = {"server": server}
    if insecure:
        cluster["insecure-skip-tls-verify"] = True
    elif ca_data is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_data).decode("ascii")
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER_NAME, "cluster": cluster}],
        "users": [{"name": USER_NAME, "user": {"token": token}}],
        "contexts": [
            {"name": CONTEXT_NAME, "context": {"cluster": CLUSTER_NAME, "user": USER_NAME}}
        ],
        "current-context": CONTEXT_NAME,
    }
    return json.dumps(doc, indent=2) + "\n"


def _fail(path: str, reason: str) -> PluginNotAvailable:
    return PluginNotAvailable(f"load kubeconfig {path}: {reason}")


def _read(path: str) -> bytes:
    try:
        return read_regular_file(path, MAX_FILE_BYTES)
    except FileNotFoundError as exc:
        raise _fail(path, "file does not exist (is the istio-cni node agent running?)") from exc
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from exc


def _parse(path: str, raw: bytes) -> Mapping[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:  # not JSON (or not UTF-8): maybe YAML; only now pay for importing yaml
        doc = _parse_yaml(path, raw)
    if not isinstance(doc, Mapping):
        raise _fail(path, "not a kubeconfig: the document is not a mapping")
    return doc


def _parse_yaml(path: str, raw: bytes) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        reason = str(getattr(exc, "problem", None) or type(exc).__name__)
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise _fail(path, f"not valid YAML or JSON: {reason}{where}") from exc


def _named(
    path: str, doc: Mapping[str, Any], section: str, name: str, referrer: str
) -> Mapping[str, Any]:
    """The `section[].{name, <singular>}` entry called `name` (e.g. clusters[].cluster)."""
    entries = doc.get(section) or []
    key = section[:-1]
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, Mapping) and entry.get("name") == name:
            body = entry.get(key) or {}
            if not isinstance(body, Mapping):
                raise _fail(path, f"{key} {name!r} is not a mapping")
            return body
    raise _fail(path, f"{key} {name!r} named by {referrer} is not defined")


def _current_context(
    path: str, doc: Mapping[str, Any]
) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    current = doc.get("current-context")
    if not current or not isinstance(current, str):
        raise _fail(path, "no current-context")
    context = _named(path, doc, "contexts", current, "current-context")
    cluster_name = context.get("cluster")
    if not cluster_name:
        raise _fail(path, f"context {current!r} names no cluster")
    user_name = context.get("user")
    referrer = f"context {current!r}"
    user = _named(path, doc, "users", user_name, referrer) if user_name else {}
    return _named(path, doc, "clusters", cluster_name, referrer), user


def _server(path: str, cluster: Mapping[str, Any]) -> str:
    server = cluster.get("server")
    if not server or not isinstance(server, str):
        raise _fail(path, "the current cluster has no server")
    try:
        parts = urlsplit(server)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise _fail(path, f"server {server!r} is not a valid URL: {exc}") from exc
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise _fail(path, f"server {server!r} is not an http(s) URL with a host")
    if not server.isascii() or not server.isprintable():
        raise _fail(path, f"server {server!r} is not printable ASCII (a host name in a URL is "
                          "ASCII: IDNA for a non-ASCII name)")
    return server.rstrip("/")


def _b64(path: str, entry: Mapping[str, Any], key: str) -> bytes | None:
    value = entry.get(key)
    if not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise _fail(path, f"{key} is not valid base64") from exc


def _file(entry: Mapping[str, Any], key: str, base: str) -> str | None:
    value = entry.get(key)
    if not value or not isinstance(value, str):
        return None
    return os.path.join(base, value)  # kubectl resolves relative paths against the file's dir


def _token(path: str, user: Mapping[str, Any], base: str) -> str | None:
    token = user.get("token")
    if token:
        return _header_value(path, "token", str(token))
    token_file = _file(user, "tokenFile", base)
    if token_file is None:
        return None
    try:
        token = read_regular_file(token_file, MAX_FILE_BYTES).decode("utf-8").strip()
    except OSError as exc:
        raise _fail(path, f"cannot read tokenFile {token_file}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise _fail(path, f"tokenFile {token_file} is not UTF-8 text") from exc
    return _header_value(path, f"tokenFile {token_file}", token)


def _header_value(path: str, what: str, token: str) -> str:
    """The token, if an HTTP header can carry it: visible ASCII only (a bearer token is
    base64-like; a space, a line break or a non-ASCII character would make http.client refuse
    the header, or split it). The message gives the position, never the token."""
    for i, ch in enumerate(token):
        if not "!" <= ch <= "~":
            shown = "space" if ch == " " else f"U+{ord(ch):04X}"
            raise _fail(path, f"the {what} holds a character no HTTP header can carry "
                              f"(character {i}: {shown})")
    return token
