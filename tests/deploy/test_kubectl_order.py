"""What the real kubectl does with the manifests, in order, against a minimal API server
(discovery, create and delete only): `kubectl apply -f namespace.yaml -f daemonset.yaml` creates
the Namespace before anything that lives in it; `kubectl delete -f daemonset.yaml` deletes in
file order, so the DaemonSet goes before its ServiceAccount and RBAC, and never touches the
istio-system Namespace (istiod's)."""

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

from tests.deploy.manifest import MANIFEST, NAMESPACE_MANIFEST

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
        self.created: list[str] = []
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

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                api.created.append(self.path.split("?")[0])
                self._send(201, body)

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


def kubectl(api: Api, home: Path, *args: str) -> None:
    kubeconfig = home / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home),
           "KUBECONFIG": str(kubeconfig)}
    proc = subprocess.run(["kubectl", "--server", api.url, *args, "--request-timeout=10s"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def kubectl_delete(api: Api, home: Path, *args: str) -> list[str]:
    kubectl(api, home, "delete", "-f", str(MANIFEST), "--timeout=10s", *args)
    return [path.rsplit("/", 2)[-2] for path in api.deleted]


def test_kubectl_deletes_the_daemonset_before_its_service_account_and_rbac(api: Api,
                                                                            tmp_path: Path):
    kinds = kubectl_delete(api, tmp_path, "-l", "app.kubernetes.io/name=istio-cni")
    assert kinds == ["configmaps", "daemonsets", "serviceaccounts", "serviceaccounts",
                     "clusterroles", "clusterrolebindings", "clusterroles",
                     "clusterrolebindings", "clusterroles", "clusterrolebindings", "roles",
                     "rolebindings"]  # file order, and no namespaces


def test_a_plain_kubectl_delete_leaves_the_namespace_alone(api: Api, tmp_path: Path):
    """`kubectl delete -f daemonset.yaml`, as docs/deploy.md says: the same as with the label
    selector; istio-system, which istiod shares, is not in the file and stays."""
    kinds = kubectl_delete(api, tmp_path)
    assert kinds == ["configmaps", "daemonsets", "serviceaccounts", "serviceaccounts",
                     "clusterroles", "clusterrolebindings", "clusterroles",
                     "clusterrolebindings", "clusterroles", "clusterrolebindings", "roles",
                     "rolebindings"]


def test_the_first_apply_creates_the_namespace_first(api: Api, tmp_path: Path):
    """`kubectl apply -f namespace.yaml -f daemonset.yaml` on a cluster without istio-system:
    the Namespace is created before the ConfigMap and the DaemonSet that live in it."""
    kubectl(api, tmp_path, "apply", "--validate=false", "-f", str(NAMESPACE_MANIFEST),
            "-f", str(MANIFEST))
    created = [path.rsplit("/", 1)[-1] for path in api.created]
    assert created == ["namespaces", "configmaps", "daemonsets", "serviceaccounts",
                       "serviceaccounts", "clusterroles", "clusterrolebindings", "clusterroles",
                       "clusterrolebindings", "clusterroles", "clusterrolebindings", "roles",
                       "rolebindings"]
    assert api.created[1] == "/api/v1/namespaces/istio-system/configmaps"
