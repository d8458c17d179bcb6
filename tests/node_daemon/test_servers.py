"""Log socket, health and metrics endpoints over real sockets (pure tier: no root)."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
from pathlib import Path

import pytest

from cni.plugin_log import post_to_agent
from installer import InstallerMetrics
from node_daemon.agent import Agent
from node_daemon.config import DaemonConfig, RepairConfig
from node_daemon.health import health_server, metrics_server
from node_daemon.logsink import LogSink
from node_daemon.metrics import Metrics
from node_daemon.shutdown import ShutdownPolicy
from testbed.wait import wait_for


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    return resp.status, body


def test_plugin_log_lines_are_reemitted_with_their_level(tmp_path, caplog):
    metrics = Metrics()
    sink = LogSink(tmp_path / "log.sock", metrics)
    try:
        lines = [json.dumps({"level": "warn", "msg": " no rules ", "pod": "shop/a"}),
                 json.dumps({"level": "debug", "msg": "payload"}), "not json"]
        with caplog.at_level(logging.DEBUG, logger="cni-plugin"):
            assert post_to_agent(str(tmp_path / "log.sock"),
                                 [("/log", json.dumps(lines).encode())])
            wait_for(lambda: metrics.value("istio_cni_plugin_log_lines_total") == 3)
        recs = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "cni-plugin"]
        assert (logging.WARNING, "no rules pod=shop/a") in recs
        assert (logging.DEBUG, "payload") in recs and (logging.INFO, "not json") in recs
    finally:
        sink.stop()
    assert not (tmp_path / "log.sock").exists()


def test_add_events_become_outcome_counters_and_phase_histograms(tmp_path):
    metrics = Metrics()
    sink = LogSink(tmp_path / "log.sock", metrics)
    try:
        event = {"pod": "shop/a", "outcome": "redirected", "reason": "sidecar injected",
                 "phases": {"lookup": 0.004, "rules": 0.001, "apply": 0.003, "total": 0.009}}
        assert post_to_agent(str(tmp_path / "log.sock"), [("/event", json.dumps(event).encode())])
        # answered 400, counted nowhere
        assert post_to_agent(str(tmp_path / "log.sock"), [("/event", b'{"outcome": "nope"}')])
        wait_for(lambda: metrics.value("istio_cni_plugin_add_total", outcome="redirected"))
        assert metrics.value("istio_cni_plugin_add_duration_seconds_count", phase="total") == 1
        assert metrics.value("istio_cni_plugin_add_duration_seconds_bucket", phase="apply",
                             le="0.005") == 1
        text = metrics.render().decode()
        assert 'istio_cni_plugin_add_total{outcome="redirected"} 1.0' in text
        assert "outcome=\"nope\"" not in text
    finally:
        sink.stop()


def test_a_stuck_plugin_connection_does_not_block_others(tmp_path):
    metrics = Metrics()
    sink = LogSink(tmp_path / "log.sock", metrics)
    stuck = socket.socket(socket.AF_UNIX)
    try:
        stuck.connect(str(tmp_path / "log.sock"))
        stuck.sendall(b"POST /log HTTP/1.1\r\nContent-Length: 100\r\n\r\n[")  # never finishes
        assert post_to_agent(str(tmp_path / "log.sock"), [("/log", b'["{}"]')])
    finally:
        stuck.close()
        sink.stop()


def test_healthz_always_readyz_follows_state_and_metrics_served():
    state = {"ok": False}
    health = health_server("127.0.0.1", 0, lambda: (state["ok"], "CNI plugin not installed"))
    metrics = Metrics()
    metrics.repaired("repair", "success")
    web = metrics_server("127.0.0.1", 0, metrics.render)
    try:
        assert _get(health.port, "/healthz") == (200, "ok\n")
        assert _get(health.port, "/readyz") == (503, "CNI plugin not installed\n")
        state["ok"] = True
        assert _get(health.port, "/readyz") == (200, "ok\n")
        status, body = _get(web.port, "/metrics")
        assert status == 200
        assert 'istio_cni_repair_pods_repaired_total{result="success",type="repair"} 1.0' in body
        assert _get(web.port, "/nope")[0] == 404
    finally:
        health.stop()
        web.stop()


class FakeInstaller:
    """The installer seam `agent.Installer`: install, watch(stop), rewrite_kubeconfig,
    uninstall, ready, and the install count (the installer's own `InstallerMetrics`)."""

    def __init__(self, fail_install: bool = False) -> None:
        self.ready = False
        self.not_loaded = ""
        self.calls: list[str] = []
        self.fail_install = fail_install
        self.metrics = InstallerMetrics()

    def install(self, stop: threading.Event | None = None) -> None:
        self.calls.append("install")
        if self.fail_install:
            self.metrics.count_install("FAILURE")
            raise RuntimeError("no primary CNI config")
        self.metrics.count_install("SUCCESS")
        self.ready = True

    def watch(self, stop: threading.Event) -> None:
        self.calls.append("watch")
        stop.wait()

    def rewrite_kubeconfig(self) -> bool:
        self.calls.append("rewrite kubeconfig")
        return True

    def uninstall(self, keep_plugin: bool = False) -> None:
        self.calls.append(f"uninstall keep={keep_plugin}")
        self.ready = False


def _cfg(tmp_path, **kw) -> DaemonConfig:
    return DaemonConfig(repair=RepairConfig(node_name="node-a", **kw), run_dir=tmp_path,
                        health_port=0, monitoring_port=0, bind_address="127.0.0.1")


def test_agent_runs_until_stop_ready_only_when_installed_and_synced(tmp_path, kube_api):
    from node_daemon.kubeapi import PodApi
    from testbed.kubeapi import kubernetes_api_client

    installer = FakeInstaller()
    kube_api.hang(r"/api/v1/pods$", count=1, method="GET")  # the first list never answers
    agent = Agent(_cfg(tmp_path), installer, PodApi(kubernetes_api_client(kube_api)))
    stop = threading.Event()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(agent.run(stop)))
    t.start()
    try:
        wait_for(agent.started.is_set, what="agent started")
        assert agent.health is not None and agent.metrics_http is not None
        assert _get(agent.health.port, "/readyz") == (503, "repair controller not synced\n")
        kube_api.drop_connections()  # the hung list fails; the retry succeeds
        wait_for(lambda: _get(agent.health.port, "/readyz")[0] == 200, what="ready")
        assert (tmp_path / "log.sock").exists()
        body = _get(agent.metrics_http.port, "/metrics")[1]
        assert 'istio_cni_installs_total{result="SUCCESS"} 1.0' in body
        assert "istio_cni_install_ready 1.0" in body
    finally:
        stop.set()
        t.join(timeout=30)
    assert result == [0]
    assert installer.calls == ["install", "watch", "uninstall keep=False"]
    assert not (tmp_path / "log.sock").exists()


def test_agent_install_failure_exits_1_after_cleanup(tmp_path):
    installer = FakeInstaller(fail_install=True)
    agent = Agent(_cfg(tmp_path, enabled=False), installer, None)
    assert agent.run(threading.Event()) == 1
    assert installer.calls == ["install", "uninstall keep=False"]
    assert agent.metrics.value("istio_cni_installs_total", result="FAILURE") == 1


def test_installs_total_is_the_installer_s_one_count(tmp_path):
    """istio_cni_installs_total shows the installer's count, re-installs of its watch loop
    included, and the agent adds none of its own."""
    installer = FakeInstaller()
    agent = Agent(_cfg(tmp_path, enabled=False), installer, None)
    installer.install()
    assert agent.metrics.value("istio_cni_installs_total", result="SUCCESS") == 1
    installer.metrics.count_install("SUCCESS")  # as the watch loop counts a re-install
    installer.metrics.count_install("COPY_BINARIES_FAILURE")
    body = agent.render_metrics().decode()
    assert 'istio_cni_installs_total{result="SUCCESS"} 2.0' in body
    assert 'istio_cni_installs_total{result="COPY_BINARIES_FAILURE"} 1.0' in body


@pytest.mark.parametrize(("setting", "keep"), [("false", True), ("true", False)])
def test_agent_applies_uninstall_on_shutdown(tmp_path, setting, keep):
    """UNINSTALL_ON_SHUTDOWN=true/false: the decision is the setting, nothing asked."""
    installer = FakeInstaller()
    agent = Agent(_cfg(tmp_path, enabled=False), installer, None,
                  policy=ShutdownPolicy(setting, "istio-system"))
    stop = threading.Event()
    stop.set()  # shut down as soon as the watch starts
    assert agent.run(stop) == 0
    assert installer.calls[-1] == f"uninstall keep={keep}"


def test_agent_uninstalls_when_it_cannot_decide(tmp_path, caplog):
    """`auto` with no way to ask the API: the safe default (uninstall, so no pod is left with a
    plugin nobody maintains), said as a warning with its reason."""
    installer = FakeInstaller()
    agent = Agent(_cfg(tmp_path, enabled=False), installer, None,
                  policy=ShutdownPolicy("auto", "istio-system"))
    stop = threading.Event()
    stop.set()
    with caplog.at_level(logging.WARNING, logger="node_daemon.shutdown"):
        assert agent.run(stop) == 0
    assert installer.calls[-1] == "uninstall keep=False"
    assert "removing the plugin: cannot tell a restart from an uninstall: no API access" \
        in caplog.text


def test_a_call_s_lines_are_handled_before_its_event(tmp_path, caplog):
    """`send_report` pipelines /log then /event on one connection; the sink keeps that order."""
    from cni import plugin_log

    metrics = Metrics()
    sink = LogSink(tmp_path / "log.sock", metrics)
    try:
        with caplog.at_level(logging.DEBUG):
            plugin_log._buffer.lines = [json.dumps({"level": "info", "msg": "redirected: p"})]
            assert plugin_log.send_report(str(tmp_path / "log.sock"),
                                          {"pod": "shop/p", "outcome": "redirected", "phases": {}})
            wait_for(lambda: metrics.value("istio_cni_plugin_add_total", outcome="redirected"))
        msgs = [r.getMessage() for r in caplog.records]
        line = msgs.index("redirected: p")
        event = next(i for i, m in enumerate(msgs) if m.startswith("plugin ADD shop/p"))
        assert line < event
    finally:
        sink.stop()


def _raw_request(path: Path, data: bytes) -> bytes:
    """Send `data` (the server may refuse part of it) and read the answer until it closes."""
    answer = b""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                answer += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us with our bytes unread: what a refusal looks like
    return answer


@pytest.mark.parametrize("length", ["-1", "abc", "+5", "1e3", "99999999999999999999"])
def test_the_log_socket_refuses_a_bad_content_length_without_reading_on(tmp_path, length):
    metrics = Metrics()
    sink = LogSink(tmp_path / "log.sock", metrics)
    try:
        answer = _raw_request(tmp_path / "log.sock",
                              f"POST /log HTTP/1.1\r\nContent-Length: {length}\r\n\r\n".encode()
                              + b"[" * 1000)
        assert answer.split(b"\r\n", 1)[0] in (b"HTTP/1.1 400 Bad Request",
                                               b"HTTP/1.1 413 Request Entity Too Large")
        assert metrics.value("istio_cni_plugin_log_lines_total") == 0
    finally:
        sink.stop()


def test_the_log_socket_comes_back_after_the_run_dir_is_wiped(tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    metrics = Metrics()
    sink = LogSink(run_dir / "log.sock", metrics, check_interval=0.05)
    try:
        assert sink.healthy()
        shutil.rmtree(run_dir)
        assert not sink.healthy()
        wait_for(sink.healthy, what="log.sock recreated")
        assert post_to_agent(str(run_dir / "log.sock"), [("/log", b'["{}"]')])
        wait_for(lambda: metrics.value("istio_cni_plugin_log_lines_total") == 1)
        assert sink.rebinds == 1
    finally:
        sink.stop()
    assert not (run_dir / "log.sock").exists()


def test_readiness_reports_a_missing_log_socket(tmp_path):
    installer = FakeInstaller()
    installer.ready = True
    agent = Agent(_cfg(tmp_path, enabled=False), installer, None)
    agent.logsink = LogSink(tmp_path / "log.sock", agent.metrics, check_interval=3600)
    try:
        assert agent.ready() == (True, "")
        (tmp_path / "log.sock").unlink()
        ok, why = agent.ready()
        assert not ok and "log.sock" in why
    finally:
        agent.logsink.stop()
