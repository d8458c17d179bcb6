"""The rule set as data, and its rendering as `iptables-restore` payloads.

Pure: no I/O, no imports beyond the standard library. `cni.rules.build_ruleset` produces a
`RuleSet`; the backends apply it, CHECK compares it with the live netns, `explain` and `rules`
print it. Rendering follows upstream's builder (`BuildV4Restore`) byte for byte: tables in sorted
order (empty ones omitted), `-N` for every non-built-in chain in first-use order (chains that hold
rules first, then chains only jumped to), then the rules in emission order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BUILTIN_CHAINS = frozenset({"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"})
TABLES = ("filter", "mangle", "nat", "raw")

# Our chains, with upstream's names (its tools/istio-iptables/pkg/constants).
ISTIO_INBOUND = "ISTIO_INBOUND"
ISTIO_OUTPUT = "ISTIO_OUTPUT"
ISTIO_OUTPUT_DNS = "ISTIO_OUTPUT_DNS"
ISTIO_REDIRECT = "ISTIO_REDIRECT"
ISTIO_IN_REDIRECT = "ISTIO_IN_REDIRECT"
ISTIO_DIVERT = "ISTIO_DIVERT"
ISTIO_TPROXY = "ISTIO_TPROXY"
ISTIO_DROP = "ISTIO_DROP"
OWN_CHAINS = frozenset({ISTIO_INBOUND, ISTIO_OUTPUT, ISTIO_OUTPUT_DNS, ISTIO_REDIRECT,
                        ISTIO_IN_REDIRECT, ISTIO_DIVERT, ISTIO_TPROXY, ISTIO_DROP})
"""Every chain upstream's rules create; a chain of another name (`ISTIO_CUSTOM`, `ISTIOOUTPUT`)
is never ours, whatever it looks like."""
OWN_TABLES = frozenset({"mangle", "nat", "raw"})
"""The tables upstream's rules use; a chain or rule in another table (`filter`, `security`) is
never ours, even one named like ours."""
IP6_MARKER = "# ip6tables-restore\n"
"""Separates the IPv6 payload in `RuleSet.restore_text` (a comment to iptables-restore)."""


@dataclass(frozen=True)
class Rule:
    """One rule: `params` start with `-A CHAIN` or `-I CHAIN N`, exactly as in the payload."""

    table: str
    chain: str
    params: tuple[str, ...]

    @property
    def position(self) -> int | None:
        """The insert position for `-I CHAIN N`, None for an append."""
        return int(self.params[2]) if self.params[0] == "-I" else None

    @property
    def spec(self) -> tuple[str, ...]:
        """The match and target part, without the `-A CHAIN` / `-I CHAIN N` prefix."""
        return self.params[3:] if self.params[0] == "-I" else self.params[2:]

    @property
    def target(self) -> str | None:
        """The `-j` target when it is the last option pair (as upstream's builder assumes)."""
        if len(self.params) >= 2 and self.params[-2] == "-j":
            return self.params[-1]
        return None

    def text(self) -> str:
        return " ".join(self.params)


@dataclass(frozen=True)
class FamilyRules:
    """All rules of one address family, in emission order."""

    ipv6: bool
    rules: tuple[Rule, ...] = ()

    def tables(self) -> tuple[str, ...]:
        """Tables that have at least one rule, in payload order."""
        used = {r.table for r in self.rules}
        return tuple(t for t in sorted(used))

    def chains(self, table: str) -> tuple[str, ...]:
        """Non-built-in chains the payload creates in `table`, in `-N` order."""
        seen: list[str] = []
        for r in self.rules:
            if r.table == table and r.chain not in BUILTIN_CHAINS and r.chain not in seen:
                seen.append(r.chain)
        for r in self.rules:
            t = r.target
            if r.table == table and t in OWN_CHAINS and t not in seen:
                seen.append(t)
        return tuple(seen)

    def rules_in(self, table: str) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.table == table)

    def restore_payload(self) -> str:
        """The exact text fed to `iptables-restore --noflush` (empty when there are no rules)."""
        out: list[str] = []
        for table in self.tables():
            out.append(f"* {table}")
            out.extend(f"-N {c}" for c in self.chains(table))
            out.extend(r.text() for r in self.rules_in(table))
            out.append("COMMIT")
        return "".join(line + "\n" for line in out)


@dataclass(frozen=True)
class TproxyRoutes:
    """`ip rule add fwmark MARK lookup TABLE` + `ip route add local default dev lo table TABLE`."""

    mark: int
    table: int


@dataclass(frozen=True)
class RuleSet:
    """Everything programmed into a pod netns for one redirect."""

    v4: FamilyRules
    v6: FamilyRules | None = None
    """None when the pod has no IPv6: nothing is sent to ip6tables."""
    tproxy_routes: TproxyRoutes | None = None
    """Set for TPROXY with inbound capture; applied per enabled family."""
    ipv6_passthrough_addr: bool = False
    """Add `::6/128` to `lo` (IPv6 only owns ::1 on lo; ::6 is the inbound passthrough source)."""
    notes: tuple[str, ...] = field(default=())
    """Warnings from the build (e.g. DNS capture disabled), for logs and `explain`."""

    def families(self) -> tuple[FamilyRules, ...]:
        return (self.v4,) if self.v6 is None else (self.v4, self.v6)

    def restore_text(self) -> str:
        """The IPv4 payload, then (IPv6 on) the `# ip6tables-restore` line and the IPv6 payload:
        what `rules` and `explain` print, each payload byte for byte what is fed to
        `iptables-restore --noflush`."""
        text = self.v4.restore_payload()
        if self.v6 is not None:
            text += IP6_MARKER + self.v6.restore_payload()
        return text
