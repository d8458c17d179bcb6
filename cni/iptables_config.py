"""The inputs of the rule builder: istio-iptables' own configuration, one field per flag.

Pure data, no I/O. The plugin fills it from a pod's redirect spec (`cni.redirect`), the admin
CLI `istio-cni-node rules` from istio-iptables-style flags; both hand it to
`cni.rules.build_ruleset`. Field names follow upstream's `tools/common/config.Config`; list
fields hold the items exactly as upstream's `config.Split` yields them (split on ",", empty
items dropped, *no* trimming), because byte-identical rules with upstream depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass

WILDCARD = "*"


def split_list(value: str) -> tuple[str, ...]:
    """Split like upstream's `config.Split`: on commas, dropping empty items, keeping spaces."""
    return tuple(item for item in value.split(",") if item)


@dataclass(frozen=True)
class IptablesConfig:
    """What istio-iptables would be run with. Defaults are istio-iptables' flag defaults."""

    proxy_port: str = "15001"
    """--envoy-port: outbound capture port (ISTIO_REDIRECT target)."""
    inbound_capture_port: str = "15006"
    """--inbound-capture-port: inbound capture port (ISTIO_IN_REDIRECT / TPROXY target)."""
    inbound_tunnel_port: str = "15008"
    """--inbound-tunnel-port: HBONE port, never captured."""
    proxy_uid: tuple[str, ...] = ("1337",)
    """--proxy-uid: owner UIDs whose traffic is the proxy's own (comma list upstream)."""
    proxy_gid: tuple[str, ...] = ("1337",)
    """--proxy-gid: owner GIDs whose traffic is the proxy's own."""
    inbound_interception_mode: str = "REDIRECT"
    """--istio-inbound-interception-mode: REDIRECT or TPROXY."""
    inbound_tproxy_mark: str = "1337"
    """--istio-inbound-tproxy-mark."""
    inbound_tproxy_route_table: str = "133"
    """--istio-inbound-tproxy-route-table."""
    inbound_ports_include: tuple[str, ...] = ()
    """--istio-inbound-ports: ("*",) captures all; () disables inbound capture."""
    inbound_ports_exclude: tuple[str, ...] = ()
    """--istio-local-exclude-ports: only effective when inbound include is ("*",)."""
    outbound_ports_include: tuple[str, ...] = ()
    """--istio-outbound-ports."""
    outbound_ports_exclude: tuple[str, ...] = ()
    """--istio-local-outbound-ports-exclude."""
    outbound_ip_ranges_include: tuple[str, ...] = ()
    """--istio-service-cidr: ("*",) or CIDRs (either family)."""
    outbound_ip_ranges_exclude: tuple[str, ...] = ()
    """--istio-service-exclude-cidr: CIDRs (either family)."""
    reroute_virtual_interfaces: tuple[str, ...] = ()
    """--kube-virt-interfaces: NICs whose inbound traffic is treated as outbound."""
    exclude_interfaces: tuple[str, ...] = ()
    """--istio-exclude-interfaces: NICs left entirely alone."""
    owner_groups_include: tuple[str, ...] = (WILDCARD,)
    """ISTIO_OUTBOUND_OWNER_GROUPS: groups whose outbound traffic is captured."""
    owner_groups_exclude: tuple[str, ...] = ()
    """ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE: groups whose outbound traffic is not captured."""
    host_ipv4_loopback_cidr: str = "127.0.0.1/32"
    """ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR."""
    redirect_dns: bool = False
    """--redirect-dns: capture DNS to 15053."""
    capture_all_dns: bool = False
    """--capture-all-dns: capture all :53, not only the resolv.conf servers."""
    dns_servers_v4: tuple[str, ...] = ()
    """Upstream reads these from the pod's /etc/resolv.conf; here they are explicit."""
    dns_servers_v6: tuple[str, ...] = ()
    drop_invalid: bool = False
    """--drop-invalid: mangle DROP of conntrack INVALID packets."""
    dual_stack: bool = False
    """--dual-stack: look for an IPv6 pod address even if an IPv4 one comes first."""
    enable_ipv6: bool = False
    """The pod has IPv6 (upstream detects it in the pod netns): emit the ip6tables payload."""
