"""The redirect spec: pod annotations and the istio-proxy container, validated and typed.

One registry row per annotation (key, default, parser); a single loop reads them. Every value
is parsed into a canonical form before it can reach a rule, so no annotation text ever lands in
an iptables-restore payload verbatim: ports become ints, CIDRs are re-printed from their parsed
form, interface names must match a strict pattern. An invalid value raises `InvalidAnnotation`
naming the annotation and the value. Pure: no I/O.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from cni.decision import INTERCEPTION_MODE_KEY
from cni.errors import InvalidAnnotation
from cni.iptables_config import WILDCARD, IptablesConfig
from cni.podinfo import PodInfo
from cni.values import BadValue, cidr, one_of, parse_go_bool, port

log = logging.getLogger(__name__)

DEFAULT_PROXY_ID = 1337
MAX_ID = 4294967294  # the largest uid_t/gid_t; 4294967295 is (uid_t)-1, "no id" to the kernel
ALWAYS_EXCLUDED_INBOUND = (15020, 15021, 15090)
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-@]{0,14}$")
_MAX_LIST_ITEMS = 512

Ports = tuple[int, ...] | str  # WILDCARD or ports
Cidrs = tuple[str, ...] | str  # WILDCARD or canonical CIDR texts


def _items(value: str) -> list[str]:
    items = value.split(",")
    if len(items) > _MAX_LIST_ITEMS:
        raise BadValue(f"more than {_MAX_LIST_ITEMS} items")
    return items


def parse_ports(value: str) -> tuple[int, ...]:
    """Upstream's parsePorts: trimmed, comma-separated uint16s; "" means none."""
    value = value.strip()
    return tuple(port(p) for p in _items(value)) if value else ()


def parse_ports_or_wildcard(value: str) -> Ports:
    return WILDCARD if value == WILDCARD else parse_ports(value)


def parse_cidrs(value: str) -> tuple[str, ...]:
    """CIDRs re-printed from their parsed form (`cni.values.cidr`)."""
    return tuple(str(cidr(c)) for c in _items(value)) if value else ()


def parse_cidrs_or_wildcard(value: str) -> Cidrs:
    return WILDCARD if value == WILDCARD else parse_cidrs(value)


def parse_interfaces(value: str) -> tuple[str, ...]:
    """Interface names (stricter than upstream, which accepts anything for the reroute keys)."""
    if not value:
        return ()
    names = tuple(n.strip() for n in _items(value))
    for name in names:
        if not _IFNAME_RE.match(name):
            raise BadValue(f"{name!r} is not a valid interface name")
    return names


parse_mode = one_of(("REDIRECT", "TPROXY"))


@dataclass(frozen=True)
class _Annotation:
    key: str
    default: str
    parser: Callable[[str], object]


INCLUDE_CIDRS = "traffic.sidecar.istio.io/includeOutboundIPRanges"
EXCLUDE_CIDRS = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
INCLUDE_INBOUND = "traffic.sidecar.istio.io/includeInboundPorts"
EXCLUDE_INBOUND = "traffic.sidecar.istio.io/excludeInboundPorts"
INCLUDE_OUTBOUND = "traffic.sidecar.istio.io/includeOutboundPorts"
EXCLUDE_OUTBOUND = "traffic.sidecar.istio.io/excludeOutboundPorts"
EXCLUDE_INTERFACES = "traffic.sidecar.istio.io/excludeInterfaces"
KUBEVIRT_INTERFACES = "traffic.sidecar.istio.io/kubevirtInterfaces"
REROUTE_INTERFACES = "istio.io/reroute-virtual-interfaces"

# field name -> (annotation key, default when absent, parser). Order = upstream's validation order.
REGISTRY: dict[str, _Annotation] = {
    "mode": _Annotation(INTERCEPTION_MODE_KEY, "REDIRECT", parse_mode),
    "include_cidrs": _Annotation(INCLUDE_CIDRS, WILDCARD, parse_cidrs_or_wildcard),
    "exclude_cidrs": _Annotation(EXCLUDE_CIDRS, "", parse_cidrs),
    "exclude_inbound_ports": _Annotation(EXCLUDE_INBOUND, "15020", parse_ports),
    "include_inbound_ports": _Annotation(INCLUDE_INBOUND, WILDCARD, parse_ports_or_wildcard),
    "exclude_outbound_ports": _Annotation(EXCLUDE_OUTBOUND, "15020", parse_ports),
    "include_outbound_ports": _Annotation(INCLUDE_OUTBOUND, "", parse_ports_or_wildcard),
    "exclude_interfaces": _Annotation(EXCLUDE_INTERFACES, "", parse_interfaces),
    "reroute_interfaces": _Annotation(REROUTE_INTERFACES, "", parse_interfaces),
}


@dataclass(frozen=True)
class Redirect:
    """What the pod asked for, typed. Defaults are upstream's NewRedirect defaults."""

    mode: str = "REDIRECT"
    proxy_port: int = 15001
    proxy_uid: int = DEFAULT_PROXY_ID
    proxy_gid: int = DEFAULT_PROXY_ID
    include_cidrs: Cidrs = WILDCARD
    exclude_cidrs: tuple[str, ...] = ()
    include_inbound_ports: Ports = WILDCARD
    exclude_inbound_ports: tuple[int, ...] = (15020, 15021, 15090)
    include_outbound_ports: Ports = ()
    exclude_outbound_ports: tuple[int, ...] = (15020,)
    exclude_interfaces: tuple[str, ...] = ()
    reroute_interfaces: tuple[str, ...] = ()
    dns_capture: bool = False
    dual_stack: bool = False
    drop_invalid: bool = False


def _read(field: str, annotations: dict[str, str]) -> object:
    row = REGISTRY[field]
    value = annotations.get(row.key, row.default)
    try:
        return row.parser(value)
    except BadValue as exc:
        shown = value if len(value) <= 200 else value[:200] + f"... ({len(value)} chars)"
        raise InvalidAnnotation(
            f"invalid annotation {row.key}={shown!r}: {exc}", f"annotation {row.key}"
        ) from exc


def _env_flag(pod: PodInfo, name: str) -> bool:
    if name not in pod.proxy_env:
        return False
    parsed = parse_go_bool(pod.proxy_env[name])
    if parsed is None:
        log.warning("istio-proxy env %s=%r is not a boolean; treating it as false",
                    name, pod.proxy_env[name])
    return bool(parsed)


def _dedup(ports: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(ports))


def _proxy_id(value: int | None, name: str) -> int:
    """istio-proxy's runAsUser/runAsGroup: unset or 0 keeps the default, as upstream; anything
    outside the kernel's id range is refused here, before it can reach an owner match."""
    if value is not None and not 0 <= value <= MAX_ID:
        shown = str(value) if value.bit_length() <= 128 else f"a {value.bit_length()}-bit number"
        raise InvalidAnnotation(
            f"invalid istio-proxy securityContext.{name}={shown}: not an id in 0-{MAX_ID}",
            f"istio-proxy securityContext.{name}")
    return value or DEFAULT_PROXY_ID


def redirect_from_pod(pod: PodInfo) -> Redirect:
    """Upstream's NewRedirect, with every value validated (InvalidAnnotation on the first bad)."""
    ann = pod.annotations
    values = {field: _read(field, ann) for field in REGISTRY}
    if REROUTE_INTERFACES not in ann:  # the deprecated key counts only if the new one is absent
        try:
            values["reroute_interfaces"] = parse_interfaces(ann.get(KUBEVIRT_INTERFACES, ""))
        except BadValue as exc:
            raise InvalidAnnotation(
                f"invalid annotation {KUBEVIRT_INTERFACES}={ann[KUBEVIRT_INTERFACES]!r}: {exc}",
                f"annotation {KUBEVIRT_INTERFACES}",
            ) from exc
    values["exclude_inbound_ports"] = _dedup(
        values["exclude_inbound_ports"] + ALWAYS_EXCLUDED_INBOUND  # type: ignore[operator]
    )
    return Redirect(
        proxy_uid=_proxy_id(pod.proxy_uid, "runAsUser"),
        proxy_gid=_proxy_id(pod.proxy_gid, "runAsGroup"),
        dns_capture=_env_flag(pod, "ISTIO_META_DNS_CAPTURE"),
        dual_stack=_env_flag(pod, "ISTIO_DUAL_STACK"),
        drop_invalid=_env_flag(pod, "INVALID_DROP"),
        **values,  # type: ignore[arg-type]
    )


def _texts(value: Ports | Cidrs) -> tuple[str, ...]:
    if value == WILDCARD:
        return (WILDCARD,)
    return tuple(str(v) for v in value)


def to_iptables_config(r: Redirect, enable_ipv6: bool = False) -> IptablesConfig:
    """The istio-iptables configuration the plugin runs for this redirect (upstream's Program).

    The CNI always captures all DNS (it cannot read the pod's resolv.conf), so DNS capture sets
    both redirect_dns and capture_all_dns."""
    cfg = IptablesConfig(
        proxy_port=str(r.proxy_port),
        proxy_uid=(str(r.proxy_uid),),
        proxy_gid=(str(r.proxy_gid),),
        inbound_interception_mode=r.mode,
        outbound_ip_ranges_include=_texts(r.include_cidrs),
        outbound_ip_ranges_exclude=_texts(r.exclude_cidrs),
        inbound_ports_include=_texts(r.include_inbound_ports),
        inbound_ports_exclude=_texts(r.exclude_inbound_ports),
        outbound_ports_include=_texts(r.include_outbound_ports),
        outbound_ports_exclude=_texts(r.exclude_outbound_ports),
        reroute_virtual_interfaces=r.reroute_interfaces,
        exclude_interfaces=r.exclude_interfaces,
        redirect_dns=r.dns_capture,
        capture_all_dns=r.dns_capture,
        drop_invalid=r.drop_invalid,
        dual_stack=r.dual_stack,
    )
    return replace(cfg, enable_ipv6=enable_ipv6)
