"""The settings model: one definition per environment variable, read through one code path.

A `Setting` holds upstream's variable name, the typed default, the parser of its value type
(`cni.values`), the doc line and where the setting comes from (upstream, or ours). Each
component defines its own settings next to its config class (`installer.config.SETTINGS`,
`node_daemon.config.SETTINGS`); the few that more than one component reads are defined here,
once, so the installer and the agent can never read them differently. The docs tables are
rendered from these definitions (`markdown_table`) and a test keeps docs/installer.md and
docs/node-daemon.md equal to them.

Reading rules, the same for every setting: a value that is not UTF-8 text, or holds a NUL, is a
`SettingError` (`cni.values.encodable_text`: a setting goes into paths, config files, logs and
requests); an unset
variable, or one holding only whitespace, takes the default (as viper does: it ignores empty
variables); otherwise the trimmed text is parsed and a bad value is a `SettingError` naming the
variable and the value. A few free-text
settings (`keep_empty`) keep their text as given, so that `""` can mean "any".

The plugin imports this module on every call: nothing here imports more than `cni.values`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from cni.choices import (
    BACKENDS,
    DEFAULT_RUN_DIR,
    NFTABLES_BACKENDS,
    PLUGIN_LOG_LEVELS,
    log_level,
)
from cni.values import BadValue, encodable_text, go_bool, names, one_of, path, text

UPSTREAM = "upstream"
OURS = "ours"

__all__ = ["BACKENDS", "NFTABLES_BACKENDS", "PLUGIN_LOG_LEVELS", "log_level"]  # cni.choices


class SettingError(ValueError):
    """An environment variable holds a value that cannot be used; the message names both."""


class Setting(NamedTuple):
    """One environment variable, defined once (a NamedTuple: the plugin must not import
    `dataclasses`)."""

    name: str
    """Upstream's variable name (ours when upstream has no such setting)."""
    default: Any
    """The typed value when the variable is unset or empty."""
    parse: Callable[[str], Any]
    """The value type's parser from `cni.values`; raises `BadValue`."""
    doc: str
    """One line (markdown) for the docs table."""
    origin: str = UPSTREAM
    """`upstream`, `ours`, or a qualified form (`upstream <= 1.22`, ...)."""
    shown_default: str = ""
    """How the docs show the default, when the plain value would not say enough."""
    keep_empty: bool = False
    """Free text kept as given, `""` included (e.g. `""` = any init container)."""

    def shown(self) -> str:
        """The default as the docs show it (markdown)."""
        return self.shown_default or _shown(self.default)

    def read(self, env: Mapping[str, str]) -> Any:
        """The typed value of this setting in `env`."""
        raw = env.get(self.name)
        if raw is None:
            return self.default
        try:
            encodable_text(raw)
        except BadValue as exc:
            raise SettingError(f"{self.name}: {exc}") from None
        if self.keep_empty:
            return raw
        text = raw.strip()
        if not text:
            return self.default
        try:
            return self.parse(text)
        except BadValue as exc:
            raise SettingError(f"{self.name}={text!r}: {exc}") from None


def read_settings(env: Mapping[str, str], settings: Iterable[Setting]) -> dict[str, Any]:
    """Every setting's typed value by variable name; the first bad value raises."""
    return {s.name: s.read(env) for s in settings}


_backend = one_of(BACKENDS, fold_case=True)


def _forced_backend(value: str) -> str:
    """A backend name; `auto` is the same as unset (detect), so it reads as ""."""
    name = _backend(value)
    return "" if name == "auto" else name


# --- read by more than one component ------------------------------------------------------------

CNI_AGENT_RUN_DIR = Setting(
    "CNI_AGENT_RUN_DIR", Path(DEFAULT_RUN_DIR), path,
    "Holds the plugin's `istio-cni-kubeconfig`, the agent's `log.sock` and the plugin's "
    "`istio-cni.log`. It is written into the plugin config, so it must be the same path on "
    "the host and in the container.")
FORCE_IPTABLES_BINARY = Setting(
    "FORCE_IPTABLES_BINARY", "", _forced_backend,
    "`legacy` or `nft` (ours: also `python-iptables`, for hosts without iptables binaries). "
    "Written as the plugin's `iptables_backend` and used by repair and drift. Empty (or "
    "`auto`): detect the backend per pod netns, as upstream.",
    origin="upstream name, ours in the plugin config")

POD_NAMESPACE = Setting(
    "POD_NAMESPACE", "", text,
    "The agent's own namespace (downward API). Its pods pass through the plugin "
    "(`pod_namespace`); its own pod, its DaemonSet (looked up on shutdown) and the plugin's "
    "ServiceAccount are there.", shown_default='`""` (downward API)')

EXCLUDE_NAMESPACES = Setting(
    "EXCLUDE_NAMESPACES", (), names,
    "Comma-separated namespaces the plugin never touches. Written to the plugin config as "
    "`exclude_namespaces`; repair and the drift check leave their pods alone too.",
    shown_default='`""` (chart: `kube-system`)')

NATIVE_NFTABLES = Setting(
    "NATIVE_NFTABLES", False, go_bool,
    "Native nftables mode: written as the plugin's `native_nftables` (pods get upstream's "
    "`inet istio-proxy-*` tables instead of iptables rules) and used by repair and drift.")
NFTABLES_BACKEND = Setting(
    "NFTABLES_BACKEND", "auto", one_of(NFTABLES_BACKENDS, fold_case=True),
    "How native nftables mode talks to nftables: `libnftables` (in-process; bundled with the "
    "frozen plugin), `nft` (the host's `nft -f -`) or `auto` (the library, else the binary). "
    "Written as the plugin's `nftables_backend` when not `auto`; used by repair and drift.",
    origin=OURS)


def markdown_table(settings: Iterable[Setting]) -> str:
    """The docs table of `settings`: variable, default, meaning, origin."""
    rows = ["| Variable | Default | Meaning | Origin |", "|---|---|---|---|"]
    rows += [f"| `{s.name}` | {s.shown()} | {s.doc} | {s.origin} |" for s in settings]
    return "\n".join(rows) + "\n"


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value in ("", ()):
        return '`""`'
    if isinstance(value, tuple):
        return "`" + ",".join(str(v) for v in value) + "`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"
