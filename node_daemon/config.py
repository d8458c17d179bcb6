"""The node agent's typed configuration, built once from the environment at the entry point.

Each variable is defined once below (`SETTINGS`, in the order of docs/node-daemon.md's table)
with upstream's name and default (`cni/pkg/cmd/root.go`, `cni/pkg/constants`): viper binds the
flag `repair-broken-pod-label-key` to the env var `REPAIR_BROKEN_POD_LABEL_KEY`, and so on. The
model, the value parsers and the settings the installer shares (`CNI_AGENT_RUN_DIR`,
`EXCLUDE_NAMESPACES`, `FORCE_IPTABLES_BINARY`, `NATIVE_NFTABLES`, `NFTABLES_BACKEND`) are in
`cni.settings`. Nothing below the entry point reads `os.environ`; tests build these
dataclasses by hand.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cni.backends import RuleMode
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
    read_settings,
)
from cni.values import (
    BadValue,
    go_bool,
    integer,
    non_negative_integer,
    one_of,
    path,
    port,
    seconds,
    text,
)

MODES = ("repair", "delete", "label")
RUN_LOG_LEVELS = ("debug", "info", "warn", "error")

ConfigError = SettingError
"""The agent's name for a bad setting (the one settings error)."""

REPAIR_ENABLED = Setting(
    "REPAIR_ENABLED", True, go_bool,
    "Start the repair controller (and the drift check) in `run`.")
REPAIR_REPAIR_PODS = Setting(
    "REPAIR_REPAIR_PODS", False, go_bool,
    "Mode 1: program the rules into the running pod's netns.",
    shown_default="`false` (chart: `true`)")
REPAIR_DELETE_PODS = Setting(
    "REPAIR_DELETE_PODS", False, go_bool,
    "Mode 2: delete broken pods (preconditions: uid + resourceVersion).")
REPAIR_LABEL_PODS = Setting(
    "REPAIR_LABEL_PODS", False, go_bool,
    "Mode 3: label broken pods (merge patch on `pods/status`).")
REPAIR_BROKEN_POD_LABEL_KEY = Setting(
    "REPAIR_BROKEN_POD_LABEL_KEY", "cni.istio.io/uninitialized", text,
    "Label key for mode 3.", keep_empty=True)
REPAIR_BROKEN_POD_LABEL_VALUE = Setting(
    "REPAIR_BROKEN_POD_LABEL_VALUE", "true", text, "Label value for mode 3.", keep_empty=True)
REPAIR_NODE_NAME = Setting(
    "REPAIR_NODE_NAME", "", text,
    "This node; the watch always uses `spec.nodeName=<it>`. Upstream leaves it empty (and then "
    "watches only unscheduled pods); we fall back. The chart sets it from `spec.nodeName`.",
    shown_default='`""` → `KUBERNETES_NODE_NAME` → hostname', keep_empty=True)
KUBERNETES_NODE_NAME = Setting(
    "KUBERNETES_NODE_NAME", "", text,
    "The node name when `REPAIR_NODE_NAME` is empty (before the hostname), as upstream fills "
    "its node name.", origin=OURS, keep_empty=True)
REPAIR_SIDECAR_ANNOTATION = Setting(
    "REPAIR_SIDECAR_ANNOTATION", "sidecar.istio.io/status", text,
    "Only pods with this annotation are considered (`\"\"` = all).", keep_empty=True)
REPAIR_INIT_CONTAINER_NAME = Setting(
    "REPAIR_INIT_CONTAINER_NAME", "istio-validation", text,
    "The validation init container (`\"\"` = any init container).", keep_empty=True)
REPAIR_INIT_CONTAINER_TERMINATION_MESSAGE = Setting(
    "REPAIR_INIT_CONTAINER_TERMINATION_MESSAGE", "", text,
    "Also require this termination message (compared trimmed).", keep_empty=True)
REPAIR_INIT_CONTAINER_EXIT_CODE = Setting(
    "REPAIR_INIT_CONTAINER_EXIT_CODE", 126, integer,
    "The validation failure's exit code (`0` = any).")
REPAIR_LABEL_SELECTORS = Setting(
    "REPAIR_LABEL_SELECTORS", "", text, "Extra label selector for the pod watch.",
    keep_empty=True)
REPAIR_FIELD_SELECTORS = Setting(
    "REPAIR_FIELD_SELECTORS", "", text,
    "Extra field selectors (joined before `spec.nodeName=`).", keep_empty=True)
MONITORING_PORT = Setting("MONITORING_PORT", 15014, port, "Prometheus `/metrics`.")
READINESS_PORT = Setting(
    "READINESS_PORT", 8000, port, "`/healthz` and `/readyz`.",
    origin="ours (upstream hard-codes 8000)")
HEALTH_BIND_ADDRESS = Setting(
    "HEALTH_BIND_ADDRESS", "", text, "Address the health and metrics servers bind.",
    origin=OURS, shown_default='`""` (all)')
HOST_PROC = Setting(
    "HOST_PROC", Path("/host/proc"), path,
    "The host's `/proc`, scanned to find a pod's netns by IP. Admin commands fall back to "
    "`/proc` when it does not exist.", origin=OURS)
DRIFT_CHECK_INTERVAL = Setting(
    "DRIFT_CHECK_INTERVAL", 300.0, seconds,
    "Seconds between drift checks; `0` disables the periodic check.", origin=OURS)
DRIFT_REPAIR = Setting(
    "DRIFT_REPAIR", True, go_bool,
    "Put drifted rules back; `false` only reports (event + metric).", origin=OURS)
REPAIR_WATCH_TIMEOUT = Setting(
    "REPAIR_WATCH_TIMEOUT", 300, non_negative_integer,
    "Server-side timeout (s) of one watch request; the client's read timeout is 30 s longer.",
    origin=OURS)


def positive_seconds(text: str) -> float:
    """A duration in seconds above 0 (0 would make a bound nothing ever meets)."""
    value = seconds(text)
    if value <= 0:
        raise BadValue(f"{text!r} is not a number of seconds > 0")
    return value


REPAIR_WATCH_STALE_SECONDS = Setting(
    "REPAIR_WATCH_STALE_SECONDS", 150.0, positive_seconds,
    "Seconds the pod watch may go without word from the API (an event, a bookmark: the API "
    "sends one about every minute; or a list) before its cache is no source: served ADDs "
    "then defer to the plugin and readiness is `PodWatchStale`. A watch silent for two "
    "thirds of it is replaced by a relist.", origin=OURS)
KUBECONFIG = Setting(
    "KUBECONFIG", "", text,
    "Admin commands and `run` outside a cluster; in a pod the service account is used.",
    origin="ours (the Kubernetes clients' convention)", shown_default="unset")
AMBIENT_ENABLED = Setting(
    "AMBIENT_ENABLED", False, go_bool,
    "Ambient mode, which this agent does not implement: `true` keeps the agent not ready "
    "(the reason on `/readyz` and in the log) and installs nothing, rather than half working.",
    origin="upstream (refused)")
LOG_LEVEL = Setting(
    "LOG_LEVEL", "info", one_of(RUN_LOG_LEVELS, fold_case=True, aliases={"warning": "warn"}),
    "The agent's log level (`debug`, `info`, `warn`, `error`); `run --log-level` overrides "
    "it.", origin=OURS)

# --- the agent's own pod and the plugin's credential --------------------------------------------

POD_NAME = Setting(
    "POD_NAME", "", text,
    "The agent's own pod (downward API `metadata.name`): read once at start for its "
    "`terminationGracePeriodSeconds`, which bounds every shutdown step; unset: 30 s.",
    origin="upstream (its chart sets it)", shown_default='`""` (downward API)')


def token_seconds(value: str) -> int:
    """A TokenRequest lifetime: at least 600 s (the API server's minimum)."""
    number = integer(value)
    if number < 600:
        raise BadValue(f"{value!r} is shorter than 600 s, the API server's minimum")
    return number


PLUGIN_SERVICE_ACCOUNT = Setting(
    "PLUGIN_SERVICE_ACCOUNT", "istio-cni-plugin", text,
    "The plugin's own ServiceAccount (in `POD_NAMESPACE`, granted only `pods: get`): the agent "
    "writes a token of it, from a TokenRequest, into the plugin's kubeconfig, so the file on "
    "the host grants nothing else and outlives this pod (needs `create serviceaccounts/token` "
    "on it). Empty, or not granted: this pod's own token, as upstream.", origin=OURS)
PLUGIN_TOKEN_SECONDS = Setting(
    "PLUGIN_TOKEN_SECONDS", 86400, token_seconds,
    "Lifetime of the plugin's token (seconds, at least 600). The agent renews it every hour "
    "(half the lifetime when shorter), so after the last agent stops, the plugin keeps "
    "working for at least this minus one hour (23 h by default).", origin=OURS)

# --- the node readiness gate (node_daemon/node_gate.py) ---------------------------------------

TAINT_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")
KUBELET_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure",
                      "NetworkUnavailable")
_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def qualified_name(value: str) -> str:
    """A Kubernetes qualified name (`[prefix/]name`, as taint keys are validated): a name of
    at most 63 characters, alphanumeric at both ends, with an optional DNS subdomain prefix."""
    prefix, _, name = value.rpartition("/")
    if not _NAME.fullmatch(name) or prefix and (len(prefix) > 253
                                                  or not _PREFIX.fullmatch(prefix)):
        raise BadValue(f"{value!r} is not a qualified name ([dns-prefix/]name, name at most 63 "
                       "characters, alphanumeric at both ends)")
    return value


def condition_type(value: str) -> str:
    """A node condition type of ours: a qualified name that is none of the kubelet's."""
    if value in KUBELET_CONDITIONS:
        raise BadValue(f"{value!r} is a condition the kubelet owns; choose another type")
    return qualified_name(value)


NODE_READINESS_TAINT_KEY = Setting(
    "NODE_READINESS_TAINT_KEY", "cni.istio.io/not-ready", qualified_name,
    "Key of the startup taint the agent removes from its own node once the plugin is "
    "installed and the agent ready (upstream's docs and istiod's untaint controller use this "
    "key). A node without it is left alone; `none` turns removal off. Needs `nodes: get, "
    "patch`.", origin=OURS)
NODE_READINESS_TAINT_EFFECT = Setting(
    "NODE_READINESS_TAINT_EFFECT", "", one_of(TAINT_EFFECTS),
    "Remove the taint only with this effect (`NoSchedule`, `PreferNoSchedule`, `NoExecute`); "
    "empty: with any effect.", origin=OURS, shown_default='`""` (any)')
NODE_READINESS_CONDITION_TYPE = Setting(
    "NODE_READINESS_CONDITION_TYPE", "", condition_type,
    "Publish a node condition of this type (e.g. `IstioCNIReady`) on the agent's node: "
    "`True` while the plugin is installed and the agent ready, `False` with the reason "
    "otherwise. Empty: none. Needs `nodes: get` and `nodes/status: patch`.", origin=OURS)
GATE_OFF = "none"
"""The taint key that turns taint removal off (a qualified name cannot be empty here: an
empty variable takes the default)."""


@dataclass(frozen=True)
class NodeGateConfig:
    """What the readiness gate does to the agent's own node; each field names its variable."""

    taint_key: str = NODE_READINESS_TAINT_KEY.default
    """NODE_READINESS_TAINT_KEY: "" = leave taints alone."""
    taint_effect: str = NODE_READINESS_TAINT_EFFECT.default
    """NODE_READINESS_TAINT_EFFECT: "" = any effect."""
    condition_type: str = NODE_READINESS_CONDITION_TYPE.default
    """NODE_READINESS_CONDITION_TYPE: "" = publish no condition."""

    @property
    def enabled(self) -> bool:
        return bool(self.taint_key or self.condition_type)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> NodeGateConfig:
        key = values[NODE_READINESS_TAINT_KEY.name]
        return cls(taint_key="" if key == GATE_OFF else key,
                   taint_effect=values[NODE_READINESS_TAINT_EFFECT.name],
                   condition_type=values[NODE_READINESS_CONDITION_TYPE.name])


NODE_GATE_SETTINGS = (NODE_READINESS_TAINT_KEY, NODE_READINESS_TAINT_EFFECT,
                      NODE_READINESS_CONDITION_TYPE)

# --- end of the node readiness gate -------------------------------------------------------------

SETTINGS: tuple[Setting, ...] = (
    REPAIR_ENABLED, REPAIR_REPAIR_PODS, REPAIR_DELETE_PODS, REPAIR_LABEL_PODS,
    REPAIR_BROKEN_POD_LABEL_KEY, REPAIR_BROKEN_POD_LABEL_VALUE, REPAIR_NODE_NAME,
    KUBERNETES_NODE_NAME, REPAIR_SIDECAR_ANNOTATION, REPAIR_INIT_CONTAINER_NAME,
    REPAIR_INIT_CONTAINER_TERMINATION_MESSAGE, REPAIR_INIT_CONTAINER_EXIT_CODE,
    REPAIR_LABEL_SELECTORS, REPAIR_FIELD_SELECTORS, EXCLUDE_NAMESPACES, FORCE_IPTABLES_BINARY,
    NATIVE_NFTABLES,
    NFTABLES_BACKEND, CNI_AGENT_RUN_DIR,
    MONITORING_PORT, READINESS_PORT, HEALTH_BIND_ADDRESS, HOST_PROC, DRIFT_CHECK_INTERVAL,
    DRIFT_REPAIR, REPAIR_WATCH_TIMEOUT, REPAIR_WATCH_STALE_SECONDS, KUBECONFIG,
    AMBIENT_ENABLED, LOG_LEVEL, POD_NAME, POD_NAMESPACE, PLUGIN_SERVICE_ACCOUNT,
    PLUGIN_TOKEN_SECONDS,
    *NODE_GATE_SETTINGS,
)
"""Every variable the agent reads, in the order of docs/node-daemon.md's table."""


# --- set by upstream's chart, knowingly not used ------------------------------------------------

IGNORED_ORIGIN = "upstream (not used here)"


def _ignored(name: str, why: str) -> Setting:
    return Setting(name, "", text, why, origin=IGNORED_ORIGIN, shown_default="—", keep_empty=True)


AMBIENT_ONLY = tuple(_ignored(name, "Ambient mode only (see `AMBIENT_ENABLED`).") for name in (
    "AMBIENT_ENABLEMENT_SELECTOR", "AMBIENT_DNS_CAPTURE", "AMBIENT_IPV6",
    "AMBIENT_RECONCILE_POD_RULES_ON_STARTUP", "AMBIENT_DISABLE_SAFE_UPGRADE",
    "ENABLE_AMBIENT_DETECTION_RETRY", "ZTUNNEL_UDS_ADDRESS"))
IGNORED: tuple[Setting, ...] = (
    _ignored("CURRENT_AGENT_VERSION", "The chart's image tag; upstream's ambient upgrade "
             "check reads it. Logged at start next to this agent's own version."),
    *AMBIENT_ONLY,
    _ignored("REPAIR_RUN_AS_DAEMON", "`run` always runs the repair controller as a daemon "
             "(upstream no longer reads it either)."),
    _ignored("ALLOW_SWITCH_TO_HOST_NS", "Lets upstream's ambient agent enter the host's "
             "netns; sidecar mode never needs to."),
    _ignored("NODE_NAME", "The node name `REPAIR_NODE_NAME` already carries in the chart; a "
             "different value is logged as a warning."),
    _ignored("GOMEMLIMIT", "Go's memory limit; a Python process has no such knob (set the "
             "container's memory limit)."),
    _ignored("GOMAXPROCS", "Go's thread count; no equivalent here."),
)
"""Variables upstream's `istio-cni` chart sets that this agent reads only to say so: each is
defined here, so a chart's environment holds no variable nothing knows about."""


def ignored_notes(env: Mapping[str, str], cfg: DaemonConfig) -> list[tuple[int, str]]:
    """The log lines (level, message) about the chart's variables that are set but not used:
    a warning for each one whose value asks for something this agent does not do, and one
    info line listing the rest. Pure: `run` logs them."""
    notes: list[tuple[int, str]] = []
    node = env.get("NODE_NAME", "").strip()
    if node and node != cfg.repair.node_name:
        notes.append((logging.WARNING,
                      f"NODE_NAME={node} differs from the node this agent watches "
                      f"({cfg.repair.node_name}, from REPAIR_NODE_NAME); NODE_NAME is not "
                      "used"))
    unused = sorted(s.name for s in IGNORED if env.get(s.name, "").strip())
    if unused:
        notes.append((logging.INFO, "set by the chart, not used by this agent (sidecar "
                                    "mode): " + ", ".join(unused)))
    return notes


@dataclass(frozen=True)
class RepairConfig:
    """What the repair controller treats as broken and what it does about it. Each field names
    its variable; what it means is in that variable's `Setting` above (and the docs table)."""

    enabled: bool = REPAIR_ENABLED.default
    """REPAIR_ENABLED."""
    repair_pods: bool = REPAIR_REPAIR_PODS.default
    """REPAIR_REPAIR_PODS."""
    delete_pods: bool = REPAIR_DELETE_PODS.default
    """REPAIR_DELETE_PODS."""
    label_pods: bool = REPAIR_LABEL_PODS.default
    """REPAIR_LABEL_PODS."""
    label_key: str = REPAIR_BROKEN_POD_LABEL_KEY.default
    """REPAIR_BROKEN_POD_LABEL_KEY."""
    label_value: str = REPAIR_BROKEN_POD_LABEL_VALUE.default
    """REPAIR_BROKEN_POD_LABEL_VALUE."""
    node_name: str = REPAIR_NODE_NAME.default
    """REPAIR_NODE_NAME (`DaemonConfig.from_env` fills the fallbacks)."""
    sidecar_annotation: str = REPAIR_SIDECAR_ANNOTATION.default
    """REPAIR_SIDECAR_ANNOTATION: "" = all pods."""
    init_container_name: str = REPAIR_INIT_CONTAINER_NAME.default
    """REPAIR_INIT_CONTAINER_NAME: "" = any init container."""
    init_termination_msg: str = REPAIR_INIT_CONTAINER_TERMINATION_MESSAGE.default
    """REPAIR_INIT_CONTAINER_TERMINATION_MESSAGE."""
    init_exit_code: int = REPAIR_INIT_CONTAINER_EXIT_CODE.default
    """REPAIR_INIT_CONTAINER_EXIT_CODE: 0 = any."""
    label_selectors: str = REPAIR_LABEL_SELECTORS.default
    """REPAIR_LABEL_SELECTORS."""
    field_selectors: str = REPAIR_FIELD_SELECTORS.default
    """REPAIR_FIELD_SELECTORS."""
    exclude_namespaces: tuple[str, ...] = EXCLUDE_NAMESPACES.default
    """EXCLUDE_NAMESPACES: pods here are never repaired nor drift-checked (the plugin never
    redirects them)."""

    @property
    def mode(self) -> str | None:
        """The one action taken on a broken pod: first enabled of repair > delete > label."""
        if self.repair_pods:
            return "repair"
        if self.delete_pods:
            return "delete"
        if self.label_pods:
            return "label"
        return None

    def field_selector(self) -> str:
        """Upstream always appends `spec.nodeName=<node>`, even when the node name is empty."""
        parts = [self.field_selectors] if self.field_selectors else []
        return ",".join([*parts, f"spec.nodeName={self.node_name}"])

    def with_mode(self, mode: str | None) -> RepairConfig:
        return replace(self, repair_pods=mode == "repair", delete_pods=mode == "delete",
                       label_pods=mode == "label")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RepairConfig:
        return cls.from_values(read_settings(env, (s for _, s in _REPAIR_FIELDS)))

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> RepairConfig:
        return cls(**{name: values[setting.name] for name, setting in _REPAIR_FIELDS})


@dataclass(frozen=True)
class DaemonConfig:
    """Everything `run` needs besides the installer's own config."""

    repair: RepairConfig = field(default_factory=RepairConfig)
    run_dir: Path = CNI_AGENT_RUN_DIR.default
    """CNI_AGENT_RUN_DIR: where `log.sock` lives."""
    health_port: int = READINESS_PORT.default
    """READINESS_PORT."""
    monitoring_port: int = MONITORING_PORT.default
    """MONITORING_PORT."""
    bind_address: str = HEALTH_BIND_ADDRESS.default
    """HEALTH_BIND_ADDRESS: "" = all addresses."""
    host_proc: Path = HOST_PROC.default
    """HOST_PROC."""
    iptables_backend: str = "auto"
    """FORCE_IPTABLES_BINARY, or `auto` when it is empty (one of `cni.settings.BACKENDS`)."""
    native_nftables: bool = NATIVE_NFTABLES.default
    """NATIVE_NFTABLES: repair and drift program and check native nftables mode."""
    nftables_backend: str = NFTABLES_BACKEND.default
    """NFTABLES_BACKEND."""
    drift_interval: float = DRIFT_CHECK_INTERVAL.default
    """DRIFT_CHECK_INTERVAL: seconds, 0 = off."""
    drift_repair: bool = DRIFT_REPAIR.default
    """DRIFT_REPAIR."""
    watch_timeout: int = REPAIR_WATCH_TIMEOUT.default
    """REPAIR_WATCH_TIMEOUT: seconds."""
    watch_stale_after: float = REPAIR_WATCH_STALE_SECONDS.default
    """REPAIR_WATCH_STALE_SECONDS: seconds."""
    kubeconfig: str = KUBECONFIG.default
    """KUBECONFIG: "" = in-cluster service account (then ~/.kube/config)."""
    ambient_enabled: bool = AMBIENT_ENABLED.default
    """AMBIENT_ENABLED: refused (see `refusal`)."""
    log_level: str = LOG_LEVEL.default
    """LOG_LEVEL."""
    node_gate: NodeGateConfig = field(default_factory=NodeGateConfig)
    """NODE_READINESS_*: the readiness gate on the agent's node."""
    pod_name: str = POD_NAME.default
    """POD_NAME: the agent's own pod ("" = unknown: the default grace period)."""
    namespace: str = POD_NAMESPACE.default
    """POD_NAMESPACE."""
    plugin_service_account: str = PLUGIN_SERVICE_ACCOUNT.default
    """PLUGIN_SERVICE_ACCOUNT: "" = the plugin uses this pod's token."""
    plugin_token_seconds: int = PLUGIN_TOKEN_SECONDS.default
    """PLUGIN_TOKEN_SECONDS."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DaemonConfig:
        """Read and validate every agent setting from `env` (os.environ in production)."""
        return cls.from_values(read_settings(env, SETTINGS))

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> DaemonConfig:
        """The config from settings already read (`cni.settings.read_settings`), so `run`,
        which also builds the installer's config, reads the environment once."""
        repair = RepairConfig.from_values(values)
        if not repair.node_name:
            # KUBERNETES_NODE_NAME then the hostname, as upstream fills its node name.
            node = values[KUBERNETES_NODE_NAME.name] or socket.gethostname()
            repair = replace(repair, node_name=node)
        return cls(
            repair=repair,
            run_dir=values[CNI_AGENT_RUN_DIR.name],
            health_port=values[READINESS_PORT.name],
            monitoring_port=values[MONITORING_PORT.name],
            bind_address=values[HEALTH_BIND_ADDRESS.name],
            host_proc=values[HOST_PROC.name],
            iptables_backend=values[FORCE_IPTABLES_BINARY.name] or "auto",
            native_nftables=values[NATIVE_NFTABLES.name],
            nftables_backend=values[NFTABLES_BACKEND.name],
            drift_interval=values[DRIFT_CHECK_INTERVAL.name],
            drift_repair=values[DRIFT_REPAIR.name],
            watch_timeout=values[REPAIR_WATCH_TIMEOUT.name],
            watch_stale_after=values[REPAIR_WATCH_STALE_SECONDS.name],
            kubeconfig=values[KUBECONFIG.name],
            ambient_enabled=values[AMBIENT_ENABLED.name],
            log_level=values[LOG_LEVEL.name],
            node_gate=NodeGateConfig.from_values(values),
            pod_name=values[POD_NAME.name],
            namespace=values[POD_NAMESPACE.name],
            plugin_service_account=values[PLUGIN_SERVICE_ACCOUNT.name],
            plugin_token_seconds=values[PLUGIN_TOKEN_SECONDS.name],
        )

    @property
    def refusal(self) -> str:
        """Why this agent must stay not ready and touch nothing ("" = it may run): a mode it
        does not implement. Serving it half (the plugin installed, sidecar rules programmed
        for pods that expect ztunnel) would be worse than not serving it."""
        if self.ambient_enabled:
            return ("AMBIENT_ENABLED=true: ambient mode is not supported by this agent "
                    "(sidecar mode only); nothing is installed. Deploy upstream's agent for "
                    "ambient, or set ambient.enabled=false")
        return ""

    @property
    def rule_mode(self) -> RuleMode:
        """The mode repair, drift and `explain` use: the one the installer writes into the
        plugin's config from the same variables."""
        return RuleMode(self.native_nftables, self.iptables_backend, self.nftables_backend)

    @property
    def log_socket(self) -> Path:
        return self.run_dir / "log.sock"


# RepairConfig field -> its setting
_REPAIR_FIELDS: tuple[tuple[str, Setting], ...] = (
    ("enabled", REPAIR_ENABLED), ("repair_pods", REPAIR_REPAIR_PODS),
    ("delete_pods", REPAIR_DELETE_PODS), ("label_pods", REPAIR_LABEL_PODS),
    ("label_key", REPAIR_BROKEN_POD_LABEL_KEY), ("label_value", REPAIR_BROKEN_POD_LABEL_VALUE),
    ("node_name", REPAIR_NODE_NAME), ("sidecar_annotation", REPAIR_SIDECAR_ANNOTATION),
    ("init_container_name", REPAIR_INIT_CONTAINER_NAME),
    ("init_termination_msg", REPAIR_INIT_CONTAINER_TERMINATION_MESSAGE),
    ("init_exit_code", REPAIR_INIT_CONTAINER_EXIT_CODE),
    ("label_selectors", REPAIR_LABEL_SELECTORS), ("field_selectors", REPAIR_FIELD_SELECTORS),
    ("exclude_namespaces", EXCLUDE_NAMESPACES),
)
