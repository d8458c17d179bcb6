"""The nftables rule builder: istio-nftables' `capture.Run` algorithm as one pure function.

Why beside `cni.rules.build_ruleset` and fed by the same `IptablesConfig`: upstream's native
nftables mode (`native_nftables`) takes the very config istio-iptables takes and emits `inet`
tables instead (`istio-proxy-nat`, `istio-proxy-mangle`, `istio-proxy-raw`). One config, two
renderings, so the plugin, repair, `explain` and `rules` agree whichever mode a pod uses, and
validation and CIDR planning are shared (`cni.rules.validated_plan`).

Why this shape: upstream accumulates `(table, chain, rule, index)` in one builder
(`AppendRule`, `AppendV6RuleIfSupported`, `InsertRule`, `InsertV6RuleIfSupported`, every rule
with a `counter` statement) and renders one knftables transaction. `_Builder` mirrors it; each
stage of `Run` is a small function below, called in upstream's emission order, because the
transaction must be byte-identical and nftables evaluates rules in order. Unlike iptables
there is one rule list for both families: an IPv6 rule is simply left out when the pod has no
IPv6. Words are joined with single spaces (knftables' `Concat`); list items are used as
upstream's `config.Split` yields them (so, like istio-iptables, untrimmed).

Stdlib only, nothing imported beyond the shared planner: this is on the plugin's hot path.
"""

from __future__ import annotations

from cni.iptables_config import WILDCARD, IptablesConfig
from cni.nft_ruleset import (
    CHAINS,
    MANGLE_TABLE,
    NAT_TABLE,
    RAW_TABLE,
    TABLES,
    NftRule,
    NftRuleSet,
    NftTable,
)
from cni.rules import tproxy_routes, validated_plan

COUNTER = "counter"
OUTBOUND_MARK = "1338"
DNS_PORT = "15053"
LOOPBACK_V6 = "::1/128"
PASSTHROUGH_V4 = "127.0.0.6/32"
PASSTHROUGH_V6 = "::6/128"

# Chains, with upstream's names.
PREROUTING = "prerouting"
OUTPUT = "output"
INBOUND = "istio-inbound"
OUTPUT_CHAIN = "istio-output"
OUTPUT_DNS = "istio-output-dns"
REDIRECT = "istio-redirect"
IN_REDIRECT = "istio-in-redirect"
DIVERT = "istio-divert"
TPROXY_CHAIN = "istio-tproxy"
DROP = "istio-drop"


class _Builder:
    """Upstream's `NftablesRuleBuilder`: per table, `(chain, expr, index)` in emission order."""

    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.rules: dict[str, list[tuple[str, str, int | None]]] = {t: [] for t in TABLES}

    def append(self, table: str, chain: str, *words: str) -> None:
        self.rules[table].append((chain, " ".join(words), None))

    def append_v6(self, table: str, chain: str, *words: str) -> None:
        if self.ipv6:
            self.append(table, chain, *words)

    def insert(self, table: str, chain: str, index: int, *words: str) -> None:
        self.rules[table].append((chain, " ".join(words), index))

    def insert_v6(self, table: str, chain: str, index: int, *words: str) -> None:
        if self.ipv6:
            self.insert(table, chain, index, *words)


def build_nft_ruleset(cfg: IptablesConfig) -> NftRuleSet:
    """Compute upstream istio-nftables' transaction for `cfg`, in upstream's order.

    Raises ValueError for inputs upstream rejects (as `cni.rules.build_ruleset`).
    """
    plan = validated_plan(cfg)
    tproxy = plan.tproxy
    dns = plan.redirect_dns
    b = _Builder(cfg.enable_ipv6)
    _exclude_interfaces(b, cfg, tproxy)
    for nic in cfg.reroute_virtual_interfaces:
        b.insert(NAT_TABLE, PREROUTING, 0, "iifname", nic, COUNTER, "return")
    if cfg.drop_invalid:
        b.append(MANGLE_TABLE, PREROUTING, "meta l4proto tcp", "ct state", "invalid", COUNTER,
                 "jump", DROP)
        b.append(MANGLE_TABLE, DROP, COUNTER, "drop")
    _base_chains(b, cfg)
    if cfg.inbound_ports_include:
        if tproxy:
            _inbound_tproxy(b, cfg)
        else:
            _inbound_redirect(b, cfg)
    _outbound_entry(b, cfg)
    include_loopback = plan.include_has_loopback
    for uid in cfg.proxy_uid:
        _owner_loop_rules(b, cfg, "skuid", uid, dns, include_loopback, dns)
    for gid in cfg.proxy_gid:
        _owner_loop_rules(b, cfg, "skgid", gid, False, include_loopback, dns)
    _owner_groups(b, cfg)
    if dns:
        _dns(b, cfg)
    _loopback_and_exclude_cidrs(b, cfg, plan.exclude_v4.cidrs, plan.exclude_v6.cidrs)
    for port in cfg.outbound_ports_include:
        b.append(NAT_TABLE, OUTPUT_CHAIN, "tcp dport", port, COUNTER, "jump", REDIRECT)
    _include_cidrs(b, cfg, plan.include_v4.wildcard or plan.include_v6.wildcard,
                   plan.include_v4.cidrs, plan.include_v6.cidrs)
    if tproxy:
        _tproxy_marks(b, cfg)
    return NftRuleSet(
        tables=tuple(t for t in (_table(name, b.rules[name]) for name in TABLES) if t),
        tproxy_routes=tproxy_routes(cfg, plan),
        ipv6_passthrough_addr=cfg.enable_ipv6,
        notes=tuple(plan.notes),
    )


def _table(name: str, rules: list[tuple[str, str, int | None]]) -> NftTable | None:
    """Upstream's `addIstioTableRules`: only chains with rules; inserts that nftables would
    refuse (empty chain, index at or past the chain's length) become appends."""
    if not rules:
        return None
    used = {chain for chain, _, _ in rules}
    counts: dict[str, int] = {}
    resolved: list[NftRule] = []
    for chain, expr, index in rules:
        have = counts.get(chain, 0)
        if index is not None and (have == 0 or index >= have):
            index = None
        resolved.append(NftRule(chain, expr, index))
        counts[chain] = have + 1
    return NftTable(name, tuple(c for c in CHAINS[name] if c.name in used), tuple(resolved))


# --- stages, in emission order -------------------------------------------------------------


def _exclude_interfaces(b: _Builder, cfg: IptablesConfig, tproxy: bool) -> None:
    """NICs left alone entirely: return first thing in nat (and mangle with TPROXY)."""
    for nic in cfg.exclude_interfaces:
        b.append(NAT_TABLE, PREROUTING, "iifname", nic, COUNTER, "return")
        b.append(NAT_TABLE, OUTPUT, "oifname", nic, COUNTER, "return")
    if tproxy:
        for nic in cfg.exclude_interfaces:
            b.append(MANGLE_TABLE, PREROUTING, "iifname", nic, COUNTER, "return")
            b.append(MANGLE_TABLE, OUTPUT, "oifname", nic, COUNTER, "return")


def _base_chains(b: _Builder, cfg: IptablesConfig) -> None:
    """The HBONE tunnel port bypass and the two redirect chains."""
    b.append(NAT_TABLE, INBOUND, "meta l4proto tcp", "tcp dport", cfg.inbound_tunnel_port,
             COUNTER, "return")
    b.append(NAT_TABLE, REDIRECT, "meta l4proto tcp", COUNTER, "redirect to",
             ":" + cfg.proxy_port)
    b.append(NAT_TABLE, IN_REDIRECT, "meta l4proto tcp", COUNTER, "redirect to",
             ":" + cfg.inbound_capture_port)


def _inbound_redirect(b: _Builder, cfg: IptablesConfig) -> None:
    """Inbound capture with nat `redirect` (all ports but the excluded, or the listed ones)."""
    b.append(NAT_TABLE, PREROUTING, "meta l4proto tcp", COUNTER, "jump", INBOUND)
    if cfg.inbound_ports_include == (WILDCARD,):
        for port in cfg.inbound_ports_exclude:
            b.append(NAT_TABLE, INBOUND, "meta l4proto tcp", "tcp dport", port, COUNTER,
                     "return")
        b.append(NAT_TABLE, INBOUND, "meta l4proto tcp", COUNTER, "jump", IN_REDIRECT)
        return
    for port in cfg.inbound_ports_include:
        b.append(NAT_TABLE, INBOUND, "meta l4proto tcp", "tcp dport", port, COUNTER, "jump",
                 IN_REDIRECT)


def _inbound_tproxy(b: _Builder, cfg: IptablesConfig) -> None:
    """Inbound capture with TPROXY: istio-divert marks established flows, istio-tproxy hands
    new ones to the proxy with the mark that policy routing sends to `lo`."""
    mark, port = cfg.inbound_tproxy_mark, ":" + cfg.inbound_capture_port
    b.append(MANGLE_TABLE, DIVERT, COUNTER, "meta mark set", mark)
    b.append(MANGLE_TABLE, DIVERT, COUNTER, "accept")
    b.append(MANGLE_TABLE, TPROXY_CHAIN, "meta l4proto tcp", "ip daddr", "!=",
             cfg.host_ipv4_loopback_cidr, "tproxy ip to", port, "meta mark set", mark, COUNTER,
             "accept")
    b.append_v6(MANGLE_TABLE, TPROXY_CHAIN, "meta l4proto tcp", "ip6 daddr", "!=", LOOPBACK_V6,
                "tproxy ip6 to", port, "meta mark set", mark, COUNTER, "accept")
    b.append(MANGLE_TABLE, PREROUTING, "meta l4proto tcp", COUNTER, "jump", INBOUND)
    established = ("ct state", "related,established")
    if cfg.inbound_ports_include == (WILDCARD,):
        for excluded in cfg.inbound_ports_exclude:
            b.append(MANGLE_TABLE, INBOUND, "meta l4proto tcp", "tcp dport", excluded, COUNTER,
                     "return")
        b.append(MANGLE_TABLE, INBOUND, "meta l4proto tcp", *established, COUNTER, "jump",
                 DIVERT)
        b.append(MANGLE_TABLE, INBOUND, "meta l4proto tcp", COUNTER, "jump", TPROXY_CHAIN)
        return
    for included in cfg.inbound_ports_include:
        b.append(MANGLE_TABLE, INBOUND, "meta l4proto tcp", *established, "tcp dport", included,
                 COUNTER, "jump", DIVERT)
        b.append(MANGLE_TABLE, INBOUND, "meta l4proto tcp", "tcp dport", included, COUNTER,
                 "jump", TPROXY_CHAIN)


def _outbound_entry(b: _Builder, cfg: IptablesConfig) -> None:
    """All output enters istio-output; excluded ports leave it first (tcp and udp); the
    inbound passthrough cluster's sources (127.0.0.6, ::6) are never recaptured."""
    b.append(NAT_TABLE, OUTPUT, COUNTER, "jump", OUTPUT_CHAIN)
    for port in cfg.outbound_ports_exclude:
        b.append(NAT_TABLE, OUTPUT_CHAIN, "tcp dport", port, COUNTER, "return")
        b.append(NAT_TABLE, OUTPUT_CHAIN, "udp dport", port, COUNTER, "return")
    b.append(NAT_TABLE, OUTPUT_CHAIN, "oifname", "lo", "ip saddr", PASSTHROUGH_V4, COUNTER,
             "return")
    b.append_v6(NAT_TABLE, OUTPUT_CHAIN, "oifname", "lo", "ip6 saddr", PASSTHROUGH_V6, COUNTER,
                "return")


def _owner_loop_rules(
    b: _Builder, cfg: IptablesConfig, owner: str, ident: str, skip_dns: bool,
    include_loopback: bool, dns: bool,
) -> None:
    """(a) proxy -> own pod IP over lo goes inbound (port 53 kept out for UIDs with DNS
    capture); (b) app -> app over lo is left alone unless a loopback range is included;
    (c) the proxy's own traffic returns."""
    tunnel = cfg.inbound_tunnel_port
    dport = "{ 53, " + tunnel + " }" if skip_dns else tunnel
    to_self = ("oifname", "lo", "meta l4proto tcp")
    b.append(NAT_TABLE, OUTPUT_CHAIN, *to_self, "ip daddr", "!=", cfg.host_ipv4_loopback_cidr,
             "tcp dport", "!=", dport, owner, ident, COUNTER, "jump", IN_REDIRECT)
    b.append_v6(NAT_TABLE, OUTPUT_CHAIN, *to_self, "ip6 daddr", "!=", LOOPBACK_V6, "tcp dport",
                "!=", dport, owner, ident, COUNTER, "jump", IN_REDIRECT)
    if not include_loopback:
        if dns:  # a localhost DNS server must still be captured: keep tcp/53 out
            b.append(NAT_TABLE, OUTPUT_CHAIN, *to_self, "tcp dport", "!=", "53", owner, "!=",
                     ident, COUNTER, "return")
        else:
            b.append(NAT_TABLE, OUTPUT_CHAIN, "oifname", "lo", owner, "!=", ident, COUNTER,
                     "return")
    b.append(NAT_TABLE, OUTPUT_CHAIN, owner, ident, COUNTER, "return")


def _owner_groups(b: _Builder, cfg: IptablesConfig) -> None:
    """`*` minus the excluded groups, or only the listed ones (one rule of `skgid !=`
    matches; an empty list yields a bare return, as upstream)."""
    if cfg.owner_groups_include == (WILDCARD,):
        for group in cfg.owner_groups_exclude:
            b.append(NAT_TABLE, OUTPUT_CHAIN, "skgid", group, COUNTER, "return")
        return
    none_of = [word for group in cfg.owner_groups_include for word in ("skgid", "!=", group)]
    b.append(NAT_TABLE, OUTPUT_CHAIN, *none_of, COUNTER, "return")


def _dns(b: _Builder, cfg: IptablesConfig) -> None:
    """`SetupDNSRedir`: DNS to istio-agent on 15053, plus raw-table conntrack zones."""
    capture_all = cfg.capture_all_dns
    redirect = (COUNTER, "redirect", "to", ":" + DNS_PORT)
    b.append(RAW_TABLE, OUTPUT, COUNTER, "jump", OUTPUT_DNS)
    if capture_all or cfg.dns_servers_v4 or cfg.dns_servers_v6:
        b.append(NAT_TABLE, OUTPUT_CHAIN, COUNTER, "jump", OUTPUT_DNS)
    if capture_all:
        b.append(NAT_TABLE, OUTPUT_DNS, "meta l4proto tcp", "tcp dport", "53", *redirect)
        b.append(NAT_TABLE, OUTPUT_DNS, "udp dport", "53", *redirect)
    else:
        for proto in ("tcp", "udp"):
            for server in cfg.dns_servers_v4:
                b.append(NAT_TABLE, OUTPUT_DNS, "ip daddr", server + "/32", proto + " dport",
                         "53", *redirect)
            for server in cfg.dns_servers_v6:
                b.append_v6(NAT_TABLE, OUTPUT_DNS, "ip6 daddr", server + "/128",
                            proto + " dport", "53", *redirect)
    _dns_conntrack_zones(b, cfg)


def _dns_conntrack_zones(b: _Builder, cfg: IptablesConfig) -> None:
    """Zone 1: proxy <-> upstream resolvers; zone 2: app <-> proxy (avoids UDP conntrack
    races). The raw prerouting jump only exists when istio-inbound gets rules."""
    for owner, idents in (("skuid", cfg.proxy_uid), ("skgid", cfg.proxy_gid)):
        for ident in idents:
            b.append(RAW_TABLE, OUTPUT_DNS, "udp dport", "53", "meta", owner, ident, COUNTER,
                     "ct", "zone", "set", "1")
            b.append(RAW_TABLE, OUTPUT_DNS, "udp sport", DNS_PORT, "meta", owner, ident,
                     COUNTER, "ct", "zone", "set", "2")
    if cfg.capture_all_dns:
        b.append(RAW_TABLE, PREROUTING, COUNTER, "jump", INBOUND)
        b.append(RAW_TABLE, OUTPUT_DNS, "udp dport", "53", COUNTER, "ct", "zone", "set", "2")
        b.append(RAW_TABLE, INBOUND, "udp sport", "53", COUNTER, "ct", "zone", "set", "1")
        return
    if cfg.dns_servers_v4 or cfg.dns_servers_v6:
        b.append(RAW_TABLE, PREROUTING, COUNTER, "jump", INBOUND)
    for servers, family, suffix, append in (
        (cfg.dns_servers_v4, "ip", "/32", b.append),
        (cfg.dns_servers_v6, "ip6", "/128", b.append_v6),
    ):
        for server in servers:
            append(RAW_TABLE, OUTPUT_DNS, "udp dport", "53", family + " daddr", server + suffix,
                   COUNTER, "ct", "zone", "set", "2")
            append(RAW_TABLE, INBOUND, "udp sport", "53", family + " saddr", server + suffix,
                   COUNTER, "ct", "zone", "set", "1")


def _loopback_and_exclude_cidrs(
    b: _Builder, cfg: IptablesConfig, exclude_v4: list[str], exclude_v6: list[str]
) -> None:
    """Localhost traffic and excluded CIDRs are never captured (before the inclusions)."""
    b.append(NAT_TABLE, OUTPUT_CHAIN, "ip daddr", cfg.host_ipv4_loopback_cidr, COUNTER,
             "return")
    b.append_v6(NAT_TABLE, OUTPUT_CHAIN, "ip6 daddr", LOOPBACK_V6, COUNTER, "return")
    for cidr in exclude_v4:
        b.append(NAT_TABLE, OUTPUT_CHAIN, "ip daddr", cidr, COUNTER, "return")
    for cidr in exclude_v6:
        b.append_v6(NAT_TABLE, OUTPUT_CHAIN, "ip6 daddr", cidr, COUNTER, "return")


def _include_cidrs(
    b: _Builder, cfg: IptablesConfig, wildcard: bool, include_v4: list[str],
    include_v6: list[str],
) -> None:
    """`handleOutboundIncludeRules`; reroute NICs' traffic is captured too (inserted first)."""
    nics = cfg.reroute_virtual_interfaces
    if wildcard:
        b.append(NAT_TABLE, OUTPUT_CHAIN, COUNTER, "jump", REDIRECT)
        for nic in nics:
            b.insert(NAT_TABLE, PREROUTING, 0, "iifname", nic, COUNTER, "jump", REDIRECT)
        return
    for cidr in include_v4:
        for nic in nics:
            b.insert(NAT_TABLE, PREROUTING, 0, "iifname", nic, "ip daddr", cidr, COUNTER,
                     "jump", REDIRECT)
        b.append(NAT_TABLE, OUTPUT_CHAIN, "ip daddr", cidr, COUNTER, "jump", REDIRECT)
    for cidr in include_v6:
        for nic in nics:
            b.insert_v6(NAT_TABLE, PREROUTING, 0, "iifname", nic, "ip6 daddr", cidr, COUNTER,
                        "jump", REDIRECT)
        b.append_v6(NAT_TABLE, OUTPUT_CHAIN, "ip6 daddr", cidr, COUNTER, "jump", REDIRECT)


def _tproxy_marks(b: _Builder, cfg: IptablesConfig) -> None:
    """TPROXY's mangle marks: save the mark as connmark, mark proxy->app over lo with 1338,
    restore the connmark on output, and keep istio-inbound from recapturing marked,
    passthrough (127.0.0.6 / ::6) or app->app traffic."""
    mark = cfg.inbound_tproxy_mark
    lo_tcp = ("oifname", "lo", "meta l4proto tcp")
    b.append(MANGLE_TABLE, PREROUTING, "meta l4proto tcp", "mark", mark, COUNTER,
             "ct mark set mark")
    b.append(MANGLE_TABLE, OUTPUT, *lo_tcp, "mark", mark, COUNTER, "return")
    for owner, idents in (("skuid", cfg.proxy_uid), ("skgid", cfg.proxy_gid)):
        for ident in idents:
            b.append(MANGLE_TABLE, OUTPUT, *lo_tcp, "ip daddr", "!=",
                     cfg.host_ipv4_loopback_cidr, owner, ident, COUNTER, "meta mark set",
                     OUTBOUND_MARK)
            b.append_v6(MANGLE_TABLE, OUTPUT, *lo_tcp, "ip6 daddr", "!=", LOOPBACK_V6, owner,
                        ident, COUNTER, "meta mark set", OUTBOUND_MARK)
    b.append(MANGLE_TABLE, OUTPUT, "meta l4proto tcp", "ct", "mark", mark, COUNTER,
             "meta mark set", "ct", "mark")
    b.insert(MANGLE_TABLE, INBOUND, 0, "meta l4proto tcp", "mark", mark, COUNTER, "return")
    from_lo = ("iifname", "lo", "meta l4proto tcp")
    b.insert(MANGLE_TABLE, INBOUND, 1, *from_lo, "ip saddr", PASSTHROUGH_V4, COUNTER, "return")
    b.insert_v6(MANGLE_TABLE, INBOUND, 1, *from_lo, "ip6 saddr", PASSTHROUGH_V6, COUNTER,
                "return")
    b.insert(MANGLE_TABLE, INBOUND, 2, *from_lo, "mark", "!=", OUTBOUND_MARK, COUNTER, "return")
