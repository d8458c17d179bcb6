"""Rule backends: the one interface through which a pod's packet-filter rules are programmed,
compared and removed. The plugin's ADD and CHECK, the agent's repair and drift check, and
`explain` all hold a `Backend` and call only these methods; none reaches into an implementation.

A backend works on the netns the calling thread has entered (`cni.netns.in_netns`), takes the
pod's whole `RuleSet` (every family: a backend decides how a family maps onto its tables), and
reports in `StateDiff` text. An instance is meant for one visit to one netns (it may cache what
it detected there). Routes and addresses (TPROXY, `::6`) are not a backend's business: they are
the same whatever programs the filter (`cni.apply`).

Implementations: `restore` runs the host's `iptables-restore` (nft or legacy, chosen like
upstream) and `libiptc` programs legacy tables in-process through python-iptables (hosts with
no iptables binaries); both share `cni.backends.iptables`. A native nftables backend implements
the same three methods over its own tables and is added to `select_backend`.

Hot path: nothing heavy is imported here; each backend module is imported only when selected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from cni.choices import BACKENDS

if TYPE_CHECKING:
    from cni.live_state import StateDiff
    from cni.ruleset import RuleSet


class Backend(Protocol):
    def program(self, ruleset: RuleSet) -> bool:
        """Make the netns hold `ruleset`: idempotent (True when anything was added), all or
        nothing across families, and `RulesConflict` (nothing changed) when the netns holds
        other state of ours; foreign rules are never touched."""

    def check(self, ruleset: RuleSet) -> StateDiff:
        """What the netns lacks (`missing`) or has beyond (`extra`) `ruleset`; `clean` when
        it holds nothing of ours at all."""

    def reset(self, ruleset: RuleSet) -> None:
        """Remove everything of ours (whatever rules it holds now, per family of `ruleset`),
        so that `program` starts from clean; foreign rules stay."""


def select_backend(name: str, where: str = "") -> Backend:
    """The backend called `name` (one of BACKENDS); `where` (the netns path) goes in messages."""
    if name == "python-iptables":
        from cni.backends.libiptc import LibiptcBackend

        return LibiptcBackend(where)
    if name in ("auto", "nft", "legacy"):
        from cni.backends.restore import RestoreBackend

        return RestoreBackend(None if name == "auto" else name, where)
    raise ValueError(f"unknown rule backend {name!r}: expected one of {', '.join(BACKENDS)}")
