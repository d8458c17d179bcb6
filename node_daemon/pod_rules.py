"""A live pod's rules: what they should be, and bringing its netns back to exactly that.

The plugin's pure core decides the rules (`extract_pod_info` → `redirect_from_pod` →
`detect_ipv6` in the netns → `build_ruleset`), so repair and drift program byte-for-byte what
the ADD would have. Unlike the ADD, which refuses a netns holding other ISTIO_* rules, repair owns
the outcome: a netns whose rules were flushed or altered is reset (our jumps and ISTIO_* chains
removed in one atomic `iptables-restore --noflush` per family) and programmed again.

Enters the pod netns on the calling thread: call from one worker thread at a time.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Any

from cni import apply, netns
from cni.backends.restore import POD_LOCKFILE, RestoreBackend, run
from cni.errors import RulesApplyFailed
from cni.live_state import CHAIN_PREFIX, StateDiff, parse_save, wanted_state
from cni.podinfo import extract_pod_info
from cni.redirect import redirect_from_pod, to_iptables_config
from cni.rules import build_ruleset
from cni.ruleset import BUILTIN_CHAINS, RuleSet


@dataclass(frozen=True)
class RulesOutcome:
    state: str
    """in_sync | programmed (netns had none) | repaired (reset, then programmed) | drifted
    (differs; left alone because fixing was not asked for)."""
    diff: StateDiff

    @property
    def changed(self) -> bool:
        return self.state in ("programmed", "repaired")

    def summary(self) -> str:
        return f"{len(self.diff.missing)} missing, {len(self.diff.extra)} unexpected"


def wanted_ruleset(pod: dict[str, Any], netns_path: str) -> RuleSet:
    """The rules the plugin's ADD would program for this pod in this netns."""
    redirect = redirect_from_pod(extract_pod_info(pod))
    ipv6 = apply.detect_ipv6(netns_path, redirect.dual_stack)
    return build_ruleset(to_iptables_config(redirect, enable_ipv6=ipv6))


def reconcile_rules(netns_path: str, ruleset: RuleSet, backend: str = "auto",
                    fix: bool = True) -> RulesOutcome:
    """Compare the netns with `ruleset`; with `fix`, make it hold exactly `ruleset`."""
    diff = apply.check(netns_path, ruleset, backend)
    if not diff.missing and not diff.extra:
        return RulesOutcome("in_sync", diff)
    if not fix:
        return RulesOutcome("drifted", diff)
    if diff.clean:
        apply.program(netns_path, ruleset, backend)
        return RulesOutcome("programmed", diff)
    reset_rules(netns_path, ruleset, backend)
    apply.program(netns_path, ruleset, backend)
    return RulesOutcome("repaired", diff)


def reset_rules(netns_path: str, ruleset: RuleSet, backend: str = "auto") -> None:
    """Remove our rules from built-in chains and every ISTIO_* chain, per family, atomically."""
    force = None if backend == "auto" else ("legacy" if backend == "python-iptables" else backend)
    families = [False] if ruleset.v6 is None else [False, True]
    with netns.in_netns(netns_path):
        restore = RestoreBackend(force, netns_path)
        for ipv6 in families:
            fam = ruleset.v6 if ipv6 else ruleset.v4
            assert fam is not None
            payload = reset_payload(restore.save(ipv6), wanted_state(fam))
            if not payload:
                continue
            flavor = restore.flavor(ipv6)
            env = dict(os.environ, XTABLES_LOCKFILE=POD_LOCKFILE)
            r = run(restore.restore_argv(flavor), stdin=payload, env=env)
            if r.rc != 0:
                raise RulesApplyFailed(
                    f"reset ISTIO rules with {flavor.restore_bin} in {netns_path}: exit {r.rc}: "
                    f"{r.err.strip()}", details=payload)


def reset_payload(save_text: str, wanted: dict[str, dict[str, list[str]]]) -> str:
    """Pure: the `iptables-restore --noflush` text removing our state from a `*-save` dump.

    In built-in chains a rule is ours when it jumps to an ISTIO_* chain or is one we want
    there (e.g. DNS conntrack zones in raw); foreign rules stay. ISTIO_* chains are all ours:
    flushed first (they reference each other), then deleted.
    """
    out: list[str] = []
    for table, chains in parse_save(save_text).items():
        want = wanted.get(table, {})
        deletes: list[str] = []
        for chain, lines in chains.items():
            if chain not in BUILTIN_CHAINS:
                continue
            for line in lines:
                words = shlex.split(line)
                jumps_ours = any(w in ("-j", "-g") and i + 1 < len(words)
                                 and words[i + 1].startswith(CHAIN_PREFIX)
                                 for i, w in enumerate(words))
                if jumps_ours or line in want.get(chain, []):
                    deletes.append("-D " + line[len("-A "):])
        ours = [c for c in chains if c.startswith(CHAIN_PREFIX)]
        if not deletes and not ours:
            continue
        out.append(f"*{table}")
        out.extend(deletes)
        out.extend(f"-F {c}" for c in ours)
        out.extend(f"-X {c}" for c in ours)
        out.append("COMMIT")
    return "".join(line + "\n" for line in out)
