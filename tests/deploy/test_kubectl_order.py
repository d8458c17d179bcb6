"""What the real `kubectl delete -f daemonset.yaml` does, in order, against a minimal API server
(discovery and DELETE only): it deletes in file order, so the DaemonSet goes before its
ServiceAccount and RBAC, and the label selector leaves the Namespace alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.deploy.manifest import MANIFEST

RESOURCES = {
    "/api/v1": [("namespaces", "Namespace", False), ("configmaps", "ConfigMap", True),
                ("serviceaccounts", "ServiceAccount", True)],
    "/apis/apps/v1": [("daemonsets", "DaemonSet", True)],
    "/apis/rbac.authorization.k8s.io/v1": [
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
        ("roles", "Role", True), ("rolebindings", "RoleBinding", True)],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def discovery(path: str) -> dict | None:
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
    if path == "/apis":
        groups = [{"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                   "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}}
                  for g in ("apps", "rbac.authorization.k8s.io")]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    if path in RESOURCES:
        group_version = "v1" if path == "/api/v1" else path[len("/apis/"):]
        return {"kind": "APIResourceList", "groupVersion": group_version,
                "resources": [{"name": n, "singularName": "", "namespaced": ns, "kind": k,
                               "verbs": VERBS} for n, k, ns in RESOURCES[path]]}
    return None


class Api:
    def __init__(self) -> None:
        self.deleted: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                body = discovery(self.path.split("?")[0])
                if body is not None:
                    self._send(200, body)
                else:  # every object is already gone: kubectl's --wait ends at once
                    self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                     "reason": "NotFound", "code": 404})

            def do_DELETE(self) -> None:  # noqa: N802 - stdlib name
                api.deleted.append(self.path.split("?")[0])
                self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def api() -> Iterator[Api]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    server = Api()
    try:
        yield server
    finally:
        server.close()


def kubectl_delete(api: Api, home: Path, *args: str) -> list[str]:
    kubeconfig = home / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home),
           "KUBECONFIG": str(kubeconfig)}
    proc = subprocess.run(["kubectl", "--server", api.url, "delete", "-f", str(MANIFEST),
                           "--request-timeout=10s", "--timeout=10s", *args],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return [path.rsplit("/", 2)[-2] for path in api.deleted]


def test_kubectl_deletes_the_daemonset_before_its_service_account_and_rbac(api: Api,
                                                                            tmp_path: Path):
    kinds = kubectl_delete(api, tmp_path, "-l", "app.kubernetes.io/name=istio-cni")
    assert kinds == ["configmaps", "daemonsets", "serviceaccounts", "clusterroles",
                     "clusterrolebindings", "clusterroles", "clusterrolebindings",
                     "clusterroles", "clusterrolebindings", "roles",
                     "rolebindings"]  # file order, and no namespaces


def test_a_plain_kubectl_delete_takes_the_namespace_first(api: Api, tmp_path: Path):
    """Why docs/deploy.md says to remove the agent with the label selector: without it the
    shared istio-system Namespace goes first, and istiod with it."""
    kinds = kubectl_delete(api, tmp_path)
    assert kinds[0] == "namespaces" and kinds[1:3] == ["configmaps", "daemonsets"]
