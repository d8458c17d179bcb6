"""The installer's settings, read once from an environment mapping and parsed into types.

Names and defaults are upstream's (`cni/pkg/cmd/root.go`, `cni/pkg/config/config.go`) wherever
upstream has a setting; the few that upstream hard-codes or lacks are ours and say so. Nothing
below `InstallerConfig.from_env` reads `os.environ`: tests and the CLI build configs by hand or
from a dict. A bad value is an `InstallerConfigError` naming the variable and the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_NET_DIR = "/host/etc/cni/net.d"
DEFAULT_RUN_DIR = "/var/run/istio-cni"
DEFAULT_SA_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_STANDALONE_NAME = "YYY-istio-cni.conf"
LOG_LEVELS = ("debug", "info", "warn", "error", "none")
BACKENDS = ("", "legacy", "nft", "python-iptables")
SHUTDOWN_POLICIES = ("auto", "true", "false")


class InstallerConfigError(ValueError):
    """An environment variable holds a value the installer cannot use."""


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    # Go's strconv.ParseBool, which viper uses upstream
    if raw in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if raw in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise InstallerConfigError(f"{name}={raw!r}: expected true or false")


def _list(env: Mapping[str, str], name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _mode(env: Mapping[str, str], name: str, default: int) -> int:
    """File mode, always octal: `0600`, `600` and `0o600` all mean rw-------.

    Upstream parses with Go base-0 rules, where `600` silently means decimal 600 (mode 01130);
    nobody means that, so we read octal and refuse anything that is not.
    """
    raw = env.get(name, "").strip()
    if not raw:
        return default
    digits = raw[2:] if raw.lower().startswith("0o") else raw
    try:
        mode = int(digits, 8)
    except ValueError:
        raise InstallerConfigError(f"{name}={raw!r}: expected an octal file mode such as 0600") \
            from None
    if not 0 <= mode <= 0o7777:
        raise InstallerConfigError(f"{name}={raw!r}: not a file mode")
    return mode


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in choices:
        allowed = ", ".join(c or '""' for c in choices)
        raise InstallerConfigError(f"{name}={raw!r}: expected one of {allowed}")
    return raw


@dataclass(frozen=True)
class InstallerConfig:
    """Everything the installer needs, with upstream's defaults."""

    mounted_cni_net_dir: Path = Path(DEFAULT_NET_DIR)
    """MOUNTED_CNI_NET_DIR (upstream, default /host/etc/cni/net.d): the host's net.d as mounted
    in the container."""
    cni_conf_name: str = ""
    """CNI_CONF_NAME (upstream, default ""): the primary config's file name; empty means
    discover it like the kubelet (first valid .conf/.conflist/.json). In standalone mode, the
    name of our own file."""
    chained: bool = True
    """CHAINED_CNI_PLUGIN (upstream, default true): false writes a standalone config file."""
    cni_agent_run_dir: Path = Path(DEFAULT_RUN_DIR)
    """CNI_AGENT_RUN_DIR (upstream, default /var/run/istio-cni): holds the plugin's kubeconfig;
    it is written into the plugin config, so it must be the same path on host and container."""
    kubeconfig_mode: int = 0o600
    """KUBECONFIG_MODE (upstream, default 0600): mode of the kubeconfig, read as octal."""
    cni_conf_group_read: bool = False
    """CNI_CONF_GROUP_READ (upstream, default false): 0640 instead of 0600 for config files we
    create (an existing primary config keeps its own mode)."""
    kube_ca_file: str = ""
    """KUBE_CA_FILE (upstream, default "" = <service account dir>/ca.crt): CA the plugin
    trusts for the API server."""
    skip_tls_verify: bool = False
    """SKIP_TLS_VERIFY (upstream, default false): write insecure-skip-tls-verify instead of a
    CA."""
    k8s_service_protocol: str = "https"
    """KUBERNETES_SERVICE_PROTOCOL (upstream, default https)."""
    k8s_service_host: str = ""
    """KUBERNETES_SERVICE_HOST (upstream, required; set by the kubelet): the API VIP the
    plugin, in the host netns, connects to. IPv6 addresses are bracketed in the URL."""
    k8s_service_port: str = ""
    """KUBERNETES_SERVICE_PORT (upstream, required; set by the kubelet)."""
    service_account_path: Path = Path(DEFAULT_SA_PATH)
    """K8S_SERVICE_ACCOUNT_PATH (ours; upstream hard-codes the default
    /var/run/secrets/kubernetes.io/serviceaccount): where the projected token and ca.crt are;
    watched for token rotation."""
    cni_bin_source_dir: Path = Path("/opt/cni/bin")
    """CNI_BIN_SOURCE_DIR (ours; upstream hard-codes /opt/cni/bin): the binaries to install,
    every regular file in it and every onedir bundle `NAME/NAME` + `_internal/` (the frozen
    plugin in the image; a bundle is installed as a symlink, see installer.binaries)."""
    cni_bin_target_dirs: tuple[Path, ...] = (Path("/host/opt/cni/bin"),)
    """CNI_BIN_TARGET_DIRS (ours; upstream hard-codes /host/opt/cni/bin): comma-separated host
    bin dirs (as mounted) to copy the binaries into."""
    update_cni_binaries: bool = True
    """UPDATE_CNI_BINARIES (upstream <= 1.22, default true): false keeps binaries that already
    exist in a target dir."""
    skip_cni_binaries: tuple[str, ...] = ()
    """SKIP_CNI_BINARIES (upstream <= 1.22, default ""): comma-separated names not to copy."""
    exclude_namespaces: tuple[str, ...] = ()
    """EXCLUDE_NAMESPACES (upstream, default ""; chart: kube-system): comma-separated
    namespaces the plugin never touches (plugin key exclude_namespaces)."""
    pod_namespace: str = ""
    """POD_NAMESPACE (upstream, from the downward API): where istio-cni-node runs; its own
    pods pass through the plugin, and the DaemonSet is looked up there on shutdown."""
    plugin_log_level: str = "info"
    """PLUGIN_LOG_LEVEL (ours; upstream derives it from --log_output_level's cni-plugin scope,
    chart default info): the plugin's plugin_log_level."""
    native_nftables: bool = False
    """NATIVE_NFTABLES (upstream, default false): written as the plugin's native_nftables."""
    force_iptables_binary: str = ""
    """FORCE_IPTABLES_BINARY (upstream, default ""): legacy or nft (ours also:
    python-iptables); written as the plugin's iptables_backend. Empty = detect per pod."""
    uninstall_on_shutdown: str = "auto"
    """UNINSTALL_ON_SHUTDOWN (ours, default auto): on SIGTERM, auto removes the plugin only
    when the DaemonSet is being deleted (an upgrade or pod restart keeps it, so pods created
    meanwhile are still redirected); true always removes it (upstream sidecar mode); false
    never does."""
    daemonset_name: str = "istio-cni-node"
    """DAEMONSET_NAME (ours, default istio-cni-node): the DaemonSet checked by
    UNINSTALL_ON_SHUTDOWN=auto, in POD_NAMESPACE."""

    @property
    def kubeconfig_path(self) -> Path:
        """Fixed name, as upstream and the plugin (cni/config.py) expect."""
        return self.cni_agent_run_dir / "istio-cni-kubeconfig"

    @property
    def created_file_mode(self) -> int:
        return 0o640 if self.cni_conf_group_read else 0o600

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> InstallerConfig:
        """Read and validate every setting from `env` (os.environ in production)."""
        level = env.get("PLUGIN_LOG_LEVEL", "").strip().lower() or "info"
        if level == "warning":
            level = "warn"
        if level not in LOG_LEVELS:
            raise InstallerConfigError(
                f"PLUGIN_LOG_LEVEL={level!r}: expected one of {', '.join(LOG_LEVELS)}")
        targets = _list(env, "CNI_BIN_TARGET_DIRS", ("/host/opt/cni/bin",))
        return cls(
            mounted_cni_net_dir=Path(env.get("MOUNTED_CNI_NET_DIR") or DEFAULT_NET_DIR),
            cni_conf_name=env.get("CNI_CONF_NAME", "").strip(),
            chained=_bool(env, "CHAINED_CNI_PLUGIN", True),
            cni_agent_run_dir=Path(env.get("CNI_AGENT_RUN_DIR") or DEFAULT_RUN_DIR),
            kubeconfig_mode=_mode(env, "KUBECONFIG_MODE", 0o600),
            cni_conf_group_read=_bool(env, "CNI_CONF_GROUP_READ", False),
            kube_ca_file=env.get("KUBE_CA_FILE", "").strip(),
            skip_tls_verify=_bool(env, "SKIP_TLS_VERIFY", False),
            k8s_service_protocol=env.get("KUBERNETES_SERVICE_PROTOCOL", "").strip() or "https",
            k8s_service_host=env.get("KUBERNETES_SERVICE_HOST", "").strip(),
            k8s_service_port=env.get("KUBERNETES_SERVICE_PORT", "").strip(),
            service_account_path=Path(env.get("K8S_SERVICE_ACCOUNT_PATH") or DEFAULT_SA_PATH),
            cni_bin_source_dir=Path(env.get("CNI_BIN_SOURCE_DIR") or "/opt/cni/bin"),
            cni_bin_target_dirs=tuple(Path(t) for t in targets),
            update_cni_binaries=_bool(env, "UPDATE_CNI_BINARIES", True),
            skip_cni_binaries=_list(env, "SKIP_CNI_BINARIES"),
            exclude_namespaces=_list(env, "EXCLUDE_NAMESPACES"),
            pod_namespace=env.get("POD_NAMESPACE", "").strip(),
            plugin_log_level=level,
            native_nftables=_bool(env, "NATIVE_NFTABLES", False),
            force_iptables_binary=_choice(env, "FORCE_IPTABLES_BINARY", "", BACKENDS),
            uninstall_on_shutdown=_choice(env, "UNINSTALL_ON_SHUTDOWN", "auto",
                                          SHUTDOWN_POLICIES),
            daemonset_name=env.get("DAEMONSET_NAME", "").strip() or "istio-cni-node",
        )
