"""The installer's settings, read once from an environment mapping and parsed into types.

Each variable is defined once below (`SETTINGS`, in the order of the docs table) with
upstream's name and default wherever upstream has the setting; the few that upstream
hard-codes or lacks are ours and say so. The model, the value parsers and the settings the
agent shares (`CNI_AGENT_RUN_DIR`, `EXCLUDE_NAMESPACES`, `FORCE_IPTABLES_BINARY`,
`NATIVE_NFTABLES`, `NFTABLES_BACKEND`) are in `cni.settings`. Nothing
below `InstallerConfig.from_env` reads `os.environ`: tests and the CLI build configs by hand or
from a dict. A bad value is an `InstallerConfigError` naming the variable and the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cni.config import KUBECONFIG_NAME
from cni.settings import (
    CNI_AGENT_RUN_DIR,
    EXCLUDE_NAMESPACES,
    FORCE_IPTABLES_BINARY,
    NATIVE_NFTABLES,
    NFTABLES_BACKEND,
    OURS,
    POD_NAMESPACE,
    Setting,
    SettingError,
    log_level,
    read_settings,
)
from cni.values import BadValue, go_bool, names, octal_mode, one_of, path, paths, port, text

DEFAULT_STANDALONE_NAME = "YYY-istio-cni.conf"
DEFAULT_OWNED_NAME = "02-istio-cni.conflist"
SHUTDOWN_POLICIES = ("auto", "true", "false")

InstallerConfigError = SettingError
"""The installer's name for a bad setting (the one settings error)."""

MOUNTED_CNI_NET_DIR = Setting(
    "MOUNTED_CNI_NET_DIR", Path("/host/etc/cni/net.d"), path,
    "The host's net.d, as mounted in the container.")
CNI_CONF_NAME = Setting(
    "CNI_CONF_NAME", "", text,
    "The primary config's file name. When empty, the installer discovers it the way the "
    "kubelet does: the first valid `.conf`, `.conflist` or `.json`. When set, the "
    "`.conf`↔`.conflist` twin is also accepted, and any extension is allowed. In standalone "
    "mode it is the name of our own file.")
CHAINED_CNI_PLUGIN = Setting(
    "CHAINED_CNI_PLUGIN", True, go_bool,
    "`false` writes a standalone file (`CNI_CONF_NAME`, or `YYY-istio-cni.conf`).")


def _owned_name(value: str) -> str:
    """A plain `.conflist` file name in net.d (our file holds a plugin list, which libcni
    loads only from `.conflist`)."""
    if "/" in value or value in (".", "..") or "\0" in value:
        raise BadValue(f"{value!r} is not a plain file name")
    if not value.endswith(".conflist") or value.startswith("."):
        raise BadValue(f"{value!r} must be a visible file name ending in .conflist")
    return value


ISTIO_OWNED_CNI_CONFIG = Setting(
    "ISTIO_OWNED_CNI_CONFIG", True, go_bool,
    "Chained mode: put the primary's network with our entry appended into our own file "
    "(`ISTIO_OWNED_CNI_CONF_FILENAME`, sorting before the primary's) instead of editing the "
    "primary's. The vendor's file is never edited, so its rewrites never leave a pod without "
    "istio-cni. See \"Our own conflist\".",
    origin="upstream (ambient only there; sidecar mode and default `true`: ours)")
ISTIO_OWNED_CNI_CONF_FILENAME = Setting(
    "ISTIO_OWNED_CNI_CONF_FILENAME", "", _owned_name,
    "Our file's name; it must sort before the primary's (byte order, as libcni sorts).",
    shown_default=f"`{DEFAULT_OWNED_NAME}`")
ISTIO_OWNED_CNI_CONFIG_FILENAME = Setting(
    "ISTIO_OWNED_CNI_CONFIG_FILENAME", "", _owned_name,
    "The same, under the name upstream's `--istio-owned-cni-config-filename` flag reads "
    "from the environment. Setting both to different names is an error.",
    shown_default='`""`')
KUBECONFIG_MODE = Setting(
    "KUBECONFIG_MODE", 0o600, octal_mode,
    "The kubeconfig's file mode, always read as **octal** (`600`, `0600` and `0o600` all "
    "work). Upstream's Go base-0 parsing takes `600` as decimal; we refuse anything that is "
    "not octal.", origin="upstream (parsing: ours)", shown_default="`0600`")
CNI_CONF_GROUP_READ = Setting(
    "CNI_CONF_GROUP_READ", False, go_bool,
    "Gives files we create mode 0640 instead of 0600. An existing primary config keeps its "
    "own mode.")
KUBE_CA_FILE = Setting(
    "KUBE_CA_FILE", "", text, "The CA that the plugin trusts for the API server.",
    shown_default='`""` → `<SA dir>/ca.crt`')
SKIP_TLS_VERIFY = Setting(
    "SKIP_TLS_VERIFY", False, go_bool,
    "Writes `insecure-skip-tls-verify: true` instead of a CA.")
KUBERNETES_SERVICE_PROTOCOL = Setting(
    "KUBERNETES_SERVICE_PROTOCOL", "https", text, "The kubeconfig server's scheme.")
KUBERNETES_SERVICE_HOST = Setting(
    "KUBERNETES_SERVICE_HOST", "", text,
    "The API server VIP. An IPv6 address is bracketed.",
    shown_default="required (set by the kubelet)")
KUBERNETES_SERVICE_PORT = Setting(
    "KUBERNETES_SERVICE_PORT", "", lambda value: str(port(value)),
    "The API server port.", shown_default="required (set by the kubelet)")
UPDATE_CNI_BINARIES = Setting(
    "UPDATE_CNI_BINARIES", True, go_bool,
    "`false` leaves a binary alone if one already exists at the target.",
    origin="upstream ≤ 1.22")
SKIP_CNI_BINARIES = Setting(
    "SKIP_CNI_BINARIES", (), names, "Comma-separated names not to copy.",
    origin="upstream ≤ 1.22")
PLUGIN_LOG_LEVEL = Setting(
    "PLUGIN_LOG_LEVEL", "info", log_level,
    "The plugin's `plugin_log_level` (`debug`, `info`, `warn`, `error`, `none`). Upstream "
    "derives it from `--log_output_level`.", origin=OURS)
K8S_SERVICE_ACCOUNT_PATH = Setting(
    "K8S_SERVICE_ACCOUNT_PATH", Path("/var/run/secrets/kubernetes.io/serviceaccount"), path,
    "Where the token and `ca.crt` are. This directory is watched for token rotation.",
    origin="ours (upstream hard-codes it)")
CNI_BIN_SOURCE_DIR = Setting(
    "CNI_BIN_SOURCE_DIR", Path("/opt/cni/bin"), path,
    "What to install: every regular file in this directory, and every onedir bundle (a "
    "directory `NAME/` holding an executable `NAME/NAME`, e.g. `istio-cni/istio-cni` + "
    "`_internal/`). See \"Binaries\".", origin="ours (upstream hard-codes it)")
CNI_BIN_TARGET_DIRS = Setting(
    "CNI_BIN_TARGET_DIRS", (Path("/host/opt/cni/bin"),), paths,
    "Comma-separated host bin dirs, as mounted. On GKE, mount `/home/kubernetes/bin`.",
    origin="ours (upstream hard-codes it)")
UNINSTALL_ON_SHUTDOWN = Setting(
    "UNINSTALL_ON_SHUTDOWN", "auto", one_of(SHUTDOWN_POLICIES, fold_case=True),
    "What happens on SIGTERM: `auto`, `true` or `false`. See below.", origin=OURS)
AGENT_SERVE = Setting(
    "AGENT_SERVE", True, go_bool,
    "Let the plugin hand ADD and CHECK to this agent over `<run dir>/cni.sock` (README, "
    "\"Agent-served ADD and CHECK\"). `false` is written as the plugin's `agent_serve: false`: "
    "every call is then done in-process.", origin=OURS)
DAEMONSET_NAME = Setting(
    "DAEMONSET_NAME", "istio-cni-node", text,
    "The DaemonSet that `auto` checks, in `POD_NAMESPACE`.", origin=OURS)

SETTINGS: tuple[Setting, ...] = (
    MOUNTED_CNI_NET_DIR, CNI_CONF_NAME, CHAINED_CNI_PLUGIN, ISTIO_OWNED_CNI_CONFIG,
    ISTIO_OWNED_CNI_CONF_FILENAME, ISTIO_OWNED_CNI_CONFIG_FILENAME, CNI_AGENT_RUN_DIR,
    KUBECONFIG_MODE,
    CNI_CONF_GROUP_READ, KUBE_CA_FILE, SKIP_TLS_VERIFY, KUBERNETES_SERVICE_PROTOCOL,
    KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT, EXCLUDE_NAMESPACES, POD_NAMESPACE,
    NATIVE_NFTABLES, NFTABLES_BACKEND, FORCE_IPTABLES_BINARY, UPDATE_CNI_BINARIES,
    SKIP_CNI_BINARIES, PLUGIN_LOG_LEVEL, K8S_SERVICE_ACCOUNT_PATH, CNI_BIN_SOURCE_DIR,
    CNI_BIN_TARGET_DIRS, UNINSTALL_ON_SHUTDOWN, DAEMONSET_NAME, AGENT_SERVE,
)
"""Every variable the installer reads, in the order of docs/installer.md's table."""

# InstallerConfig field -> its setting
_FIELDS: tuple[tuple[str, Setting], ...] = (
    ("mounted_cni_net_dir", MOUNTED_CNI_NET_DIR), ("cni_conf_name", CNI_CONF_NAME),
    ("chained", CHAINED_CNI_PLUGIN), ("owned_config", ISTIO_OWNED_CNI_CONFIG),
    ("cni_agent_run_dir", CNI_AGENT_RUN_DIR),
    ("kubeconfig_mode", KUBECONFIG_MODE), ("cni_conf_group_read", CNI_CONF_GROUP_READ),
    ("kube_ca_file", KUBE_CA_FILE), ("skip_tls_verify", SKIP_TLS_VERIFY),
    ("k8s_service_protocol", KUBERNETES_SERVICE_PROTOCOL),
    ("k8s_service_host", KUBERNETES_SERVICE_HOST), ("k8s_service_port", KUBERNETES_SERVICE_PORT),
    ("service_account_path", K8S_SERVICE_ACCOUNT_PATH),
    ("cni_bin_source_dir", CNI_BIN_SOURCE_DIR), ("cni_bin_target_dirs", CNI_BIN_TARGET_DIRS),
    ("update_cni_binaries", UPDATE_CNI_BINARIES), ("skip_cni_binaries", SKIP_CNI_BINARIES),
    ("exclude_namespaces", EXCLUDE_NAMESPACES), ("pod_namespace", POD_NAMESPACE),
    ("plugin_log_level", PLUGIN_LOG_LEVEL), ("native_nftables", NATIVE_NFTABLES),
    ("nftables_backend", NFTABLES_BACKEND),
    ("force_iptables_binary", FORCE_IPTABLES_BINARY),
    ("uninstall_on_shutdown", UNINSTALL_ON_SHUTDOWN), ("daemonset_name", DAEMONSET_NAME),
    ("agent_serve", AGENT_SERVE),
)


@dataclass(frozen=True)
class InstallerConfig:
    """Everything the installer needs, with upstream's defaults. Each field names its
    variable; what it means is in that variable's `Setting` above (and the docs table)."""

    mounted_cni_net_dir: Path = MOUNTED_CNI_NET_DIR.default
    """MOUNTED_CNI_NET_DIR."""
    cni_conf_name: str = CNI_CONF_NAME.default
    """CNI_CONF_NAME: "" = discover the primary config like the kubelet."""
    chained: bool = CHAINED_CNI_PLUGIN.default
    """CHAINED_CNI_PLUGIN."""
    owned_config: bool = ISTIO_OWNED_CNI_CONFIG.default
    """ISTIO_OWNED_CNI_CONFIG (chained mode only)."""
    owned_conf_name: str = DEFAULT_OWNED_NAME
    """ISTIO_OWNED_CNI_CONF_FILENAME (or its upstream-flag twin)."""
    cni_agent_run_dir: Path = CNI_AGENT_RUN_DIR.default
    """CNI_AGENT_RUN_DIR."""
    kubeconfig_mode: int = KUBECONFIG_MODE.default
    """KUBECONFIG_MODE."""
    cni_conf_group_read: bool = CNI_CONF_GROUP_READ.default
    """CNI_CONF_GROUP_READ."""
    kube_ca_file: str = KUBE_CA_FILE.default
    """KUBE_CA_FILE: "" = <service account dir>/ca.crt."""
    skip_tls_verify: bool = SKIP_TLS_VERIFY.default
    """SKIP_TLS_VERIFY."""
    k8s_service_protocol: str = KUBERNETES_SERVICE_PROTOCOL.default
    """KUBERNETES_SERVICE_PROTOCOL."""
    k8s_service_host: str = KUBERNETES_SERVICE_HOST.default
    """KUBERNETES_SERVICE_HOST."""
    k8s_service_port: str = KUBERNETES_SERVICE_PORT.default
    """KUBERNETES_SERVICE_PORT."""
    service_account_path: Path = K8S_SERVICE_ACCOUNT_PATH.default
    """K8S_SERVICE_ACCOUNT_PATH."""
    cni_bin_source_dir: Path = CNI_BIN_SOURCE_DIR.default
    """CNI_BIN_SOURCE_DIR (a bundle is installed as a symlink, see installer.binaries)."""
    cni_bin_target_dirs: tuple[Path, ...] = CNI_BIN_TARGET_DIRS.default
    """CNI_BIN_TARGET_DIRS."""
    update_cni_binaries: bool = UPDATE_CNI_BINARIES.default
    """UPDATE_CNI_BINARIES."""
    skip_cni_binaries: tuple[str, ...] = SKIP_CNI_BINARIES.default
    """SKIP_CNI_BINARIES."""
    exclude_namespaces: tuple[str, ...] = EXCLUDE_NAMESPACES.default
    """EXCLUDE_NAMESPACES."""
    pod_namespace: str = POD_NAMESPACE.default
    """POD_NAMESPACE."""
    plugin_log_level: str = PLUGIN_LOG_LEVEL.default
    """PLUGIN_LOG_LEVEL."""
    native_nftables: bool = NATIVE_NFTABLES.default
    """NATIVE_NFTABLES."""
    nftables_backend: str = NFTABLES_BACKEND.default
    """NFTABLES_BACKEND: written as `nftables_backend` only when not `auto`."""
    agent_serve: bool = AGENT_SERVE.default
    """AGENT_SERVE: written as `agent_serve: false` only when off."""
    force_iptables_binary: str = FORCE_IPTABLES_BINARY.default
    """FORCE_IPTABLES_BINARY: "" = the plugin detects per pod (no `iptables_backend`)."""
    uninstall_on_shutdown: str = UNINSTALL_ON_SHUTDOWN.default
    """UNINSTALL_ON_SHUTDOWN: auto, true or false (applied by node_daemon.shutdown)."""
    daemonset_name: str = DAEMONSET_NAME.default
    """DAEMONSET_NAME."""

    @property
    def kubeconfig_path(self) -> Path:
        """Fixed name, as upstream and the plugin (cni/config.py) expect."""
        return self.cni_agent_run_dir / KUBECONFIG_NAME

    @property
    def owned(self) -> bool:
        """Our own conflist is in use: ISTIO_OWNED_CNI_CONFIG in chained mode (standalone
        mode already writes only a file of ours)."""
        return self.chained and self.owned_config

    @property
    def created_file_mode(self) -> int:
        return 0o640 if self.cni_conf_group_read else 0o600

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> InstallerConfig:
        """Read and validate every setting from `env` (os.environ in production)."""
        return cls.from_values(read_settings(env, SETTINGS))

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> InstallerConfig:
        """The config from settings already read (`cni.settings.read_settings`), so a
        process that also builds the agent's config reads the environment once."""
        conf = values[ISTIO_OWNED_CNI_CONF_FILENAME.name]
        flag = values[ISTIO_OWNED_CNI_CONFIG_FILENAME.name]
        if conf and flag and conf != flag:
            raise InstallerConfigError(
                f"ISTIO_OWNED_CNI_CONF_FILENAME={conf!r} and ISTIO_OWNED_CNI_CONFIG_FILENAME="
                f"{flag!r} name different files: set one of them")
        return cls(**{name: values[setting.name] for name, setting in _FIELDS},
                   owned_conf_name=conf or flag or DEFAULT_OWNED_NAME)
