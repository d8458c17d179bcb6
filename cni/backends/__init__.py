"""Rule backends: the one interface through which a pod's packet-filter rules are programmed,
compared and removed. The plugin's ADD and CHECK, the agent's repair and drift check, and
`explain` all hold a `Backend` and call only these methods; none reaches into an implementation.

A backend works on the netns the calling thread has entered (`cni.netns.in_netns`), takes the
pod's whole `RuleSet` (every family: a backend decides how a family maps onto its tables), and
reports in `StateDiff` text. An instance is meant for one visit to one netns (it may cache what
it detected there). Routes and addresses (TPROXY, `::6`) are not a backend's business: they are
the same whatever programs the filter (`cni.apply`).

Two modes, one interface. iptables mode (a `RuleSet`): `restore` runs the host's
`iptables-restore` (nft or legacy, chosen like upstream) and `libiptc` programs legacy tables
in-process through python-iptables (hosts with no iptables binaries); both share
`cni.backends.iptables`. Native nftables mode (upstream's `native_nftables`, an `NftRuleSet`):
`nftables` programs upstream's `inet istio-proxy-*` tables through libnftables or `nft -f -`.
Which one a caller gets is a `RuleMode`, chosen once from the config (the plugin's keys, the
agent's environment); a backend says which rule set it takes (`native_nftables`).

Warm or cold (`RuleMode.warm`): the plugin's process detects everything per pod, as upstream
does (it lives for one pod); the node agent keeps what is the node's and reads the rest
in-process (`cni.backends.node_facts`), deciding exactly as the cold way would.

Hot path: nothing heavy is imported here; each backend module is imported only when selected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from cni.choices import BACKENDS, NFTABLES_BACKENDS

if TYPE_CHECKING:
    from cni.backends.node_facts import NodeFacts
    from cni.live_state import StateDiff
    from cni.nft_ruleset import NftRuleSet
    from cni.ruleset import RuleSet

    AnyRuleSet = RuleSet | NftRuleSet
else:
    AnyRuleSet = Any

IPTABLES_MODE = "iptables"
NFTABLES_MODE = "native nftables"


class RuleMode(NamedTuple):
    """Which rules a pod gets and what programs them (a NamedTuple: hot path)."""

    native_nftables: bool = False
    """Upstream's `native_nftables`: upstream's nftables tables instead of iptables rules."""
    iptables_backend: str = BACKENDS[0]
    """iptables mode's backend, one of `cni.settings.BACKENDS`."""
    nftables_backend: str = NFTABLES_BACKENDS[0]
    """nftables mode's way to talk to nftables, one of `cni.settings.NFTABLES_BACKENDS`."""
    warm: bool = False
    """A long-lived process (the node agent): what does not change per pod is learned once and
    kept (`cni.backends.node_facts`), and the per-netns facts are read in-process, with the
    same decisions as a cold detection. Off in the plugin's own process, which runs once."""

    @property
    def label(self) -> str:
        """`iptables` or `native nftables`, as messages name the mode."""
        return NFTABLES_MODE if self.native_nftables else IPTABLES_MODE

    def other(self) -> RuleMode:
        """The other mode, with the same backend choices (a node switched between modes)."""
        return self._replace(native_nftables=not self.native_nftables)


def rule_mode(choice: str | RuleMode) -> RuleMode:
    """A mode from a mode or an iptables backend name (iptables mode)."""
    return choice if isinstance(choice, RuleMode) else RuleMode(iptables_backend=choice)


class Backend(Protocol):
    native_nftables: bool
    """Which rule set `program`, `check` and `reset` take: `NftRuleSet` when True, else
    `RuleSet`."""

    def program(self, ruleset: AnyRuleSet) -> bool:
        """Make the netns hold `ruleset`: idempotent (True when anything was added), all or
        nothing across families; other state of ours is refused with `RulesConflict` (nothing
        changed) in iptables mode, replaced in the same transaction in nftables mode (as
        upstream does); foreign rules are never touched. The other mode's state is not
        looked at (`cni.apply`)."""

    def check(self, ruleset: AnyRuleSet) -> StateDiff:
        """What the netns lacks (`missing`) or has beyond (`extra`) `ruleset`; `clean` when
        it holds nothing of ours at all."""

    def reset(self, ruleset: AnyRuleSet) -> None:
        """Remove everything of this mode's that is ours (whatever rules it holds now, per
        family of `ruleset`), so that `program` starts from clean; foreign rules stay."""

    def replace(self, ruleset: AnyRuleSet) -> bool:
        """Make the netns hold exactly `ruleset` whatever of ours it holds now, in one atomic
        step (one commit per table and family in iptables mode, one transaction in nftables
        mode), so a running pod is never without redirection on the way; foreign rules are
        never touched; True when anything changed. The fix of repair and drift: unlike
        `program`, other state of ours is not a conflict but what is replaced."""


def select_backend(choice: str | RuleMode, where: str = "") -> Backend:
    """The backend for a mode, or for an iptables backend name (one of BACKENDS); `where`
    (the netns path) goes in messages."""
    mode = rule_mode(choice)
    if mode.native_nftables:
        if mode.nftables_backend not in NFTABLES_BACKENDS:
            raise ValueError(f"unknown nftables backend {mode.nftables_backend!r}: expected one "
                             f"of {', '.join(NFTABLES_BACKENDS)}")
        from cni.backends.nftables import NftablesBackend

        return NftablesBackend(mode.nftables_backend, where, _facts(mode))
    name = mode.iptables_backend
    if name == "python-iptables":
        from cni.backends.libiptc import LibiptcBackend

        return LibiptcBackend(where)
    if name in ("auto", "nft", "legacy"):
        from cni.backends.restore import RestoreBackend

        return RestoreBackend(None if name == "auto" else name, where, _facts(mode))
    raise ValueError(f"unknown rule backend {name!r}: expected one of {', '.join(BACKENDS)}")


def _facts(mode: RuleMode) -> NodeFacts | None:
    """The process's node facts for a warm mode, None for a cold one."""
    if not mode.warm:
        return None
    from cni.backends.node_facts import NODE

    return NODE
