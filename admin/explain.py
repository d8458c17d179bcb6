"""Why a pod is or is not redirected, and with which rules: pure formatting for `explain`.

Runs the plugin's own pod pipeline (`cni.pipeline`) up to the rule set, so what `explain`
prints is what the plugin would do for the same pod; the one netns fact (does the pod get IPv6
rules?) is given by the caller instead of read from a netns, and so is the mode (the plugin
config's `native_nftables`, which the installer writes from `NATIVE_NFTABLES`): in native
nftables mode the rules shown are the nftables transaction, exactly as fed to `nft -f`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cni.decision import Decision
from cni.errors import CNIError
from cni.nft_ruleset import NftRuleSet
from cni.pipeline import decide_pod, rules_for
from cni.podinfo import PodInfo
from cni.redirect import Redirect, redirect_from_pod
from cni.ruleset import RuleSet


@dataclass(frozen=True)
class Explanation:
    pod: PodInfo
    decision: Decision
    redirect: Redirect | None = None
    ruleset: RuleSet | NftRuleSet | None = None
    error: str = ""


def explain_pod(pod_json: dict[str, Any], ipv6: bool = False,
                native_nftables: bool = False) -> Explanation:
    """The decision, and for a redirected pod the redirect spec and rule set (or the error),
    of the mode the plugin config selects.

    A pod that is not the shape of a Pod raises `InvalidPod` (nothing to explain)."""
    info, decision = decide_pod(pod_json)
    if not decision.redirect:
        return Explanation(info, decision)
    try:
        redirect = redirect_from_pod(info)
        ruleset = rules_for(redirect, ipv6, native_nftables)
    except CNIError as exc:
        return Explanation(info, Decision(False, "ADD would fail"), error=exc.msg)
    except ValueError as exc:
        return Explanation(info, Decision(False, "ADD would fail"), error=str(exc))
    return Explanation(info, decision, redirect, ruleset)


def not_a_pod(doc: object) -> str:
    """Why a document given as a pod is not one Pod object ("" when it is one).

    Offline, `explain` takes what `kubectl get pod NAME -o json` writes. A file that is some
    other object (a List, a Deployment, `{}`) would otherwise be explained as a pod without an
    istio-proxy container, "NOT REDIRECTED", which reads as an answer when it is a mistake. The
    shape of the fields the plugin reads is checked by the plugin's own parser (`InvalidPod`).
    """
    if not isinstance(doc, dict):
        return f"holds a JSON {_json_type(doc)}, not a Pod object"
    kind = doc.get("kind")
    if kind != "Pod":
        got = "no kind" if kind is None else f"kind {_short(kind)}"
        hint = " (one pod: kubectl get pod NAME -o json)" if kind == "List" else ""
        return f'not a Pod: {got}, expected "kind": "Pod"{hint}'
    version = doc.get("apiVersion", "v1")
    if version != "v1":
        return f'not a Pod: apiVersion {_short(version)}, expected "v1"'
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        return "not a Pod: no metadata.name"
    return ""


def _json_type(value: object) -> str:
    names = ((bool, "boolean"), (int, "number"), (float, "number"), (str, "string"),
             (list, "array"), (type(None), "null"))
    return next((name for kind, name in names if isinstance(value, kind)), "value")


def _short(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:60] + "..."


def format_restore(ex: Explanation) -> str:
    """What is fed to the tool: the `iptables-restore` payloads, or the `nft -f` transaction."""
    if isinstance(ex.ruleset, NftRuleSet):
        return ex.ruleset.transaction()
    return "" if ex.ruleset is None else ex.ruleset.restore_text()


def format_text(ex: Explanation) -> str:
    verdict = "REDIRECTED" if ex.decision.redirect else "NOT REDIRECTED"
    lines = [f"pod {ex.pod.namespace}/{ex.pod.name}: {verdict}", f"reason: {ex.decision.reason}"]
    if ex.error:
        lines.append(f"error: {ex.error}")
    if ex.redirect is not None:
        r = ex.redirect
        lines += [
            f"mode: {r.mode}; proxy uid/gid: {r.proxy_uid}/{r.proxy_gid}",
            f"inbound ports: include {_show(r.include_inbound_ports)}, "
            f"exclude {_show(r.exclude_inbound_ports)}",
            f"outbound ports: include {_show(r.include_outbound_ports)}, "
            f"exclude {_show(r.exclude_outbound_ports)}",
            f"outbound CIDRs: include {_show(r.include_cidrs)}, exclude {_show(r.exclude_cidrs)}",
            f"DNS capture: {r.dns_capture}; drop invalid: {r.drop_invalid}; "
            f"dual stack: {r.dual_stack}",
        ]
        if r.exclude_interfaces or r.reroute_interfaces:
            lines.append(f"interfaces: exclude {_show(r.exclude_interfaces)}, "
                         f"reroute {_show(r.reroute_interfaces)}")
    if isinstance(ex.ruleset, NftRuleSet):
        lines.append("--- native nftables transaction (nft -f) ---")
        lines.append(ex.ruleset.transaction().rstrip("\n"))
    elif ex.ruleset is not None:
        for fam in ex.ruleset.families():
            lines.append(f"--- {'ip6tables' if fam.ipv6 else 'iptables'}-restore payload ---")
            lines.append(fam.restore_payload().rstrip("\n"))
    if ex.ruleset is not None:
        lines += [f"note: {note}" for note in ex.ruleset.notes]
    return "\n".join(lines) + "\n"


def format_json(ex: Explanation) -> str:
    obj: dict[str, Any] = {
        "pod": f"{ex.pod.namespace}/{ex.pod.name}",
        "redirected": ex.decision.redirect,
        "reason": ex.decision.reason,
    }
    if ex.error:
        obj["error"] = ex.error
    if isinstance(ex.ruleset, NftRuleSet):
        obj["nftables"] = ex.ruleset.transaction()
    elif ex.ruleset is not None:
        obj["payloads"] = {
            ("v6" if f.ipv6 else "v4"): f.restore_payload() for f in ex.ruleset.families()
        }
    return json.dumps(obj, indent=2) + "\n"


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) or "(none)"
    return str(value) or "(none)"
