"""The nftables rule set as data, and its rendering as the transaction fed to `nft -f`.

Pure: no I/O, standard library only. `cni.nft_rules.build_nft_ruleset` produces an
`NftRuleSet`; `cni.backends.nftables` programs it, `istio-cni-node rules --native-nftables`
prints it.

Rendering follows upstream's istio-nftables (its knftables transaction) command for command:
per table (nat, mangle, raw; a table with no rules is left out) `add table`, `flush table`,
`add chain` for each chain that holds rules (base chains with their type, hook and numeric
priority), then the rules in emission order. A rule upstream inserts becomes an `add` when its
index would not land inside the chain (empty chain, or index at or past its current length),
because nftables refuses both: `NftRule.index` holds that already-resolved decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cni.ruleset import TproxyRoutes

FAMILY = "inet"
NAT_TABLE = "istio-proxy-nat"
MANGLE_TABLE = "istio-proxy-mangle"
RAW_TABLE = "istio-proxy-raw"
TABLES = (NAT_TABLE, MANGLE_TABLE, RAW_TABLE)
"""Our tables, in transaction order. Every table of the inet family with one of these names is
ours to replace; nothing else in a pod netns ever is."""


@dataclass(frozen=True)
class NftChain:
    """A chain; `hook` set for base chains (`type`, `hook`, numeric `priority`)."""

    name: str
    type: str = ""
    hook: str = ""
    priority: int = 0

    def command(self, table: str) -> str:
        head = f"add chain {FAMILY} {table} {self.name}"
        if not self.hook:
            return head
        return f"{head} {{ type {self.type} hook {self.hook} priority {self.priority} ; }}"


# Each table's possible chains, in upstream's declaration (and so `add chain`) order.
CHAINS: dict[str, tuple[NftChain, ...]] = {
    NAT_TABLE: (
        NftChain("prerouting", "nat", "prerouting", -100),
        NftChain("output", "nat", "output", -100),
        NftChain("istio-inbound"),
        NftChain("istio-redirect"),
        NftChain("istio-in-redirect"),
        NftChain("istio-output"),
        NftChain("istio-output-dns"),
    ),
    MANGLE_TABLE: (
        NftChain("prerouting", "filter", "prerouting", -150),
        NftChain("output", "route", "output", -150),
        NftChain("istio-divert"),
        NftChain("istio-tproxy"),
        NftChain("istio-inbound"),
        NftChain("istio-drop"),
    ),
    RAW_TABLE: (
        NftChain("prerouting", "filter", "prerouting", -300),
        NftChain("output", "filter", "output", -300),
        NftChain("istio-inbound"),
        NftChain("istio-output-dns"),
    ),
}


@dataclass(frozen=True)
class NftRule:
    """One rule: `expr` is the statement text after the chain name, exactly as emitted."""

    chain: str
    expr: str
    index: int | None = None
    """`insert ... index N` when set (already resolved, see the module docstring)."""

    def command(self, table: str) -> str:
        if self.index is None:
            return f"add rule {FAMILY} {table} {self.chain} {self.expr}"
        return f"insert rule {FAMILY} {table} {self.chain} index {self.index} {self.expr}"


@dataclass(frozen=True)
class NftTable:
    """One of our tables: the chains it creates and its rules in emission order."""

    name: str
    chains: tuple[NftChain, ...]
    rules: tuple[NftRule, ...]

    def commands(self) -> list[str]:
        """Upstream's commands for this table: add, flush, chains, rules."""
        out = [f"add table {FAMILY} {self.name}", f"flush table {FAMILY} {self.name}"]
        out += [chain.command(self.name) for chain in self.chains]
        out += [rule.command(self.name) for rule in self.rules]
        return out

    def chain_rules(self) -> dict[str, list[str]]:
        """Each chain's rules in final order, after the inserts (for `explain`-style views)."""
        chains: dict[str, list[str]] = {c.name: [] for c in self.chains}
        for rule in self.rules:
            target = chains[rule.chain]
            target.insert(rule.index if rule.index is not None else len(target), rule.expr)
        return chains


@dataclass(frozen=True)
class NftRuleSet:
    """Everything native nftables mode programs into a pod netns for one redirect."""

    tables: tuple[NftTable, ...]
    tproxy_routes: TproxyRoutes | None = None
    """Set for TPROXY with inbound capture: the same policy routing as iptables mode."""
    ipv6_passthrough_addr: bool = False
    """Add `::6/128` to `lo` when the pod has IPv6, as in iptables mode."""
    notes: tuple[str, ...] = field(default=())
    """Warnings from the build (e.g. DNS capture disabled), for logs and `explain`."""

    def table(self, name: str) -> NftTable | None:
        return next((t for t in self.tables if t.name == name), None)

    def commands(self) -> list[str]:
        return [line for table in self.tables for line in table.commands()]

    def transaction(self) -> str:
        """The exact text fed to `nft -f`: one command per line, upstream's order."""
        return "".join(line + "\n" for line in self.commands())
