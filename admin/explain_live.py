"""`explain NAMESPACE/POD`: the plugin's decision plus what only a live cluster and node know.

Adds to the pure `explain_pod`: whether the repair controller sees the pod as broken (and why),
and, when the pod runs on this node, whether its live netns holds exactly the rules its spec
requires (the drift check's comparison). Formatting stays pure (`format_live_*`).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from admin.explain import Explanation, explain_pod, format_json, format_text
from cni.backends import RuleMode, rule_mode
from cni.errors import CNIError
from cni.podinfo import pod_ips
from node_daemon.actions import pod_key, pod_uid
from node_daemon.broken import Verdict, diagnose
from node_daemon.config import RepairConfig
from node_daemon.netns_finder import NetnsFinder


@dataclass(frozen=True)
class LiveReport:
    explanation: Explanation
    verdict: Verdict
    node: str
    netns: str = ""
    """"" when the pod's IP is in no netns on this node."""
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    netns_error: str = ""
    other_mode: str = ""
    """The other mode, when the netns holds its state (a node switched between modes)."""

    @property
    def live_state(self) -> str:
        if self.netns_error:
            return "unknown"
        if not self.netns:
            return "not on this node"
        return "in sync" if not self.missing and not self.extra else "differs"


def explain_live(pod: dict[str, Any], cfg: RepairConfig, finder: NetnsFinder | None,
                 backend: str | RuleMode = "auto") -> LiveReport:
    """`explain_pod` with the pod's own first IP deciding IPv6, the repair verdict, and the
    live netns compared through the pipeline (facts read from the netns itself)."""
    ips = pod_ips(pod)
    ipv6 = bool(ips) and _is_ipv6(ips[0])
    ex = explain_pod(pod, ipv6=ipv6, native_nftables=rule_mode(backend).native_nftables)
    verdict = diagnose(pod, cfg)
    node = str((pod.get("spec") or {}).get("nodeName", ""))
    if finder is None or ex.redirect is None or not ips:
        return LiveReport(ex, verdict, node)
    try:
        uid = pod_uid(pod)
        with finder.scan(ips, {uid: pod_key(pod)}) as found:
            ref = found.choose(uid, ips)  # by UID, then IP: NetnsUnproven when unproven
            if ref is None or ref.held is None:
                return LiveReport(ex, verdict, node)
            from cni.pipeline import check_pod

            # the netns the scan held, proven again (identity, the pod's IP) before it is read
            diff = check_pod(ref.held.expecting(ips), ex.redirect, backend)
    except (CNIError, OSError) as exc:  # (NetnsReturnFailed is neither: it ends the command)
        msg = exc.msg if isinstance(exc, CNIError) else str(exc)
        return LiveReport(ex, verdict, node, netns_error=msg)
    return LiveReport(ex, verdict, node, ref.where, diff.missing, diff.extra,
                      other_mode=diff.other_mode)


def _is_ipv6(ip: str) -> bool:
    """The pod IP's family; an IP that does not parse counts as IPv4 (the live check, which
    reads the netns itself, is what tells)."""
    try:
        return ipaddress.ip_address(ip).version == 6
    except ValueError:
        return False


def format_live_text(r: LiveReport) -> str:
    lines = [format_text(r.explanation).rstrip("\n"), f"node: {r.node or '(unscheduled)'}",
             f"repair: {'BROKEN' if r.verdict.broken else 'not broken'}: "
             + "; ".join(r.verdict.reasons)]
    state = r.live_state
    where = f" ({r.netns})" if r.netns else ""
    lines.append(f"live rules: {state}{where}" + (f": {r.netns_error}" if r.netns_error else "")
                 + (f" (programmed in {r.other_mode} mode)" if r.other_mode else ""))
    lines += [f"  missing: {m}" for m in r.missing] + [f"  unexpected: {e}" for e in r.extra]
    return "\n".join(lines) + "\n"


def format_live_json(r: LiveReport) -> str:
    obj = json.loads(format_json(r.explanation))
    obj.update(node=r.node, broken=r.verdict.broken, broken_reasons=list(r.verdict.reasons),
               live_rules={"state": r.live_state, "netns": r.netns, "missing": list(r.missing),
                           "unexpected": list(r.extra), "error": r.netns_error,
                           "other_mode": r.other_mode})
    return json.dumps(obj, indent=2) + "\n"
