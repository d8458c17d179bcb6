"""The node daemon's typed configuration, built once from the environment at the entry point.

Upstream's names and defaults (`cni/pkg/cmd/root.go`, `cni/pkg/constants`): viper binds the
flag `repair-broken-pod-label-key` to the env var `REPAIR_BROKEN_POD_LABEL_KEY`, and so on.
Nothing below the entry point reads `os.environ`; tests build these dataclasses by hand.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

MODES = ("repair", "delete", "label")


class ConfigError(ValueError):
    """An environment variable holds a value we cannot parse; the message names it."""


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """Go's strconv.ParseBool, as viper reads booleans; empty means the default."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if raw in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if raw in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (true/false)")


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw, 0)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class RepairConfig:
    """What the repair controller treats as broken and what it does about it (reference §4)."""

    enabled: bool = True
    """REPAIR_ENABLED (true): start the repair controller in `run`."""
    repair_pods: bool = False
    """REPAIR_REPAIR_PODS (false; the chart sets true): program the rules into the live pod."""
    delete_pods: bool = False
    """REPAIR_DELETE_PODS (false): delete broken pods (uid + resourceVersion preconditions)."""
    label_pods: bool = False
    """REPAIR_LABEL_PODS (false): label broken pods through the pods/status subresource."""
    label_key: str = "cni.istio.io/uninitialized"
    """REPAIR_BROKEN_POD_LABEL_KEY: the label set in label mode."""
    label_value: str = "true"
    """REPAIR_BROKEN_POD_LABEL_VALUE."""
    node_name: str = ""
    """REPAIR_NODE_NAME (""): this node; `spec.nodeName=<it>` is always in the field selector."""
    sidecar_annotation: str = "sidecar.istio.io/status"
    """REPAIR_SIDECAR_ANNOTATION: only pods carrying it are considered ("" = all pods)."""
    init_container_name: str = "istio-validation"
    """REPAIR_INIT_CONTAINER_NAME: the validation init container ("" = any init container)."""
    init_termination_msg: str = ""
    """REPAIR_INIT_CONTAINER_TERMINATION_MESSAGE (""): also require this message (trimmed)."""
    init_exit_code: int = 126
    """REPAIR_INIT_CONTAINER_EXIT_CODE (126): the validation failure's exit code (0 = any)."""
    label_selectors: str = ""
    """REPAIR_LABEL_SELECTORS (""): extra label selector for the pod watch."""
    field_selectors: str = ""
    """REPAIR_FIELD_SELECTORS (""): extra field selectors, joined before spec.nodeName."""

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
        from dataclasses import replace

        return replace(self, repair_pods=mode == "repair", delete_pods=mode == "delete",
                       label_pods=mode == "label")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> RepairConfig:
        d = cls()
        return cls(
            enabled=env_bool(env, "REPAIR_ENABLED", d.enabled),
            repair_pods=env_bool(env, "REPAIR_REPAIR_PODS", d.repair_pods),
            delete_pods=env_bool(env, "REPAIR_DELETE_PODS", d.delete_pods),
            label_pods=env_bool(env, "REPAIR_LABEL_PODS", d.label_pods),
            label_key=env.get("REPAIR_BROKEN_POD_LABEL_KEY", d.label_key),
            label_value=env.get("REPAIR_BROKEN_POD_LABEL_VALUE", d.label_value),
            node_name=env.get("REPAIR_NODE_NAME", d.node_name),
            sidecar_annotation=env.get("REPAIR_SIDECAR_ANNOTATION", d.sidecar_annotation),
            init_container_name=env.get("REPAIR_INIT_CONTAINER_NAME", d.init_container_name),
            init_termination_msg=env.get("REPAIR_INIT_CONTAINER_TERMINATION_MESSAGE",
                                         d.init_termination_msg),
            init_exit_code=env_int(env, "REPAIR_INIT_CONTAINER_EXIT_CODE", d.init_exit_code),
            label_selectors=env.get("REPAIR_LABEL_SELECTORS", d.label_selectors),
            field_selectors=env.get("REPAIR_FIELD_SELECTORS", d.field_selectors),
        )


@dataclass(frozen=True)
class DaemonConfig:
    """Everything `run` needs besides the installer's own config."""

    repair: RepairConfig = field(default_factory=RepairConfig)
    run_dir: Path = Path("/var/run/istio-cni")
    """CNI_AGENT_RUN_DIR: where `log.sock` lives (same path on host and in the container)."""
    health_port: int = 8000
    """READINESS_PORT (ours; upstream hard-codes 8000): /healthz and /readyz."""
    monitoring_port: int = 15014
    """MONITORING_PORT (15014): Prometheus /metrics."""
    bind_address: str = ""
    """HEALTH_BIND_ADDRESS (ours, "" = all addresses): where health and metrics listen."""
    host_proc: Path = Path("/host/proc")
    """HOST_PROC (ours, /host/proc): the host's /proc, scanned to find a pod's netns by IP."""
    iptables_backend: str = "auto"
    """FORCE_IPTABLES_BINARY (""): legacy or nft; empty = detect per netns like the plugin."""
    drift_interval: float = 300.0
    """DRIFT_CHECK_INTERVAL (ours, seconds, 300; 0 = off): periodic CHECK of redirected pods."""
    drift_repair: bool = True
    """DRIFT_REPAIR (ours, true): put back rules found missing or altered (false: report only)."""
    watch_timeout: int = 300
    """REPAIR_WATCH_TIMEOUT (ours, seconds, 300): server-side timeout of one watch request."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DaemonConfig:
        d = cls()
        repair = RepairConfig.from_env(env)
        if not repair.node_name:
            # KUBERNETES_NODE_NAME then the hostname, as upstream fills its node name.
            node = env.get("KUBERNETES_NODE_NAME", "") or socket.gethostname()
            from dataclasses import replace

            repair = replace(repair, node_name=node)
        backend = env.get("FORCE_IPTABLES_BINARY", "").strip() or "auto"
        if backend not in ("auto", "legacy", "nft"):
            raise ConfigError(f"FORCE_IPTABLES_BINARY={backend!r}: expected legacy or nft")
        return cls(
            repair=repair,
            run_dir=Path(env.get("CNI_AGENT_RUN_DIR", "") or d.run_dir),
            health_port=env_int(env, "READINESS_PORT", d.health_port),
            monitoring_port=env_int(env, "MONITORING_PORT", d.monitoring_port),
            bind_address=env.get("HEALTH_BIND_ADDRESS", d.bind_address),
            host_proc=Path(env.get("HOST_PROC", "") or d.host_proc),
            iptables_backend=backend,
            drift_interval=env_float(env, "DRIFT_CHECK_INTERVAL", d.drift_interval),
            drift_repair=env_bool(env, "DRIFT_REPAIR", d.drift_repair),
            watch_timeout=env_int(env, "REPAIR_WATCH_TIMEOUT", d.watch_timeout),
        )

    @property
    def log_socket(self) -> Path:
        return self.run_dir / "log.sock"
