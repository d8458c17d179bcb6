"""`istio-cni-node rules`: print the iptables-restore payloads for istio-iptables-style flags.

Why: admins have runbooks and diffs built on istio-iptables' output. This command takes the same
flags (long names and short aliases as upstream's `tools/istio-iptables/pkg/cmd/root.go`) and
prints exactly what our rule builder would feed to `iptables-restore --noflush` (and to
`ip6tables-restore` with `--ipv6`), with no side effects: it reads nothing from the host and
changes nothing. The plugin, the repair controller and `explain` use the same
`cni.rules.build_ruleset`, so what this prints is what they program.

Differences from istio-iptables, all because this command must not look at the host:
- `--proxy-uid` defaults to 1337 (upstream looks up the `istio-proxy` user, falling back to
  1337); `--proxy-gid` defaults to the UID, as upstream.
- IPv6 is not detected from the pod's addresses: pass `--ipv6` (upstream: first usable address,
  or any IPv6 address with `--dual-stack`). `--dual-stack` is accepted and recorded only.
- DNS servers are not read from /etc/resolv.conf: pass `--dns-servers-v4/-v6`.
- Settings upstream reads only from the environment are flags here: `--outbound-owner-groups`
  (ISTIO_OUTBOUND_OWNER_GROUPS), `--outbound-owner-groups-exclude`
  (ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE), `--host-ipv4-loopback-cidr`
  (ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR). No environment variable is read.
- Boolean flags are plain switches (no `--redirect-dns=false`).

Output: the IPv4 payload; with `--ipv6`, then the line `# ip6tables-restore` and the IPv6
payload. With `--native-nftables` (upstream's `native_nftables` mode), instead the one nftables
transaction exactly as fed to `nft -f` (one command per line, upstream istio-nftables' order;
`--ipv6` adds the IPv6 rules to the same `inet` tables). Build notes (e.g. DNS capture disabled)
go to stderr.

Every value is checked before anything is built, with the parsers the plugin applies to the
same settings when they come from a pod (`cni.values`, `cni.redirect`): ports are 0-65535,
UIDs/GIDs are ids in 0-4294967294, CIDRs parse as Go's `net.ParseCIDR` does, interface names
match the plugin's pattern, group names are names. Nothing unchecked reaches a payload, which
is stricter than istio-iptables (it passes `-p abc` through to iptables and skips an unparsable
CIDR with a warning). Invalid input: one line on stderr naming the flag and the value, nothing
on stdout, exit status 2 (like a usage error).

`-o` is istio-iptables' `--istio-local-outbound-ports-exclude` here, as upstream names it: this
command has no output-format option (the other commands' `--output`/`-o`), and a format name
given to `-o` is refused with a hint.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

import click

from cni.iptables_config import WILDCARD, IptablesConfig, split_list
from cni.nft_rules import build_nft_ruleset
from cni.redirect import MAX_ID, parse_interfaces, parse_mode
from cni.rules import build_ruleset
from cni.values import BadValue, cidr, port

DEFAULT_PROXY_UID = "1337"
INTERCEPTION_MODES = ("", "REDIRECT", "TPROXY")
MAX_MARK = 0xFFFFFFFF
"""A packet mark and a routing table id are 32-bit."""
MAX_SHOWN = 300
"""The longest error line printed: a junk value of megabytes is cut, not echoed whole."""
_DECIMAL_RE = re.compile(r"[0-9]{1,10}")
_GROUP_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")
_OUTPUT_FORMATS = ("text", "json", "yaml", "wide", "restore", "name")


def config_from_flags(**flags: Any) -> IptablesConfig:
    """Map the command's parameters (click names) to an `IptablesConfig`. Pure.

    Raises ValueError on values upstream would misuse silently (interception mode, DNS server
    addresses of the wrong family).
    """
    mode = flags.get("istio_inbound_interception_mode") or ""
    if mode not in INTERCEPTION_MODES:
        raise ValueError(
            f"--istio-inbound-interception-mode: expected REDIRECT or TPROXY, got {mode!r}"
        )
    uid = flags.get("proxy_uid") or DEFAULT_PROXY_UID
    gid = flags.get("proxy_gid") or uid  # upstream: "same default value as -u param"
    return IptablesConfig(
        proxy_port=flags.get("envoy_port", "15001"),
        inbound_capture_port=flags.get("inbound_capture_port", "15006"),
        inbound_tunnel_port=flags.get("inbound_tunnel_port", "15008"),
        proxy_uid=split_list(uid),
        proxy_gid=split_list(gid),
        inbound_interception_mode=mode or "REDIRECT",
        inbound_tproxy_mark=flags.get("istio_inbound_tproxy_mark", "1337"),
        inbound_tproxy_route_table=flags.get("istio_inbound_tproxy_route_table", "133"),
        inbound_ports_include=split_list(flags.get("istio_inbound_ports", "")),
        inbound_ports_exclude=split_list(flags.get("istio_local_exclude_ports", "")),
        outbound_ports_include=split_list(flags.get("istio_outbound_ports", "")),
        outbound_ports_exclude=split_list(flags.get("istio_local_outbound_ports_exclude", "")),
        outbound_ip_ranges_include=split_list(flags.get("istio_service_cidr", "")),
        outbound_ip_ranges_exclude=split_list(flags.get("istio_service_exclude_cidr", "")),
        reroute_virtual_interfaces=split_list(flags.get("kube_virt_interfaces", "")),
        exclude_interfaces=split_list(flags.get("istio_exclude_interfaces", "")),
        owner_groups_include=split_list(flags.get("outbound_owner_groups", "*")),
        owner_groups_exclude=split_list(flags.get("outbound_owner_groups_exclude", "")),
        host_ipv4_loopback_cidr=flags.get("host_ipv4_loopback_cidr", "127.0.0.1/32"),
        redirect_dns=bool(flags.get("redirect_dns", False)),
        capture_all_dns=bool(flags.get("capture_all_dns", False)),
        dns_servers_v4=_dns_servers(flags.get("dns_servers_v4", ""), 4, "--dns-servers-v4"),
        dns_servers_v6=_dns_servers(flags.get("dns_servers_v6", ""), 6, "--dns-servers-v6"),
        drop_invalid=bool(flags.get("drop_invalid", False)),
        dual_stack=bool(flags.get("dual_stack", False)),
        enable_ipv6=bool(flags.get("ipv6", False)),
    )


def _port(text: str) -> str:
    return str(port(text))


def _ports(text: str) -> str:
    return ",".join(_port(item) for item in split_list(text))


def _ports_or_wildcard(text: str) -> str:
    return WILDCARD if split_list(text) == (WILDCARD,) else _ports(text)


def _id(text: str) -> str:
    """A UID or GID as the kernel knows it (decimal, 0-4294967294), as the plugin requires of
    istio-proxy's runAsUser/runAsGroup (`cni.redirect.MAX_ID`)."""
    stripped = text.strip()
    if not _DECIMAL_RE.fullmatch(stripped) or int(stripped) > MAX_ID:
        raise BadValue(f"{text!r} is not a user or group id (0-{MAX_ID})")
    return str(int(stripped))


def _ids(text: str) -> str:
    return ",".join(_id(item) for item in split_list(text))


def _cidrs(text: str) -> str:
    return ",".join(str(cidr(item.strip())) for item in split_list(text))


def _cidrs_or_wildcard(text: str) -> str:
    """CIDRs, or `*` alone (which the rule builder refuses for the exclude list, by name)."""
    return WILDCARD if split_list(text) == (WILDCARD,) else _cidrs(text)


def _interfaces(text: str) -> str:
    return ",".join(parse_interfaces(item)[0] for item in split_list(text))


def _mode(text: str) -> str:
    return parse_mode(text) if text else ""


def _groups(text: str) -> str:
    """Owner groups: `*` alone (all), or GIDs and group names (what `--gid-owner` takes)."""
    if split_list(text) == (WILDCARD,):
        return WILDCARD
    out = []
    for item in split_list(text):
        name = item.strip()
        if not _DECIMAL_RE.fullmatch(name) and not _GROUP_NAME_RE.fullmatch(name):
            raise BadValue(f"{item!r} is neither a group id nor a group name")
        out.append(_id(name) if _DECIMAL_RE.fullmatch(name) else name)
    return ",".join(out)


def _mark(text: str) -> str:
    stripped = text.strip()
    if not _DECIMAL_RE.fullmatch(stripped) or not 0 < int(stripped) <= MAX_MARK:
        raise BadValue(f"{text!r} is not a number in 1-{MAX_MARK}")
    return str(int(stripped))


def _loopback_cidr(text: str) -> str:
    parsed = cidr(text.strip())
    if parsed.version != 4 or not parsed.loopback or not 8 <= parsed.bits <= 32:
        raise BadValue(f"{text!r} is not an IPv4 loopback CIDR with a mask in [8, 32]")
    return str(parsed)


# click parameter name -> the check (and canonical form) of its value
VALIDATORS: dict[str, Callable[[str], str]] = {
    "envoy_port": _port,
    "inbound_capture_port": _port,
    "inbound_tunnel_port": _port,
    "proxy_uid": _ids,
    "proxy_gid": _ids,
    "istio_inbound_interception_mode": _mode,
    "istio_inbound_ports": _ports_or_wildcard,
    "istio_local_exclude_ports": _ports,
    "istio_exclude_interfaces": _interfaces,
    "istio_service_cidr": _cidrs_or_wildcard,
    "istio_service_exclude_cidr": _cidrs_or_wildcard,
    "istio_outbound_ports": _ports,
    "istio_local_outbound_ports_exclude": _ports,
    "kube_virt_interfaces": _interfaces,
    "istio_inbound_tproxy_mark": _mark,
    "istio_inbound_tproxy_route_table": _mark,
    "outbound_owner_groups": _groups,
    "outbound_owner_groups_exclude": _groups,
    "host_ipv4_loopback_cidr": _loopback_cidr,
}


def validated_flags(flags: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """`flags` with every text value checked and put in canonical form. Pure.

    `names` maps a parameter to how the user spells it (`--envoy-port/-p`), for the message.
    Raises ValueError naming the flag and the value.
    """
    out = dict(flags)
    for key, check in VALIDATORS.items():
        value = flags.get(key)
        if value is None:
            continue
        try:
            out[key] = check(value)
        except BadValue as exc:
            hint = ""
            if key == "istio_local_outbound_ports_exclude" and value in _OUTPUT_FORMATS:
                hint = (" (in `rules`, -o is istio-iptables' --istio-local-outbound-ports-"
                        "exclude; this command has no output format option)")
            raise ValueError(f"{names.get(key, key)}: {exc}{hint}") from None
    return out


def _dns_servers(value: str, version: int, flag: str) -> tuple[str, ...]:
    """Upstream gets these per family from resolv.conf; a flag could mix them up, so check."""
    servers = tuple(item.strip() for item in split_list(value))
    for server in servers:
        try:
            ok = ipaddress.ip_address(server).version == version
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{flag}: {server!r} is not an IPv{version} address")
    return servers


def _text(long: str, short: str | None, default: str, help_text: str) -> Any:
    names = (long, short) if short else (long,)
    return click.option(*names, default=default, show_default=True, help=help_text)


def _switch(long: str, help_text: str) -> Any:
    return click.option(long, is_flag=True, default=False, help=help_text)


_OPTIONS = (
    _text("--envoy-port", "-p", "15001", "Outbound capture port (ISTIO_REDIRECT target)."),
    _text("--inbound-capture-port", "-z", "15006", "Inbound capture port."),
    _text("--inbound-tunnel-port", "-e", "15008", "HBONE tunnel port, never captured."),
    _text("--proxy-uid", "-u", DEFAULT_PROXY_UID, "Proxy UIDs (comma list) not redirected."),
    _text("--proxy-gid", "-g", "", "Proxy GIDs (comma list); default: the --proxy-uid value."),
    _text("--istio-inbound-interception-mode", "-m", "", "REDIRECT (default) or TPROXY."),
    _text("--istio-inbound-ports", "-b", "", "Inbound ports to capture; '*' all, '' none."),
    _text("--istio-local-exclude-ports", "-d", "", "Inbound ports not captured (with '*')."),
    _text("--istio-exclude-interfaces", "-c", "", "NICs left entirely alone."),
    _text("--istio-service-cidr", "-i", "", "Outbound CIDRs to capture; '*' all, '' none."),
    _text("--istio-service-exclude-cidr", "-x", "", "Outbound CIDRs never captured."),
    _text("--istio-outbound-ports", "-q", "", "Outbound ports always captured."),
    _text("--istio-local-outbound-ports-exclude", "-o", "", "Outbound ports never captured."),
    _text("--kube-virt-interfaces", "-k", "", "NICs whose inbound traffic counts as outbound."),
    _text("--istio-inbound-tproxy-mark", "-t", "1337", "TPROXY packet mark."),
    _text("--istio-inbound-tproxy-route-table", "-r", "133", "TPROXY routing table."),
    _switch("--redirect-dns", "Capture DNS to istio-agent (15053)."),
    _switch("--capture-all-dns", "Capture all port-53 traffic, not only --dns-servers-*."),
    _switch("--drop-invalid", "Drop conntrack-INVALID packets (mangle ISTIO_DROP)."),
    _switch("--dual-stack", "Recorded only: IPv6 is given by --ipv6 here."),
    _switch("--ipv6", "The pod has IPv6: also print the ip6tables payload."),
    _switch("--native-nftables", "Print the native nftables transaction (nft -f) instead."),
    _text("--dns-servers-v4", None, "", "IPv4 DNS servers (upstream: from resolv.conf)."),
    _text("--dns-servers-v6", None, "", "IPv6 DNS servers (upstream: from resolv.conf)."),
    _text("--outbound-owner-groups", None, "*", "Groups whose outbound traffic is captured."),
    _text("--outbound-owner-groups-exclude", None, "", "Groups not captured (with '*')."),
    _text("--host-ipv4-loopback-cidr", None, "127.0.0.1/32", "IPv4 loopback CIDR."),
)


def _with_options(func: Any) -> Any:
    for option in reversed(_OPTIONS):
        func = option(func)
    return func


def _spelling(ctx: click.Context) -> dict[str, str]:
    return {p.name: "/".join(p.opts) for p in ctx.command.params if p.name}


@click.command("rules")
@_with_options
@click.pass_context
def rules_command(ctx: click.Context, native_nftables: bool, **flags: Any) -> None:
    """Print the iptables-restore payload(s) istio-iptables would apply for these flags
    (or, with --native-nftables, the nftables transaction istio-nftables would apply).

    Reads nothing from the host and changes nothing. Flags and short names are
    istio-iptables' own (-o is --istio-local-outbound-ports-exclude). Every value is
    checked as the plugin checks it; a bad one is one line on stderr and exit 2. With
    --ipv6, the ip6tables-restore payload follows the line "# ip6tables-restore".
    """
    try:
        cfg = config_from_flags(**validated_flags(flags, _spelling(ctx)))
        if native_nftables:
            nft = build_nft_ruleset(cfg)
            notes, text = nft.notes, nft.transaction()
        else:
            ruleset = build_ruleset(cfg)
            notes, text = ruleset.notes, ruleset.restore_text()
    except ValueError as err:
        line = f"istio-cni-node rules: error: {err}"
        if len(line) > MAX_SHOWN:
            line = line[:MAX_SHOWN] + f"... ({len(line)} characters)"
        click.echo(line, err=True)
        raise click.exceptions.Exit(2) from None
    for note in notes:
        click.echo(f"istio-cni-node rules: warning: {note}", err=True)
    click.echo(text, nl=False)
