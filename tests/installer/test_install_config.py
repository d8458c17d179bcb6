"""InstallerConfig.from_env: upstream's names and defaults, parsed types, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from installer import InstallerConfig, InstallerConfigError


def test_defaults_are_upstreams():
    cfg = InstallerConfig.from_env({})
    assert cfg == InstallerConfig()
    assert cfg.mounted_cni_net_dir == Path("/host/etc/cni/net.d")
    assert cfg.chained and cfg.cni_conf_name == ""
    assert cfg.kubeconfig_path == Path("/var/run/istio-cni/istio-cni-kubeconfig")
    assert cfg.kubeconfig_mode == 0o600 and cfg.created_file_mode == 0o600
    assert cfg.k8s_service_protocol == "https" and cfg.uninstall_on_shutdown == "auto"
    assert cfg.cni_bin_target_dirs == (Path("/host/opt/cni/bin"),)


def test_values_are_parsed():
    cfg = InstallerConfig.from_env({
        "CHAINED_CNI_PLUGIN": "False", "EXCLUDE_NAMESPACES": " kube-system, istio-system ,",
        "KUBECONFIG_MODE": "640", "CNI_CONF_GROUP_READ": "1", "SKIP_TLS_VERIFY": "true",
        "CNI_BIN_TARGET_DIRS": "/a,/b", "PLUGIN_LOG_LEVEL": "WARNING",
        "FORCE_IPTABLES_BINARY": "nft", "UNINSTALL_ON_SHUTDOWN": "false"})
    assert not cfg.chained and cfg.skip_tls_verify
    assert cfg.exclude_namespaces == ("kube-system", "istio-system")
    assert cfg.kubeconfig_mode == 0o640 and cfg.created_file_mode == 0o640
    assert cfg.cni_bin_target_dirs == (Path("/a"), Path("/b"))
    assert cfg.plugin_log_level == "warn" and cfg.force_iptables_binary == "nft"
    assert InstallerConfig.from_env({"KUBECONFIG_MODE": "0o600"}).kubeconfig_mode == 0o600
    assert InstallerConfig.from_env({"KUBECONFIG_MODE": "0600"}).kubeconfig_mode == 0o600


@pytest.mark.parametrize("env, message", [
    ({"KUBECONFIG_MODE": "384"}, "KUBECONFIG_MODE='384'"),  # Go base-0 decimal: refused
    ({"CHAINED_CNI_PLUGIN": "yes"}, "CHAINED_CNI_PLUGIN='yes'"),
    ({"UNINSTALL_ON_SHUTDOWN": "maybe"}, "UNINSTALL_ON_SHUTDOWN='maybe'"),
    ({"FORCE_IPTABLES_BINARY": "ipfw"}, "FORCE_IPTABLES_BINARY='ipfw'"),
    ({"PLUGIN_LOG_LEVEL": "loud"}, "PLUGIN_LOG_LEVEL='loud'"),
    ({"KUBERNETES_SERVICE_PORT": "443/x"}, "KUBERNETES_SERVICE_PORT='443/x'"),
    ({"SKIP_TLS_VERIFY": "yes"}, "SKIP_TLS_VERIFY='yes'"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(InstallerConfigError) as err:
        InstallerConfig.from_env(env)
    assert message in str(err.value)


@pytest.mark.parametrize("value, written", [
    ("python-iptables", "python-iptables"), ("Legacy", "legacy"), ("auto", ""), (" ", "")])
def test_forced_backend(value, written):
    """The names of cni.settings.BACKENDS; `auto` (or nothing) leaves detection to the plugin."""
    assert InstallerConfig.from_env({"FORCE_IPTABLES_BINARY": value}).force_iptables_binary \
        == written


def test_unset_or_blank_variables_take_the_default():
    blank = {name: " " for name in ("MOUNTED_CNI_NET_DIR", "CHAINED_CNI_PLUGIN",
                                    "KUBECONFIG_MODE", "CNI_BIN_TARGET_DIRS", "DAEMONSET_NAME")}
    assert InstallerConfig.from_env(blank) == InstallerConfig()
    assert InstallerConfig.from_env({"KUBERNETES_SERVICE_PORT": " 6443 "}).k8s_service_port \
        == "6443"
