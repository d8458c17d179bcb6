"""Upgrade or uninstall on shutdown: UNINSTALL_ON_SHUTDOWN and the DaemonSet lookup, against a
real HTTP server answering like the API server's apps/v1 DaemonSet endpoint."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from installer import Installer
from installer.upgrade import ApiDaemonSetProbe, ProbeError
from testbed.nodedirs import TOKEN, NodeDirs

DS_PATH = "/apis/apps/v1/namespaces/istio-system/daemonsets/istio-cni-node"


class DaemonSetApi:
    """Serves one DaemonSet; `state` is 'present', 'deleting', 'gone', 'broken', or
    'unbound'/'no-token' (the Role, the ServiceAccount deleted with the manifest)."""

    def __init__(self) -> None:
        self.state = "present"
        self.auth: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                api.auth.append(self.headers.get("Authorization", ""))
                meta = {"name": "istio-cni-node", "namespace": "istio-system"}
                if api.state == "deleting":
                    meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
                status = {"present": 200, "deleting": 200, "gone": 404, "broken": 500,
                          "unbound": 403, "no-token": 401}[api.state]
                if self.path != DS_PATH:
                    status = 404
                body = json.dumps({"kind": "DaemonSet", "metadata": meta}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    @property
    def port(self) -> str:
        return str(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def ds_api() -> Iterator[DaemonSetApi]:
    api = DaemonSetApi()
    try:
        yield api
    finally:
        api.close()


def installer_for(node_dirs: NodeDirs, ds_api: DaemonSetApi, policy: str = "auto") -> Installer:
    cfg = node_dirs.config(k8s_service_protocol="http", k8s_service_host="127.0.0.1",
                           k8s_service_port=ds_api.port, uninstall_on_shutdown=policy)
    return Installer(cfg)


@pytest.mark.parametrize("state, keep", [("present", True), ("deleting", False),
                                         ("gone", False), ("broken", False)])
def test_auto_keeps_the_plugin_only_while_the_daemonset_stays(node_dirs: NodeDirs,
                                                              ds_api: DaemonSetApi, state, keep):
    node_dirs.put("10-net.conflist", "list.conflist")
    installer = installer_for(node_dirs, ds_api)
    installer.install()
    ds_api.state = state
    assert installer.keep_plugin_on_shutdown() is keep
    assert ds_api.auth == [f"Bearer {TOKEN}"]
    installer.uninstall(keep_plugin=installer.keep_plugin_on_shutdown())
    conflist = (node_dirs.net_dir / "10-net.conflist").read_text()
    assert ("istio-cni" in conflist) is keep
    assert (node_dirs.bin_dst / "istio-cni").exists() is keep
    assert (node_dirs.run_dir / "istio-cni-kubeconfig").exists() is keep
    assert not installer.ready


@pytest.mark.parametrize("policy, keep", [("true", False), ("false", True)])
def test_explicit_policies_do_not_ask_the_api(node_dirs: NodeDirs, ds_api: DaemonSetApi,
                                              policy: str, keep: bool):
    installer = installer_for(node_dirs, ds_api, policy)
    assert installer.keep_plugin_on_shutdown() is keep
    assert ds_api.auth == []


def test_unreachable_api_means_uninstall(node_dirs: NodeDirs, ds_api: DaemonSetApi):
    cfg = node_dirs.config(k8s_service_protocol="http", k8s_service_host="127.0.0.1",
                           k8s_service_port="1", uninstall_on_shutdown="auto")
    with pytest.raises(ProbeError, match="GET http://127.0.0.1:1/apis/apps/v1"):
        ApiDaemonSetProbe(cfg, timeout=2).being_deleted()
    assert Installer(cfg, daemonset_probe=ApiDaemonSetProbe(cfg, timeout=2)
                     ).keep_plugin_on_shutdown() is False


@pytest.mark.parametrize("state", ["unbound", "no-token"])
def test_a_manifest_deleted_with_its_rbac_means_uninstall_without_a_warning(
        node_dirs: NodeDirs, ds_api: DaemonSetApi, caplog: pytest.LogCaptureFixture,
        state: str):
    """`kubectl delete -f` removes the DaemonSet, then its ServiceAccount and Role, before the
    garbage collector stops the pods: the lookup's 401/403 is that deletion, not a fault."""
    installer = installer_for(node_dirs, ds_api)
    ds_api.state = state
    with caplog.at_level(logging.INFO, logger="installer.upgrade"):
        assert installer.keep_plugin_on_shutdown() is False
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "is gone with the DaemonSet" in caplog.text
