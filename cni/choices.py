"""The names the plugin's network config and the components' environment settings share.

Defined here, not in `cni.settings`, so the plugin's config parser can use them without
importing the settings model (which pulls in `pathlib`: milliseconds on every pod start).
"""

from __future__ import annotations

from cni import wire
from cni.values import one_of

BACKENDS = ("auto", "nft", "legacy", "python-iptables")
"""The rule backends: `auto` detects nft or legacy per netns as upstream does, `nft` and
`legacy` force one of the iptables binaries, `python-iptables` programs legacy tables
in-process (hosts without iptables binaries)."""

NFTABLES_BACKENDS = ("auto", "libnftables", "nft")
"""How native nftables mode talks to nftables: `libnftables` in-process (bundled with the
frozen plugin, so no `nft` binary is needed), the host's `nft -f -`, or `auto` (the library,
else the binary)."""

PLUGIN_LOG_LEVELS = ("debug", "info", "warn", "error", "none")
log_level = one_of(PLUGIN_LOG_LEVELS, fold_case=True, aliases={"warning": "warn"})
"""The plugin's log levels; any case, and `warning` for `warn`."""

DEFAULT_RUN_DIR = wire.DEFAULT_RUN_DIR
"""Upstream's CNI_AGENT_RUN_DIR (defined with the thin client, which needs it without this
module's imports)."""
