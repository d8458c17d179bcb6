"""The plugin's configuration, decoded once from the network config on stdin.

Reads upstream's keys of every generation (current, 1.8-1.23 and the archived standalone repo)
and resolves them here, so nothing below looks at raw JSON. Bad types are refused with the field
name and value (code 7) rather than silently defaulted: a typo must not turn into a pod started
without redirection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from cni import wire
from cni.choices import BACKENDS, DEFAULT_RUN_DIR, NFTABLES_BACKENDS, log_level
from cni.errors import InvalidNetworkConfig

if TYPE_CHECKING:
    from cni.backends import RuleMode
from cni.values import BadValue, encodable_text, one_of

KUBECONFIG_NAME = "istio-cni-kubeconfig"

POD_LOOKUP_ATTEMPTS = 30
"""Upstream's number of pod GET attempts."""
POD_LOOKUP_INTERVAL = 1.0
"""Upstream's pause between pod GET attempts, in seconds."""
POD_LOOKUP_DEADLINE = 45.0
"""The default overall budget of the pod lookup, in seconds: upstream's schedule (30 attempts
1 s apart, about 30 s when the pod is late to appear) plus room for three attempts that hit the
5 s socket cap. Longer buys nothing: a pod still missing by then is not coming, an API server
that slow fails the next attempt too, and the runtime retries the sandbox after our clear "try
again later" (code 11). The outer bound is the kubelet's RunPodSandbox deadline (twice
--runtime-request-timeout, 4 minutes by default; containerd sets none of its own on a CNI call),
which every plugin of the chain shares."""

AGENT_SERVE_TIMEOUT = wire.AGENT_SERVE_TIMEOUT
"""The default agent_serve_timeout_seconds (why 5 s: `cni.wire.AGENT_SERVE_TIMEOUT`)."""

_backend = one_of(BACKENDS)
_nft_backend = one_of(NFTABLES_BACKENDS)


class PluginConfig(NamedTuple):
    """One network config entry for istio-cni, with every default applied (a NamedTuple, not a
    dataclass, to keep `dataclasses` off the hot path)."""

    cni_version: str
    name: str
    log_level: str = "info"
    """plugin_log_level (current) or log_level (<= 1.22)."""
    cni_agent_run_dir: str = DEFAULT_RUN_DIR
    """cni_agent_run_dir: kubeconfig, log.sock, istio-cni.log live here."""
    kubeconfig: str = f"{DEFAULT_RUN_DIR}/{KUBECONFIG_NAME}"
    """<cni_agent_run_dir>/istio-cni-kubeconfig; the legacy kubernetes.kubeconfig when the
    config predates cni_agent_run_dir."""
    exclude_namespaces: frozenset[str] = frozenset()
    """exclude_namespaces (current) or kubernetes.exclude_namespaces (legacy); exact match."""
    pod_namespace: str = ""
    """pod_namespace: where the istio-cni-node pods run (their own sandboxes pass through)."""
    log_uds_address: str = f"{DEFAULT_RUN_DIR}/log.sock"
    """log_uds_address (1.11-1.23), else <cni_agent_run_dir>/log.sock."""
    pod_lookup_attempts: int = POD_LOOKUP_ATTEMPTS
    """Ours: how many times to GET the pod (upstream: 30)."""
    pod_lookup_interval: float = POD_LOOKUP_INTERVAL
    """Ours: seconds between pod GET attempts (upstream: 1)."""
    pod_lookup_deadline: float = POD_LOOKUP_DEADLINE
    """Ours: overall budget for the pod lookup (why 45 s: `POD_LOOKUP_DEADLINE`)."""
    iptables_backend: str = BACKENDS[0]
    """Ours: one of `cni.settings.BACKENDS` (auto = upstream's nft/legacy detection)."""
    native_nftables: bool = False
    """native_nftables (upstream's): pods get upstream's `inet istio-proxy-*` tables instead
    of iptables rules."""
    nftables_backend: str = NFTABLES_BACKENDS[0]
    """Ours: how native nftables mode talks to nftables, one of
    `cni.choices.NFTABLES_BACKENDS` (auto = libnftables, else the host's `nft`)."""
    agent_serve: bool = True
    """Ours: hand ADD and CHECK to the node agent over `<cni_agent_run_dir>/cni.sock` when it
    answers (false: always in-process)."""
    agent_serve_timeout: float = AGENT_SERVE_TIMEOUT
    """Ours: agent_serve_timeout_seconds, the budget before falling back to in-process."""
    prev_result: dict[str, Any] | None = None

    @property
    def rule_mode(self) -> RuleMode:
        """The mode and backends the pod pipeline programs and checks with."""
        from cni.backends import RuleMode

        return RuleMode(self.native_nftables, self.iptables_backend, self.nftables_backend)


_DEFAULTS = PluginConfig._field_defaults


def _typed(conf: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = conf.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise InvalidNetworkConfig(f"invalid plugin config: {key} must be a number", repr(value))
    if not isinstance(value, kind):
        name = kind.__name__ if isinstance(kind, type) else "number"
        raise InvalidNetworkConfig(f"invalid plugin config: {key} must be a {name}", repr(value))
    if isinstance(value, str):
        _text(value, key)
    return value


def _text(value: str, key: str) -> str:
    """A config string that can be used: a path, a name or an address (`encodable_text`)."""
    try:
        return encodable_text(value)
    except BadValue as exc:
        raise InvalidNetworkConfig(f"invalid plugin config: {key}: {exc}", repr(value)) from None


def _string_list(value: Any, key: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):  # tolerated: "a,b" as written by some hand-made configs
        return frozenset(v for v in value.split(",") if v)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidNetworkConfig(
            f"invalid plugin config: {key} must be a list of strings", repr(value)
        )
    return frozenset(_text(v, key) for v in value)


def _choice(value: str, key: str, parse: Any) -> str:
    try:
        return str(parse(value))
    except BadValue as exc:
        raise InvalidNetworkConfig(f"invalid plugin config: {key}: {exc}", repr(value)) from None


def _positive(value: float, key: str) -> float:
    if value <= 0:
        raise InvalidNetworkConfig(f"invalid plugin config: {key} must be > 0", repr(value))
    return value


def parse_plugin_config(conf: dict[str, Any]) -> PluginConfig:
    """Build the PluginConfig from a decoded, skel-validated network config."""
    kube = _typed(conf, "kubernetes", dict, {})
    level = _typed(conf, "plugin_log_level", str, "") or _typed(
        conf, "log_level", str, _DEFAULTS["log_level"])
    level = _choice(level, "plugin_log_level", log_level)
    run_dir = _typed(conf, "cni_agent_run_dir", str, "")
    legacy_kubeconfig = _typed(kube, "kubeconfig", str, "")
    kubeconfig = (
        f"{run_dir}/{KUBECONFIG_NAME}" if run_dir
        else legacy_kubeconfig or f"{DEFAULT_RUN_DIR}/{KUBECONFIG_NAME}"
    )
    run_dir = run_dir or DEFAULT_RUN_DIR
    if "exclude_namespaces" in conf:
        excluded = _string_list(conf["exclude_namespaces"], "exclude_namespaces")
    else:
        excluded = _string_list(kube.get("exclude_namespaces"), "kubernetes.exclude_namespaces")
    intercept = _typed(kube, "intercept_type", str, "iptables")
    if intercept not in ("", "iptables"):
        raise InvalidNetworkConfig(
            "invalid plugin config: kubernetes.intercept_type must be \"iptables\"", repr(intercept)
        )
    backend = _choice(_typed(conf, "iptables_backend", str, _DEFAULTS["iptables_backend"]),
                      "iptables_backend", _backend)
    prev = conf.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise InvalidNetworkConfig("invalid plugin config: prevResult must be an object", "")
    return PluginConfig(
        cni_version=str(conf.get("cniVersion") or "0.1.0"),
        name=str(conf["name"]),
        log_level=level,
        cni_agent_run_dir=run_dir,
        kubeconfig=kubeconfig,
        exclude_namespaces=excluded,
        pod_namespace=_typed(conf, "pod_namespace", str, ""),
        log_uds_address=_typed(conf, "log_uds_address", str, "") or f"{run_dir}/log.sock",
        pod_lookup_attempts=int(_positive(
            _typed(conf, "pod_lookup_attempts", int, _DEFAULTS["pod_lookup_attempts"]),
            "pod_lookup_attempts")),
        pod_lookup_interval=float(_typed(conf, "pod_lookup_interval_seconds", (int, float),
                                         _DEFAULTS["pod_lookup_interval"])),
        pod_lookup_deadline=_positive(
            float(_typed(conf, "pod_lookup_deadline_seconds", (int, float),
                         _DEFAULTS["pod_lookup_deadline"])),
            "pod_lookup_deadline_seconds"),
        iptables_backend=backend,
        native_nftables=_typed(conf, "native_nftables", bool, _DEFAULTS["native_nftables"]),
        nftables_backend=_choice(
            _typed(conf, "nftables_backend", str, _DEFAULTS["nftables_backend"]),
            "nftables_backend", _nft_backend),
        agent_serve=_typed(conf, "agent_serve", bool, _DEFAULTS["agent_serve"]),
        agent_serve_timeout=_positive(
            float(_typed(conf, "agent_serve_timeout_seconds", (int, float),
                         _DEFAULTS["agent_serve_timeout"])),
            "agent_serve_timeout_seconds"),
        prev_result=prev,
    )
