"""The pod pipeline: pod → decision → redirect spec → netns facts → rule set → apply/check.

Every caller walks the same stages through these functions, so what one of them does for a pod
is what all of them would: the plugin's ADD and CHECK, the agent's repair and drift check,
`explain` (which stops before the netns and supplies the IPv6 fact itself) and `rules` (which
starts at the rule set, from flags). The stages stay in their own pure modules (`podinfo`,
`decision`, `redirect`, `rules`); this module only composes them, and does the one impure step:
entering the pod netns once, reading its facts once, and handing back a `PodNetns` whose rule
set was built from those facts, ready to program, check or reset.

Modes: the caller's `backend` is a `cni.backends.RuleMode` (or, for iptables mode, a backend
name): iptables mode builds a `RuleSet`, native nftables mode an `NftRuleSet`, both from the
same redirect spec and netns facts, and the pod netns is told about the other mode for a node
switched between them (`cni.apply.OtherMode`).

Hot path: a pod the decision skips (most pods of most clusters) pays for the decision's imports
only; the later stages are imported by the functions that run them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cni.decision import Decision, decide
from cni.podinfo import PodInfo, extract_pod_info

if TYPE_CHECKING:  # the stages after the decision are imported only when a pod gets that far
    from cni.apply import PodNetns
    from cni.backends import AnyRuleSet, Backend, RuleMode
    from cni.held_netns import HeldNetns
    from cni.live_state import StateDiff
    from cni.redirect import Redirect


def decide_pod(pod: Any) -> tuple[PodInfo, Decision]:
    """Pod JSON → what the decision needs, and the decision (`InvalidPod` if not a Pod)."""
    info = extract_pod_info(pod)
    return info, decide(info)


def plan(pod: Any) -> tuple[PodInfo, Decision, Redirect | None]:
    """`decide_pod`, plus the validated redirect spec when the pod is to be redirected
    (`InvalidAnnotation` on a bad value)."""
    from cni.redirect import redirect_from_pod

    info, decision = decide_pod(pod)
    return info, decision, redirect_from_pod(info) if decision.redirect else None


def rules_for(redirect: Redirect, ipv6: bool, native_nftables: bool = False) -> AnyRuleSet:
    """The rule set for a redirect spec, given whether the pod gets IPv6 rules: upstream's
    iptables rules, or with `native_nftables` its nftables tables. Pure."""
    from cni.redirect import to_iptables_config

    cfg = to_iptables_config(redirect, enable_ipv6=ipv6)
    if native_nftables:
        from cni.nft_rules import build_nft_ruleset

        return build_nft_ruleset(cfg)
    from cni.rules import build_ruleset

    return build_ruleset(cfg)


def here(netns_path: str, redirect: Redirect,
         backend: str | RuleMode | Backend = "auto") -> PodNetns:
    """The pod netns the calling thread is in: facts read once, rule set built from them."""
    from cni import netns
    from cni.apply import OtherMode, PodNetns
    from cni.backends import RuleMode, rule_mode, select_backend

    facts = netns.read_facts()
    ipv6 = facts.ipv6(redirect.dual_stack)
    if isinstance(backend, str | RuleMode):
        mode = rule_mode(backend)
        chosen: Backend = select_backend(mode, netns_path)
    else:
        mode, chosen = RuleMode(native_nftables=backend.native_nftables), backend
    other = mode.other()
    return PodNetns(
        netns_path, rules_for(redirect, ipv6, mode.native_nftables), chosen, ipv6,
        OtherMode(other, netns_path, lambda: rules_for(redirect, ipv6, other.native_nftables)))


@contextmanager
def visit(netns_path: str | HeldNetns, redirect: Redirect,
          backend: str | RuleMode | Backend = "auto") -> Iterator[PodNetns]:
    """Enter the pod netns once (this thread) and yield it as `here` sees it.

    A path (CNI_NETNS) is opened and entered now; a `HeldNetns` (what the node agent found
    earlier) is entered by its descriptor and proven to be the netns that was found, and to
    hold the pod's IP, before anything is read or written (`cni.held_netns.in_held_netns`)."""
    if isinstance(netns_path, str):
        from cni import netns

        with netns.in_netns(netns_path):
            yield here(netns_path, redirect, backend)
    else:
        from cni.held_netns import in_held_netns

        with in_held_netns(netns_path):
            yield here(netns_path.where, redirect, backend)


def program_pod(netns_path: str | HeldNetns, redirect: Redirect,
                backend: str | RuleMode = "auto") -> str:
    """Program the pod netns for this spec: "applied" or "already-programmed"."""
    with visit(netns_path, redirect, backend) as pod_ns:
        return pod_ns.program()


def check_pod(netns_path: str | HeldNetns, redirect: Redirect,
              backend: str | RuleMode = "auto") -> StateDiff:
    """How the pod netns differs from what this spec requires."""
    with visit(netns_path, redirect, backend) as pod_ns:
        return pod_ns.check()
