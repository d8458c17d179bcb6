"""The daemon's one boundary with the Kubernetes API (the official `kubernetes` client).

Pods travel as plain JSON dicts (`_preload_content=False`): the controller, `broken`, `explain`
and the plugin's `extract_pod_info` all read the API's JSON, and 1,000 cached pods cost less as
dicts than as client model objects. Every client or transport failure becomes an `ApiError`
here, so callers handle one exception type with a status code (0 = no HTTP answer at all).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cni.fileread import read_regular_file
from cni.kubeconfig import MAX_FILE_BYTES

REQUEST_TIMEOUT = (10.0, 30.0)  # (connect, read) seconds for ordinary requests


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def not_found(self) -> bool:
        return self.status == 404


@dataclass(frozen=True)
class PodList:
    items: list[dict[str, Any]]
    resource_version: str


@contextmanager
def _translated(what: str) -> Iterator[None]:
    """Client exceptions → ApiError, with the API's own message when it sent a Status."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as exc:
        message = exc.reason or ""
        try:
            message = json.loads(exc.body or "{}").get("message") or message
        except (ValueError, AttributeError):
            pass
        raise ApiError(int(exc.status or 0), f"{what}: {exc.status} {message}"[:500]) from exc
    except (HTTPError, OSError) as exc:
        raise ApiError(0, f"{what}: {exc}"[:500]) from exc


def load_api_client(kubeconfig: str | None = None) -> Any:
    """In-cluster config when running in a pod, else the kubeconfig (or KUBECONFIG/~/.kube).

    Every kubeconfig file is first read as the plugin reads its own (a regular file, at most
    `MAX_FILE_BYTES`, never blocking on a FIFO) and parsed as YAML, so that a file that is not a
    kubeconfig is an `ApiError` naming it instead of a hang or a traceback from the client
    library, whose loader assumes a well-formed file (`clusters: 5` is a TypeError there).
    """
    from kubernetes import client, config

    if not kubeconfig:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            pass
    paths = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
    _check_kubeconfig_files(paths)
    try:
        config.load_kube_config(config_file=kubeconfig)  # None: the library's own default
    except (config.ConfigException, OSError, TypeError, ValueError, AttributeError, KeyError,
            IndexError, RecursionError) as exc:  # the library's loader on a malformed file
        raise ApiError(0, f"no Kubernetes API access: kubeconfig {paths}: "
                          f"{_first_line(exc)}") from exc
    return client.ApiClient()


def _check_kubeconfig_files(paths: str) -> None:
    """Each existing file of a kubeconfig path list (`a:b`, as KUBECONFIG) is a YAML mapping."""
    import yaml

    for path in filter(None, paths.split(os.pathsep)):
        path = os.path.expanduser(path)
        if not os.path.lexists(path) and os.pathsep in paths:
            continue  # the client library skips a missing file of a list, as kubectl does
        if "\x00" in path:  # no file has this name; os.open would raise ValueError
            raise ApiError(0, f"kubeconfig {path!r}: a path has no NUL byte")
        try:
            doc = yaml.safe_load(read_regular_file(path, MAX_FILE_BYTES).decode())
        except OSError as exc:
            raise ApiError(0, f"kubeconfig {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ApiError(0, f"kubeconfig {path}: not UTF-8 text ({exc.reason} at byte "
                              f"{exc.start})") from exc
        except RecursionError as exc:
            raise ApiError(0, f"kubeconfig {path}: not YAML we read: nested too deeply") from exc
        except yaml.YAMLError as exc:
            raise ApiError(0, f"kubeconfig {path}: not YAML: {_yaml_problem(exc)}") from exc
        if not isinstance(doc, dict):
            held = "nothing" if doc is None else f"a YAML {type(doc).__name__}"
            raise ApiError(0, f"kubeconfig {path}: not a kubeconfig (a mapping with clusters, "
                              f"users and contexts): it holds {held}")


def _yaml_problem(exc: Exception) -> str:
    """PyYAML's problem and where, without its multi-line excerpt of the text."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or _first_line(exc)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return " ".join(line.strip() for line in text)[:300] if text else type(exc).__name__


class PodApi:
    """Pods and events, as JSON. `api_client` is a `kubernetes.client.ApiClient`."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)

    @property
    def api_client(self) -> Any:
        """The `ApiClient` underneath, for the other APIs (`NodeApi`) to share its connection."""
        return self._core.api_client

    def list_pods(self, field_selector: str = "", label_selector: str = "") -> PodList:
        with _translated("list pods"):
            resp = self._core.list_pod_for_all_namespaces(
                field_selector=field_selector or None, label_selector=label_selector or None,
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
            body = json.loads(resp.data)
        return PodList(body.get("items") or [], str(body["metadata"].get("resourceVersion", "")))

    def watch_pods(self, resource_version: str, timeout_seconds: int, field_selector: str = "",
                   label_selector: str = "", silence: float | None = None) -> PodWatch:
        """A watch from `resource_version`. The stream breaks (`ApiError` 0) when nothing at
        all arrives for `silence` seconds (None: a little after the server's own timeout), so
        a stream the API stopped feeding is noticed rather than waited on."""
        read = timeout_seconds + 30.0
        if silence is not None:
            read = min(read, silence)
        with _translated("watch pods"):
            resp = self._core.list_pod_for_all_namespaces(
                watch=True, allow_watch_bookmarks=True, resource_version=resource_version,
                timeout_seconds=timeout_seconds, field_selector=field_selector or None,
                label_selector=label_selector or None, _preload_content=False,
                # the read timeout bounds the wait for each chunk: an event or a bookmark
                _request_timeout=(REQUEST_TIMEOUT[0], read))
        return PodWatch(resp)

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        with _translated(f"get pod {namespace}/{name}"):
            resp = self._core.read_namespaced_pod(name, namespace, _preload_content=False,
                                                  _request_timeout=REQUEST_TIMEOUT)
            return json.loads(resp.data)

    def delete_pod(self, namespace: str, name: str, uid: str, resource_version: str) -> None:
        with _translated(f"delete pod {namespace}/{name}"):
            self._core.delete_namespaced_pod(
                name, namespace,
                body={"preconditions": {"uid": uid, "resourceVersion": resource_version}},
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT)

    def merge_patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """A JSON merge patch on pods/status (needs only `pods/status: patch`, like upstream)."""
        with _translated(f"patch pod {namespace}/{name} status"):
            self._core.patch_namespaced_pod_status(
                name, namespace, patch, _content_type="application/merge-patch+json",
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT)

    def create_event(self, namespace: str, event: dict[str, Any]) -> dict[str, Any]:
        """Post a core/v1 Event; the Event as created (its generated name)."""
        with _translated(f"create event in {namespace}"):
            resp = self._core.create_namespaced_event(namespace, event, _preload_content=False,
                                                      _request_timeout=REQUEST_TIMEOUT)
            return _json_object(resp.data)

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """A strategic merge patch of an Event posted before (its count and lastTimestamp), as
        client-go's recorder does for a repeat (needs `events: patch`)."""
        with _translated(f"patch event {namespace}/{name}"):
            self._core.patch_namespaced_event(
                name, namespace, patch, _content_type="application/strategic-merge-patch+json",
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT)


def _json_object(data: bytes) -> dict[str, Any]:
    """A response body that should be a JSON object; {} when it is not (the caller only reads
    optional fields of it)."""
    try:
        body = json.loads(data)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


class NodeApi:
    """One node and its status, as JSON: what the readiness gate reads and patches."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)

    def get_node(self, name: str, timeout: tuple[float, float] = REQUEST_TIMEOUT
                 ) -> dict[str, Any]:
        with _translated(f"get node {name}"):
            resp = self._core.read_node(name, _preload_content=False, _request_timeout=timeout)
            return json.loads(resp.data)

    def json_patch_node(self, name: str, ops: list[dict[str, Any]],
                        timeout: tuple[float, float] = REQUEST_TIMEOUT) -> None:
        """A JSON patch (RFC 6902) on the node: its `test` ops make it fail (422) rather than
        overwrite a field someone changed since we read it."""
        with _translated(f"patch node {name}"):
            self._core.patch_node(name, ops, _content_type="application/json-patch+json",
                                  _preload_content=False, _request_timeout=timeout)

    def patch_node_status(self, name: str, patch: dict[str, Any],
                          timeout: tuple[float, float] = REQUEST_TIMEOUT) -> None:
        """A strategic merge patch on nodes/status: `status.conditions` merge by `type`, so
        one condition is set without touching the kubelet's (needs only `nodes/status`)."""
        with _translated(f"patch node {name} status"):
            self._core.patch_node_status(
                name, patch, _content_type="application/strategic-merge-patch+json",
                _preload_content=False, _request_timeout=timeout)


class PodWatch:
    """One watch stream: iterate decoded events; `close()` from another thread ends it."""

    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self._closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from urllib3.exceptions import HTTPError

        buf = b""
        try:
            for chunk in self._resp.stream(65536, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
            if buf.strip():
                yield json.loads(buf)
        except (HTTPError, OSError, ValueError) as exc:
            if not self._closed:
                raise ApiError(0, f"watch pods: stream broken: {exc}") from exc
        finally:
            self._resp.release_conn()

    def close(self) -> None:
        """Unblock a reader waiting on the socket (used on shutdown)."""
        self._closed = True
        try:
            self._resp.shutdown()
        except (AttributeError, OSError):
            sock = getattr(getattr(self._resp, "connection", None), "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
