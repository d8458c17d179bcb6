"""The rule builder: istio-iptables' `capture.Run` algorithm as one pure function.

Why a pure function: the plugin (per pod ADD), the repair controller, `explain` and the admin
`rules` command must all agree on the rules for a given configuration, and admins diff what we
program against what upstream's `istio-iptables` would program. So the builder takes an
`IptablesConfig`, returns a `RuleSet` and does nothing else: no I/O, no logging, no environment,
stdlib only (and `ipaddress` only imported when a CIDR actually has to be parsed, because this is
on the plugin's per-pod hot path).

Why this shape: upstream accumulates `(chain, table, params)` rules for IPv4 and IPv6 in one
builder (`AppendRule`, `AppendRuleV4/V6`, `InsertRule`, `AppendVersionedRule`) and renders them
with `BuildV4Restore`/`BuildV6Restore`. `_Builder` mirrors that accumulator, and each stage of
`Run` is one small function below, called in the order upstream's `Run` calls its stages. The
order *is* the behaviour: iptables evaluates rules top to bottom, and `-N` lines and rule lines are
rendered in first-use order, so byte-identical payloads need the same call sequence.

Where upstream validates (the `*` IPv4 exclude, `Config.Validate`'s owner-group limit and IPv4
loopback CIDR checks) we raise `ValueError` naming the field and the value; where upstream
silently tolerates bad input (unparsable CIDRs are skipped "for bug compatibility", DNS capture
with no servers is turned off) we do the same and record a note in `RuleSet.notes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cni.iptables_config import WILDCARD, IptablesConfig
from cni.ruleset import (
    ISTIO_DIVERT,
    ISTIO_DROP,
    ISTIO_IN_REDIRECT,
    ISTIO_INBOUND,
    ISTIO_OUTPUT,
    ISTIO_OUTPUT_DNS,
    ISTIO_REDIRECT,
    ISTIO_TPROXY,
    FamilyRules,
    Rule,
    RuleSet,
    TproxyRoutes,
)
from cni.values import BadValue, Cidr
from cni.values import cidr as parse_cidr

# Fixed values, as in upstream's tools/istio-iptables/pkg/constants (the chains: cni.ruleset).
TPROXY = "TPROXY"
OUTBOUND_MARK = "1338"
"""Marks proxy-to-app packets over `lo` in TPROXY mode so inbound capture skips them."""
MAX_OWNER_GROUPS_INCLUDE = 64
"""Upstream's limit: all included groups go into one rule of `! --gid-owner` matches."""

INBOUND_PASSTHROUGH_V4 = "127.0.0.6/32"
INBOUND_PASSTHROUGH_V6 = "::6/128"
LOOPBACK_V6 = "::1/128"


def _fill(template: str, values: tuple[str, ...], ip: str = "") -> tuple[str, ...]:
    """Params from a template: whitespace-split words, `{}` taking the next value as one word,
    `{ip}` the family's address. Values are never split: upstream keeps list items untrimmed
    (" 15021" stays one parameter), and byte-identical output depends on it."""
    it = iter(values)
    return tuple(
        next(it) if word == "{}" else ip if word == "{ip}" else word for word in template.split()
    )


class _Builder:
    """Upstream's `IptablesRuleBuilder`: v4 and v6 rule lists, v6 only kept if IPv6 is on.

    Each method takes the table, the chain and a template of the rule spec (see `_fill`).
    """

    def __init__(self, ipv6: bool) -> None:
        self.ipv6 = ipv6
        self.v4: list[Rule] = []
        self.v6: list[Rule] = []

    def append_v4(self, table: str, chain: str, spec: str, *values: str) -> None:
        self.v4.append(Rule(table, chain, ("-A", chain, *_fill(spec, values))))

    def append_v6(self, table: str, chain: str, spec: str, *values: str) -> None:
        if self.ipv6:
            self.v6.append(Rule(table, chain, ("-A", chain, *_fill(spec, values))))

    def append(self, table: str, chain: str, spec: str, *values: str) -> None:
        self.append_v4(table, chain, spec, *values)
        self.append_v6(table, chain, spec, *values)

    def insert_v4(self, table: str, chain: str, pos: int, spec: str, *values: str) -> None:
        self.v4.append(Rule(table, chain, ("-I", chain, str(pos), *_fill(spec, values))))

    def insert_v6(self, table: str, chain: str, pos: int, spec: str, *values: str) -> None:
        if self.ipv6:
            self.v6.append(Rule(table, chain, ("-I", chain, str(pos), *_fill(spec, values))))

    def insert(self, table: str, chain: str, pos: int, spec: str, *values: str) -> None:
        self.insert_v4(table, chain, pos, spec, *values)
        self.insert_v6(table, chain, pos, spec, *values)

    def append_versioned(
        self, v4ip: str, v6ip: str, table: str, chain: str, spec: str, *values: str
    ) -> None:
        """Append to both families, `{ip}` being `v4ip` or `v6ip` (`AppendVersionedRule`)."""
        self.v4.append(Rule(table, chain, ("-A", chain, *_fill(spec, values, v4ip))))
        if self.ipv6:
            self.v6.append(Rule(table, chain, ("-A", chain, *_fill(spec, values, v6ip))))


@dataclass
class _Ranges:
    """One family's part of a CIDR list (upstream's `NetworkRange`)."""

    wildcard: bool = False
    cidrs: list[str] = field(default_factory=list)
    has_loopback: bool = False


@dataclass
class _Plan:
    """What `Run` derives from the config before emitting anything."""

    exclude_v4: _Ranges
    exclude_v6: _Ranges
    include_v4: _Ranges
    include_v6: _Ranges
    redirect_dns: bool
    tproxy: bool
    notes: list[str]

    @property
    def include_has_loopback(self) -> bool:
        return self.include_v4.has_loopback or self.include_v6.has_loopback


def build_ruleset(cfg: IptablesConfig) -> RuleSet:
    """Compute every rule istio-iptables would program for `cfg`, in upstream's order.

    Raises ValueError for inputs upstream rejects (see the module docstring).
    """
    _validate(cfg)
    plan = _plan(cfg)
    b = _Builder(cfg.enable_ipv6)
    _exclude_interfaces(b, cfg, plan)
    _reroute_interfaces_return(b, cfg)
    _drop_invalid(b, cfg)
    _base_chains(b, cfg)
    _inbound(b, cfg, plan)
    _outbound_entry(b, cfg)
    _inbound_passthrough(b)
    _proxy_owner_uids(b, cfg, plan)
    _proxy_owner_gids(b, cfg, plan)
    _owner_groups(b, cfg)
    if plan.redirect_dns:
        _dns(b, cfg)
    _loopback_and_exclude_cidrs(b, cfg, plan)
    _outbound_ports_include(b, cfg)
    _include_cidrs(cfg, plan.include_v4, b.append_v4, b.insert_v4)
    _include_cidrs(cfg, plan.include_v6, b.append_v6, b.insert_v6)
    if plan.tproxy:
        _tproxy_extras(b, cfg)
    return RuleSet(
        v4=FamilyRules(ipv6=False, rules=tuple(b.v4)),
        v6=FamilyRules(ipv6=True, rules=tuple(b.v6)) if cfg.enable_ipv6 else None,
        tproxy_routes=_tproxy_routes(cfg, plan),
        ipv6_passthrough_addr=cfg.enable_ipv6,
        notes=tuple(plan.notes),
    )


def validated_plan(cfg: IptablesConfig) -> _Plan:
    """`build_ruleset`'s validation and planning, shared with the nftables builder
    (`cni.nft_rules`): upstream's istio-nftables runs the same checks on the same config."""
    _validate(cfg)
    return _plan(cfg)


def tproxy_routes(cfg: IptablesConfig, plan: _Plan) -> TproxyRoutes | None:
    """The TPROXY policy routing both modes program (see `_tproxy_routes`)."""
    return _tproxy_routes(cfg, plan)


# --- validation and planning -------------------------------------------------------------


def _validate(cfg: IptablesConfig) -> None:
    """Upstream's `Config.Validate` (owner groups, IPv4 loopback CIDR) plus the exclude `*`."""
    if cfg.outbound_ip_ranges_exclude == (WILDCARD,):
        raise ValueError(
            "invalid value for outbound_ip_ranges_exclude (OUTBOUND_IP_RANGES_EXCLUDE, "
            "--istio-service-exclude-cidr): '*' cannot be excluded"
        )
    if cfg.owner_groups_include != (WILDCARD,):
        if len(cfg.owner_groups_include) > MAX_OWNER_GROUPS_INCLUDE:
            raise ValueError(
                "owner_groups_include (ISTIO_OUTBOUND_OWNER_GROUPS): the number of owner groups "
                f"whose outgoing traffic is redirected cannot exceed {MAX_OWNER_GROUPS_INCLUDE}, "
                f"got {len(cfg.owner_groups_include)}: {','.join(cfg.owner_groups_include)}"
            )
    _validate_ipv4_loopback_cidr(cfg.host_ipv4_loopback_cidr)


def _validate_ipv4_loopback_cidr(text: str) -> None:
    """An IPv4 loopback prefix with a mask in [8, 32], like upstream's check."""
    if text == "127.0.0.1/32":  # the default: skip the parse on the hot path
        return
    name = "host_ipv4_loopback_cidr (ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR)"
    parsed = _parse_prefix(text)
    if parsed is None:
        raise ValueError(f"{name}: failed to parse CIDR {text!r}")
    if parsed.version != 4 or not parsed.loopback:
        raise ValueError(f"{name}: expected a valid IPv4 loopback address in CIDR {text!r}")
    if not 8 <= parsed.bits <= 32:
        raise ValueError(f"{name}: expected CIDR {text!r} to have a mask in range [8, 32]")


def _parse_prefix(text: str) -> Cidr | None:
    """The CIDR (`cni.values.cidr`), or None when `text` is not one."""
    try:
        return parse_cidr(text)
    except BadValue:
        return None


def _separate_v4_v6(
    cidrs: tuple[str, ...], field_name: str, notes: list[str]
) -> tuple[_Ranges, _Ranges]:
    """Upstream's `separateV4V6`: `*` is a wildcard for both; unparsable items are skipped."""
    if cidrs == (WILDCARD,):
        return _Ranges(wildcard=True), _Ranges(wildcard=True)
    v4, v6 = _Ranges(), _Ranges()
    for item in cidrs:
        parsed = _parse_prefix(item)
        if parsed is None:
            notes.append(f"{field_name}: ignoring invalid CIDR {item!r} (as istio-iptables does)")
            continue
        family = v4 if parsed.version == 4 else v6
        family.cidrs.append(str(parsed))
        family.has_loopback = family.has_loopback or parsed.loopback
    return v4, v6


def _plan(cfg: IptablesConfig) -> _Plan:
    notes: list[str] = []
    exclude_v4, exclude_v6 = _separate_v4_v6(
        cfg.outbound_ip_ranges_exclude, "outbound_ip_ranges_exclude", notes
    )
    include_v4, include_v6 = _separate_v4_v6(
        cfg.outbound_ip_ranges_include, "outbound_ip_ranges_include", notes
    )
    redirect_dns = cfg.redirect_dns
    if (
        redirect_dns
        and not cfg.capture_all_dns
        and not cfg.dns_servers_v4
        and not (cfg.dns_servers_v6)
    ):
        notes.append(
            "redirect_dns is set, but capture_all_dns is false and no DNS servers were given: "
            "DNS capture disabled"
        )
        redirect_dns = False
    return _Plan(
        exclude_v4=exclude_v4,
        exclude_v6=exclude_v6,
        include_v4=include_v4,
        include_v6=include_v6,
        redirect_dns=redirect_dns,
        tproxy=cfg.inbound_interception_mode == TPROXY,
        notes=notes,
    )


# --- stages, in emission order -------------------------------------------------------------


def _exclude_interfaces(b: _Builder, cfg: IptablesConfig, plan: _Plan) -> None:
    """NICs left alone entirely: RETURN first thing in nat (and mangle with TPROXY)."""
    for nic in cfg.exclude_interfaces:
        b.append("nat", "PREROUTING", "-i {} -j RETURN", nic)
        b.append("nat", "OUTPUT", "-o {} -j RETURN", nic)
    if plan.tproxy:
        for nic in cfg.exclude_interfaces:
            b.append("mangle", "PREROUTING", "-i {} -j RETURN", nic)
            b.append("mangle", "OUTPUT", "-o {} -j RETURN", nic)


def _reroute_interfaces_return(b: _Builder, cfg: IptablesConfig) -> None:
    """KubeVirt NICs: their inbound traffic is not inbound capture (it is rerouted later)."""
    for nic in cfg.reroute_virtual_interfaces:
        b.insert("nat", "PREROUTING", 1, "-i {} -j RETURN", nic)


def _drop_invalid(b: _Builder, cfg: IptablesConfig) -> None:
    """Drop out-of-window packets rather than let the kernel reset the connection."""
    if cfg.drop_invalid:
        b.append("mangle", "PREROUTING", "-m conntrack --ctstate INVALID -j ISTIO_DROP")
        b.append("mangle", ISTIO_DROP, "-j DROP")


def _base_chains(b: _Builder, cfg: IptablesConfig) -> None:
    """The HBONE tunnel port bypass and the two REDIRECT chains."""
    b.append("nat", ISTIO_INBOUND, "-p tcp --dport {} -j RETURN", cfg.inbound_tunnel_port)
    b.append("nat", ISTIO_REDIRECT, "-p tcp -j REDIRECT --to-ports {}", cfg.proxy_port)
    b.append("nat", ISTIO_IN_REDIRECT, "-p tcp -j REDIRECT --to-ports {}", cfg.inbound_capture_port)


def _inbound(b: _Builder, cfg: IptablesConfig, plan: _Plan) -> None:
    """Inbound capture (`handleInboundPortsInclude`); an empty include list disables it."""
    if not cfg.inbound_ports_include:
        return
    table = "mangle" if plan.tproxy else "nat"
    if plan.tproxy:
        _tproxy_chains(b, cfg)
    b.append(table, "PREROUTING", "-p tcp -j ISTIO_INBOUND")
    if cfg.inbound_ports_include == (WILDCARD,):
        for port in cfg.inbound_ports_exclude:
            b.append(table, ISTIO_INBOUND, "-p tcp --dport {} -j RETURN", port)
        _inbound_capture(b, plan, "")
    else:
        for port in cfg.inbound_ports_include:
            _inbound_capture(b, plan, port)


def _tproxy_chains(b: _Builder, cfg: IptablesConfig) -> None:
    """ISTIO_DIVERT marks established flows; ISTIO_TPROXY hands new ones to the proxy."""
    mark = cfg.inbound_tproxy_mark
    b.append("mangle", ISTIO_DIVERT, "-j MARK --set-mark {}", mark)
    b.append("mangle", ISTIO_DIVERT, "-j ACCEPT")
    b.append_versioned(
        cfg.host_ipv4_loopback_cidr, LOOPBACK_V6, "mangle", ISTIO_TPROXY,
        "! -d {ip} -p tcp -j TPROXY --tproxy-mark {} --on-port {}",
        mark + "/0xffffffff", cfg.inbound_capture_port,
    )  # fmt: skip


def _inbound_capture(b: _Builder, plan: _Plan, port: str) -> None:
    """Send inbound TCP (to `port`, or all if "") to the proxy: nat REDIRECT, or mangle
    DIVERT (established) / TPROXY (new) with TPROXY interception."""
    match, values = ("-p tcp --dport {}", (port,)) if port else ("-p tcp", ())
    if plan.tproxy:
        established = " -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT"
        b.append("mangle", ISTIO_INBOUND, match + established, *values)
        b.append("mangle", ISTIO_INBOUND, match + " -j ISTIO_TPROXY", *values)
    else:
        b.append("nat", ISTIO_INBOUND, match + " -j ISTIO_IN_REDIRECT", *values)


def _outbound_entry(b: _Builder, cfg: IptablesConfig) -> None:
    """All outbound traffic enters ISTIO_OUTPUT; excluded ports leave it first (tcp and udp)."""
    b.append("nat", "OUTPUT", "-j ISTIO_OUTPUT")
    for port in cfg.outbound_ports_exclude:
        b.append("nat", ISTIO_OUTPUT, "-p tcp --dport {} -j RETURN", port)
        b.append("nat", ISTIO_OUTPUT, "-p udp --dport {} -j RETURN", port)


def _inbound_passthrough(b: _Builder) -> None:
    """The proxy's inbound passthrough cluster binds 127.0.0.6 / ::6: never recapture it."""
    b.append_versioned(
        INBOUND_PASSTHROUGH_V4, INBOUND_PASSTHROUGH_V6, "nat", ISTIO_OUTPUT,
        "-o lo -s {ip} -j RETURN",
    )  # fmt: skip


def _proxy_owner_uids(b: _Builder, cfg: IptablesConfig, plan: _Plan) -> None:
    """Loop prevention for the proxy's UIDs; with DNS, port 53 is kept out of (a)."""
    if plan.redirect_dns:
        dport = ("-m", "multiport", "!", "--dports", "53," + cfg.inbound_tunnel_port)
    else:
        dport = ("!", "--dport", cfg.inbound_tunnel_port)
    for uid in cfg.proxy_uid:
        _owner_loop_rules(b, cfg, plan, "--uid-owner", uid, dport)


def _proxy_owner_gids(b: _Builder, cfg: IptablesConfig, plan: _Plan) -> None:
    """The same for GIDs; upstream never uses the multiport/53 variant here."""
    dport = ("!", "--dport", cfg.inbound_tunnel_port)
    for gid in cfg.proxy_gid:
        _owner_loop_rules(b, cfg, plan, "--gid-owner", gid, dport)


def _owner_loop_rules(
    b: _Builder, cfg: IptablesConfig, plan: _Plan, owner: str, ident: str, dport: tuple[str, ...]
) -> None:
    """(a) proxy -> own pod IP over lo goes inbound; (b) app -> app over lo is left alone,
    unless a loopback range is explicitly included; (c) the proxy's own traffic returns."""
    redirect_self = "-o lo ! -d {ip} -p tcp" + " {}" * len(dport) + " -m owner {} {}"
    b.append_versioned(
        cfg.host_ipv4_loopback_cidr, LOOPBACK_V6, "nat", ISTIO_OUTPUT,
        redirect_self + " -j ISTIO_IN_REDIRECT", *dport, owner, ident,
    )  # fmt: skip
    if not plan.include_has_loopback:
        if plan.redirect_dns:
            # A localhost DNS server must still be captured: keep tcp/53 out of this RETURN.
            b.append(
                "nat", ISTIO_OUTPUT, "-o lo -p tcp ! --dport 53 -m owner ! {} {} -j RETURN",
                owner, ident,
            )  # fmt: skip
        else:
            b.append("nat", ISTIO_OUTPUT, "-o lo -m owner ! {} {} -j RETURN", owner, ident)
    b.append("nat", ISTIO_OUTPUT, "-m owner {} {} -j RETURN", owner, ident)


def _owner_groups(b: _Builder, cfg: IptablesConfig) -> None:
    """`handleCaptureByOwnerGroup`: `*` minus the excluded groups, or only the listed ones
    (one rule of `! --gid-owner` matches; an empty list yields a bare RETURN, as upstream)."""
    if cfg.owner_groups_include == (WILDCARD,):
        for group in cfg.owner_groups_exclude:
            b.append("nat", ISTIO_OUTPUT, "-m owner --gid-owner {} -j RETURN", group)
        return
    groups = cfg.owner_groups_include
    b.append("nat", ISTIO_OUTPUT, "-m owner ! --gid-owner {} " * len(groups) + "-j RETURN", *groups)


def _dns(b: _Builder, cfg: IptablesConfig) -> None:
    """`SetupDNSRedir`: DNS to istio-agent on 15053, plus raw-table conntrack zones."""
    capture_all = cfg.capture_all_dns
    b.append("raw", "OUTPUT", "-j ISTIO_OUTPUT_DNS")
    if capture_all or cfg.dns_servers_v4:
        b.append_v4("nat", ISTIO_OUTPUT, "-j ISTIO_OUTPUT_DNS")
    if capture_all or cfg.dns_servers_v6:
        b.append_v6("nat", ISTIO_OUTPUT, "-j ISTIO_OUTPUT_DNS")
    # tcp uses --to-ports, udp --to-port (sic, as upstream).
    for redirect in ("-p tcp --dport 53 {} -j REDIRECT --to-ports 15053",
                     "-p udp --dport 53 {} -j REDIRECT --to-port 15053"):  # fmt: skip
        if capture_all:
            b.append("nat", ISTIO_OUTPUT_DNS, redirect.replace(" {}", ""))
            continue
        for server in cfg.dns_servers_v4:
            b.append_v4("nat", ISTIO_OUTPUT_DNS, redirect.replace("{}", "-d {}"), server + "/32")
        for server in cfg.dns_servers_v6:
            b.append_v6("nat", ISTIO_OUTPUT_DNS, redirect.replace("{}", "-d {}"), server + "/128")
    _dns_conntrack_zones(b, cfg)


def _dns_conntrack_zones(b: _Builder, cfg: IptablesConfig) -> None:
    """Zone 1: proxy <-> upstream resolvers; zone 2: app <-> proxy (avoids UDP conntrack
    races). The raw PREROUTING jump only exists when it has rules to reach."""
    for owner, idents in (("--uid-owner", cfg.proxy_uid), ("--gid-owner", cfg.proxy_gid)):
        for ident in idents:
            zone1 = "-p udp --dport 53 -m owner {} {} -j CT --zone 1"
            zone2 = "-p udp --sport 15053 -m owner {} {} -j CT --zone 2"
            b.append("raw", ISTIO_OUTPUT_DNS, zone1, owner, ident)
            b.append("raw", ISTIO_OUTPUT_DNS, zone2, owner, ident)
    if cfg.capture_all_dns:
        b.append("raw", "PREROUTING", "-j ISTIO_INBOUND")
        b.append("raw", ISTIO_OUTPUT_DNS, "-p udp --dport 53 -j CT --zone 2")
        b.append("raw", ISTIO_INBOUND, "-p udp --sport 53 -j CT --zone 1")
        return
    for servers, suffix, append in (
        (cfg.dns_servers_v4, "/32", b.append_v4),
        (cfg.dns_servers_v6, "/128", b.append_v6),
    ):
        if servers:
            append("raw", "PREROUTING", "-j ISTIO_INBOUND")
        for server in servers:
            append(
                "raw", ISTIO_OUTPUT_DNS, "-p udp --dport 53 -d {} -j CT --zone 2", server + suffix
            )
            append("raw", ISTIO_INBOUND, "-p udp --sport 53 -s {} -j CT --zone 1", server + suffix)


def _loopback_and_exclude_cidrs(b: _Builder, cfg: IptablesConfig, plan: _Plan) -> None:
    """Localhost traffic and excluded CIDRs are never captured (emitted before inclusions)."""
    loopback_v4 = cfg.host_ipv4_loopback_cidr
    b.append_versioned(loopback_v4, LOOPBACK_V6, "nat", ISTIO_OUTPUT, "-d {ip} -j RETURN")
    for cidr in plan.exclude_v4.cidrs:
        b.append_v4("nat", ISTIO_OUTPUT, "-d {} -j RETURN", cidr)
    for cidr in plan.exclude_v6.cidrs:
        b.append_v6("nat", ISTIO_OUTPUT, "-d {} -j RETURN", cidr)


def _outbound_ports_include(b: _Builder, cfg: IptablesConfig) -> None:
    """Ports always captured, whatever the destination (before the CIDR inclusions)."""
    for port in cfg.outbound_ports_include:
        b.append("nat", ISTIO_OUTPUT, "-p tcp --dport {} -j ISTIO_REDIRECT", port)


def _include_cidrs(
    cfg: IptablesConfig,
    ranges: _Ranges,
    append: Callable[..., None],
    insert: Callable[..., None],
) -> None:
    """`handleOutboundIncludeRules` for one family; reroute NICs' traffic is captured too."""
    if ranges.wildcard:
        append("nat", ISTIO_OUTPUT, "-j ISTIO_REDIRECT")
        for nic in cfg.reroute_virtual_interfaces:
            insert("nat", "PREROUTING", 1, "-i {} -j ISTIO_REDIRECT", nic)
        return
    for cidr in ranges.cidrs:
        for nic in cfg.reroute_virtual_interfaces:
            insert("nat", "PREROUTING", 1, "-i {} -d {} -j ISTIO_REDIRECT", nic, cidr)
        append("nat", ISTIO_OUTPUT, "-d {} -j ISTIO_REDIRECT", cidr)


def _tproxy_extras(b: _Builder, cfg: IptablesConfig) -> None:
    """TPROXY's mangle marks: save/restore the connmark, mark proxy->app over lo with 1338,
    and keep ISTIO_INBOUND from recapturing marked, passthrough or app->app traffic."""
    mark = cfg.inbound_tproxy_mark
    b.append("mangle", "PREROUTING", "-p tcp -m mark --mark {} -j CONNMARK --save-mark", mark)
    b.append("mangle", "OUTPUT", "-p tcp -o lo -m mark --mark {} -j RETURN", mark)
    for owner, idents in (("--uid-owner", cfg.proxy_uid), ("--gid-owner", cfg.proxy_gid)):
        for ident in idents:
            b.append_versioned(
                cfg.host_ipv4_loopback_cidr, LOOPBACK_V6, "mangle", "OUTPUT",
                "! -d {ip} -p tcp -o lo -m owner {} {} -j MARK --set-mark " + OUTBOUND_MARK,
                owner, ident,
            )  # fmt: skip
    b.append("mangle", "OUTPUT", "-p tcp -m connmark --mark {} -j CONNMARK --restore-mark", mark)
    b.insert("mangle", ISTIO_INBOUND, 1, "-p tcp -m mark --mark {} -j RETURN", mark)
    passthrough = "-p tcp -s {} -i lo -j RETURN"
    b.insert_v4("mangle", ISTIO_INBOUND, 2, passthrough, INBOUND_PASSTHROUGH_V4)
    b.insert_v6("mangle", ISTIO_INBOUND, 2, passthrough, INBOUND_PASSTHROUGH_V6)
    b.insert(
        "mangle", ISTIO_INBOUND, 3, "-p tcp -i lo -m mark ! --mark {} -j RETURN", OUTBOUND_MARK
    )


def _tproxy_routes(cfg: IptablesConfig, plan: _Plan) -> TproxyRoutes | None:
    """`ip rule`/`ip route` for TPROXY, only when inbound capture is on (as upstream)."""
    if not plan.tproxy or not cfg.inbound_ports_include:
        return None
    try:
        return TproxyRoutes(
            mark=int(cfg.inbound_tproxy_mark), table=int(cfg.inbound_tproxy_route_table)
        )
    except ValueError:
        raise ValueError(
            "inbound_tproxy_mark / inbound_tproxy_route_table (--istio-inbound-tproxy-mark, "
            "--istio-inbound-tproxy-route-table) must be integers, got "
            f"{cfg.inbound_tproxy_mark!r} / {cfg.inbound_tproxy_route_table!r}"
        ) from None
