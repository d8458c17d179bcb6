"""Plugin config keys of every upstream generation (pure tier)."""

from __future__ import annotations

import pytest

from cni.config import parse_plugin_config
from cni.errors import InvalidNetworkConfig

BASE = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "istio-cni"}


def test_defaults():
    c = parse_plugin_config(BASE)
    assert c.kubeconfig == "/var/run/istio-cni/istio-cni-kubeconfig"
    assert c.log_uds_address == "/var/run/istio-cni/log.sock"
    assert (c.pod_lookup_attempts, c.pod_lookup_interval) == (30, 1.0)
    assert c.iptables_backend == "auto" and c.log_level == "info"


def test_current_keys():
    c = parse_plugin_config({**BASE, "plugin_log_level": "debug", "cni_agent_run_dir": "/run/x",
                             "exclude_namespaces": ["kube-system"], "pod_namespace": "istio-system",
                             "kubernetes": {"kubeconfig": "/ignored"}})
    assert c.kubeconfig == "/run/x/istio-cni-kubeconfig"
    assert c.exclude_namespaces == frozenset({"kube-system"})
    assert (c.log_level, c.pod_namespace) == ("debug", "istio-system")


def test_legacy_keys():
    c = parse_plugin_config({**BASE, "log_level": "warn", "kubernetes": {
        "kubeconfig": "/etc/cni/net.d/ZZZ-istio-cni-kubeconfig",
        "exclude_namespaces": ["istio-system"], "cni_bin_dir": "/opt/cni/bin",
        "intercept_type": "iptables"}, "log_uds_address": "/var/run/istio-cni/log.sock"})
    assert c.kubeconfig == "/etc/cni/net.d/ZZZ-istio-cni-kubeconfig"
    assert c.exclude_namespaces == frozenset({"istio-system"}) and c.log_level == "warn"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"exclude_namespaces": [1]}, "exclude_namespaces"),
        ({"kubernetes": {"exclude_namespaces": {"a": 1}}}, "kubernetes.exclude_namespaces"),
        ({"plugin_log_level": "loud"}, "plugin_log_level"),
        ({"kubernetes": "x"}, "kubernetes"),
        ({"kubernetes": {"intercept_type": "ebpf"}}, "intercept_type"),
        ({"iptables_backend": "bpf"}, "iptables_backend"),
        ({"native_nftables": "true"}, "native_nftables"),
        ({"nftables_backend": "iptables"}, "nftables_backend"),
        ({"pod_lookup_attempts": 0}, "pod_lookup_attempts"),
        ({"pod_lookup_attempts": True}, "pod_lookup_attempts"),
        ({"pod_lookup_deadline_seconds": -1}, "pod_lookup_deadline_seconds"),
        ({"cni_agent_run_dir": 3}, "cni_agent_run_dir"),
        ({"prevResult": "x"}, "prevResult"),
    ],
)
def test_bad_values_are_refused_naming_the_field(extra, field):
    with pytest.raises(InvalidNetworkConfig) as exc:
        parse_plugin_config({**BASE, **extra})
    assert exc.value.code == 7 and field in exc.value.msg


def test_native_nftables_selects_the_mode_and_nftables_backend_the_way():
    from cni.backends import RuleMode

    assert parse_plugin_config(BASE).rule_mode == RuleMode()
    conf = {**BASE, "native_nftables": True, "nftables_backend": "libnftables"}
    assert parse_plugin_config(conf).rule_mode == RuleMode(True, "auto", "libnftables")
