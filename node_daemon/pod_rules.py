"""A live pod's rules brought back to exactly what its spec requires (repair and drift).

The rules come from the plugin's own pod pipeline (`cni.pipeline`), so repair and drift program
byte-for-byte what the ADD would have. Unlike the ADD, which refuses a netns holding other
ISTIO_* rules, repair owns the outcome: a netns whose rules were flushed or altered gets
exactly the wanted rules in one atomic replace (`PodNetns.replace`: one commit per table, one
nftables transaction), in one visit to the netns, through the configured backend only
(python-iptables needs no iptables binary for any of it). Never a reset then a program: the pod
is running, and between the two its connections would skip the proxy (conntrack keeps them
so for their lifetime). A netns programmed in the other mode (a node switched between iptables
and native nftables mode) is the same case: its check reports the other mode's state, and the
replace removes it once the configured mode's rules are in place (`cni.apply`).

Enters the pod netns on the calling thread: call from one worker thread at a time. The netns is
the one the caller's /proc scan found, held by descriptor (`cni.held_netns.HeldNetns`, in the
parameter still named `netns_path`), never a path that may name another pod's netns by now: it
is entered by that descriptor and proven (same nsfs inode, the pod's IP inside) before anything
is read or written; `NetnsChanged` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from cni import pipeline
from cni.backends import RuleMode
from cni.held_netns import HeldNetns
from cni.live_state import StateDiff
from cni.redirect import Redirect


class RulesState(StrEnum):
    """Where a pod netns ended up; the value is the text used in messages."""

    IN_SYNC = "in_sync"
    PROGRAMMED = "programmed"
    """The netns had none of our rules; now it has them."""
    REPAIRED = "repaired"
    """It had other rules of ours: replaced by the wanted ones in one step."""
    DRIFTED = "drifted"
    """It differs and was left alone, because fixing was not asked for."""


@dataclass(frozen=True)
class RulesOutcome:
    state: RulesState
    diff: StateDiff

    @property
    def changed(self) -> bool:
        return self.state in (RulesState.PROGRAMMED, RulesState.REPAIRED)

    def summary(self) -> str:
        text = f"{len(self.diff.missing)} missing, {len(self.diff.extra)} unexpected"
        if self.diff.other_mode:
            text += f"; programmed in {self.diff.other_mode} mode"
        return text


def reconcile_rules(netns_path: HeldNetns, redirect: Redirect, backend: str | RuleMode = "auto",
                    fix: bool = True) -> RulesOutcome:
    """Compare the pod netns with what `redirect` requires; with `fix`, make it hold exactly
    that, in one atomic replace of whatever of ours it holds."""
    with pipeline.visit(netns_path, redirect, backend) as pod_ns:
        diff = pod_ns.check()
        if not diff.missing and not diff.extra:
            return RulesOutcome(RulesState.IN_SYNC, diff)
        if not fix:
            return RulesOutcome(RulesState.DRIFTED, diff)
        pod_ns.replace()
    return RulesOutcome(RulesState.PROGRAMMED if diff.clean else RulesState.REPAIRED, diff)
