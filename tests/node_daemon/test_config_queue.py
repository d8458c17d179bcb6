"""Config from env (upstream names and defaults) and the work queue's backoff (pure tier)."""

from __future__ import annotations

import json
import threading

import pytest

from admin.run_cmd import default_installer, read_configs, run_daemon
from cni.backends import RuleMode
from cni.settings import BACKENDS
from node_daemon.config import ConfigError, DaemonConfig, RepairConfig
from node_daemon.workqueue import RateLimiter, WorkQueue
from testbed.nodedirs import make_node_dirs
from testbed.wait import wait_for


def test_repair_defaults_are_upstreams():
    c = RepairConfig.from_env({})
    assert (c.enabled, c.repair_pods, c.delete_pods, c.label_pods) == (True, False, False, False)
    assert (c.label_key, c.label_value) == ("cni.istio.io/uninitialized", "true")
    assert (c.sidecar_annotation, c.init_container_name) == (
        "sidecar.istio.io/status", "istio-validation")
    assert (c.init_termination_msg, c.init_exit_code) == ("", 126)
    assert c.mode is None


def test_repair_env_names_and_mode_precedence():
    c = RepairConfig.from_env({
        "REPAIR_LABEL_PODS": "true", "REPAIR_DELETE_PODS": "1", "REPAIR_REPAIR_PODS": "True",
        "REPAIR_BROKEN_POD_LABEL_KEY": "k", "REPAIR_BROKEN_POD_LABEL_VALUE": "v",
        "REPAIR_NODE_NAME": "n", "REPAIR_INIT_CONTAINER_EXIT_CODE": "55",
        "REPAIR_INIT_CONTAINER_TERMINATION_MESSAGE": "m", "REPAIR_FIELD_SELECTORS": "a=b",
        "REPAIR_LABEL_SELECTORS": "x=y", "REPAIR_SIDECAR_ANNOTATION": "",
    })
    assert c.mode == "repair"
    assert c.with_mode("label").mode == "label"
    assert (c.label_key, c.label_value, c.init_exit_code, c.init_termination_msg) == (
        "k", "v", 55, "m")
    assert c.field_selector() == "a=b,spec.nodeName=n"
    assert c.sidecar_annotation == ""
    assert RepairConfig.from_env({"REPAIR_DELETE_PODS": "true",
                                  "REPAIR_LABEL_PODS": "true"}).mode == "delete"


def test_daemon_config_node_name_falls_back_and_bad_values_name_the_variable():
    d = DaemonConfig.from_env({"KUBERNETES_NODE_NAME": "k8s-node", "MONITORING_PORT": "9090",
                               "CNI_AGENT_RUN_DIR": "/tmp/x", "DRIFT_CHECK_INTERVAL": "0"})
    assert d.repair.node_name == "k8s-node" and d.monitoring_port == 9090
    assert str(d.log_socket) == "/tmp/x/log.sock" and d.drift_interval == 0
    with pytest.raises(ConfigError, match="REPAIR_DELETE_PODS"):
        DaemonConfig.from_env({"REPAIR_DELETE_PODS": "yes please"})
    with pytest.raises(ConfigError, match="FORCE_IPTABLES_BINARY"):
        DaemonConfig.from_env({"FORCE_IPTABLES_BINARY": "ebpf"})


@pytest.mark.parametrize("value", ["python-iptables", "nft", "legacy", "NFT"])
def test_every_forced_backend_the_installer_accepts_the_agent_accepts_too(value):
    """FORCE_IPTABLES_BINARY=python-iptables is what docs/installer.md tells a node without
    iptables binaries to set; `run` must not refuse it."""
    daemon, installer = read_configs({"FORCE_IPTABLES_BINARY": value})
    assert daemon.iptables_backend == installer.force_iptables_binary == value.lower()
    assert DaemonConfig.from_env({"FORCE_IPTABLES_BINARY": value}).iptables_backend in BACKENDS


@pytest.mark.parametrize("value", ["", " ", "auto", "Auto"])
def test_an_unforced_backend_is_detected_per_netns(value):
    daemon, installer = read_configs({"FORCE_IPTABLES_BINARY": value})
    assert (daemon.iptables_backend, installer.force_iptables_binary) == ("auto", "")


def test_values_are_typed_and_bad_ones_name_the_variable_and_value():
    d = DaemonConfig.from_env({"READINESS_PORT": " 8080 ", "REPAIR_WATCH_TIMEOUT": "0x3c",
                               "DRIFT_CHECK_INTERVAL": "2.5", "LOG_LEVEL": "WARNING",
                               "KUBECONFIG": "/root/.kube/config"})
    assert (d.health_port, d.watch_timeout, d.drift_interval) == (8080, 60, 2.5)
    assert (d.log_level, d.kubeconfig) == ("warn", "/root/.kube/config")
    for name, value in [("MONITORING_PORT", "65536"), ("READINESS_PORT", "http"),
                        ("DRIFT_CHECK_INTERVAL", "nan"), ("DRIFT_CHECK_INTERVAL", "-1"),
                        ("REPAIR_WATCH_TIMEOUT", "-5"), ("LOG_LEVEL", "loud"),
                        ("REPAIR_INIT_CONTAINER_EXIT_CODE", "one")]:
        with pytest.raises(ConfigError) as err:
            DaemonConfig.from_env({name: value})
        assert f"{name}={value!r}" in str(err.value)


def test_free_text_settings_keep_an_empty_value():
    """`""` means "all pods" / "any init container" for these, so it is not "unset"."""
    r = RepairConfig.from_env({"REPAIR_SIDECAR_ANNOTATION": "", "REPAIR_INIT_CONTAINER_NAME": ""})
    assert (r.sidecar_annotation, r.init_container_name) == ("", "")
    assert DaemonConfig.from_env({"REPAIR_NODE_NAME": "", "KUBERNETES_NODE_NAME": "n-2"}
                                 ).repair.node_name == "n-2"


def test_run_starts_on_a_node_forced_to_python_iptables(tmp_path):
    """The whole `run` path on a node configured as docs/installer.md says for a host without
    iptables binaries: it reads its settings, installs the plugin with that backend, serves,
    and shuts down cleanly."""
    dirs = make_node_dirs(tmp_path)
    dirs.put("10-bridge.conf", text='{"cniVersion": "0.3.1", "name": "k8s", "type": "bridge"}')
    env = dirs.env(FORCE_IPTABLES_BINARY="python-iptables", REPAIR_ENABLED="false",
                   READINESS_PORT="0", MONITORING_PORT="0", HEALTH_BIND_ADDRESS="127.0.0.1",
                   DRIFT_CHECK_INTERVAL="0")
    daemon, installer = read_configs(env)
    stop = threading.Event()
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(run_daemon(daemon, installer, default_installer, stop)))
    thread.start()
    conflist = dirs.net_dir / "10-bridge.conflist"
    try:
        wait_for(lambda: conflist.exists() and (dirs.run_dir / "log.sock").exists(),
                 what="the plugin installed and the log socket served")
        entry = json.loads(conflist.read_text())["plugins"][-1]
        assert (entry["type"], entry["iptables_backend"]) == ("istio-cni", "python-iptables")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert result == [0]
    assert not conflist.exists() and (dirs.net_dir / "10-bridge.conf").exists()  # uninstalled


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_backoff_is_exponential_per_item_capped_and_forgotten():
    limiter = RateLimiter(clock=Clock())
    delays = [limiter.when("a") for _ in range(4)]
    assert delays == [0.005, 0.01, 0.02, 0.04]
    assert limiter.when("b") == 0.005  # per item
    for _ in range(30):
        limiter.when("c")
    assert limiter.when("c") == 1000.0
    limiter.forget("a")
    assert limiter.when("a") == 0.005


def test_token_bucket_limits_overall_rate_after_burst():
    clock = Clock()
    limiter = RateLimiter(clock=clock, qps=10, burst=3)
    assert [limiter.when(i) for i in range(3)] == [0.005] * 3
    assert limiter.when(99) == pytest.approx(0.1)  # bucket empty: 1/qps
    clock.now += 10
    assert limiter.when(100) == 0.005


def test_queue_dedups_and_never_hands_out_an_item_twice_at_once():
    clock = Clock()
    q = WorkQueue(clock=clock)
    q.add("x")
    q.add("x")
    assert q.get() == "x"
    q.add("x")  # re-added while processing: held until done
    q.add("y")
    assert q.get() == "y"
    q.done("y")
    q.done("x")
    assert q.get() == "x"
    q.done("x")
    q.add_after("z", 5)
    assert not q.idle()
    clock.now = 6
    assert q.get() == "z"
    q.done("z")
    assert q.idle()
    q.shutdown()
    assert q.get() is None


@pytest.mark.parametrize(("env", "mode"), [
    ({}, RuleMode()),
    ({"NATIVE_NFTABLES": "true"}, RuleMode(native_nftables=True)),
    ({"NATIVE_NFTABLES": "1", "NFTABLES_BACKEND": "NFT", "FORCE_IPTABLES_BINARY": "legacy"},
     RuleMode(True, "legacy", "nft")),
])
def test_native_nftables_reaches_the_plugin_config_and_the_agents_repair_and_drift(env, mode):
    """One environment, read once: the agent repairs and checks in the mode the installer
    writes into the plugin's config, with the same backends."""
    from cni.config import parse_plugin_config
    from installer.conflist import plugin_entry

    daemon, installer = read_configs(env)
    entry = {**plugin_entry(installer), "name": "k8s-pod-network"}
    assert daemon.rule_mode == parse_plugin_config(entry).rule_mode == mode
    assert ("nftables_backend" in entry) == (mode.nftables_backend != "auto")


def test_a_bad_nftables_setting_names_the_variable_and_value():
    with pytest.raises(ConfigError, match="NFTABLES_BACKEND='nftx'"):
        DaemonConfig.from_env({"NFTABLES_BACKEND": "nftx"})
    with pytest.raises(ConfigError, match="NATIVE_NFTABLES='maybe'"):
        read_configs({"NATIVE_NFTABLES": "maybe"})
