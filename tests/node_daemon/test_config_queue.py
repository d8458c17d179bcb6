"""Config from env (upstream names and defaults) and the work queue's backoff (pure tier)."""

from __future__ import annotations

import pytest

from node_daemon.config import ConfigError, DaemonConfig, RepairConfig
from node_daemon.workqueue import RateLimiter, WorkQueue


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
