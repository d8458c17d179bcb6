"""The chained plugin's output: the previous plugin's result, re-encoded at the config's version.

libcni decodes `prevResult` with the config's cniVersion and prints it back through its typed
structs, so unknown fields are dropped and keys come out in struct order; runtimes and the
plugins after us see exactly what a Go plugin would print. With no prevResult (standalone or
Multus) the answer is an empty result of that version. Pure, stdlib only.
"""

from __future__ import annotations

from typing import Any

from cni.errors import DecodingFailure

_IFACE_KEYS = ("name", "mac", "mtu", "sandbox", "socketPath", "pciID")
_IFACE_KEYS_PRE_11 = ("name", "mac", "mtu", "sandbox")
_ROUTE_KEYS = ("dst", "gw", "mtu", "advmss", "priority", "table", "scope")
_ROUTE_KEYS_PRE_11 = ("dst", "gw")
_DNS_KEYS = ("nameservers", "domain", "search", "options")


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DecodingFailure(f"error decoding prevResult: {where} must be an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise DecodingFailure(f"error decoding prevResult: {where} must be a list")
    return value


def _pick(src: dict[str, Any], keys: tuple[str, ...], always: tuple[str, ...] = ()) -> dict:
    """Keep `keys` in order, dropping empty values as Go's omitempty does (except `always`)."""
    out: dict[str, Any] = {}
    for key in keys:
        value = src.get(key)
        if key in always or value not in (None, "", 0, [], {}):
            if value is not None or key in always:
                out[key] = value if value is not None else ""
    return out


def _ip_version(address: str) -> str:
    return "6" if ":" in address else "4"


def _encode_ip(ip: dict[str, Any], with_version: bool) -> dict[str, Any]:
    address = ip.get("address")
    if not isinstance(address, str) or "/" not in address:
        raise DecodingFailure(f"error decoding prevResult: ips[].address {address!r} is not a CIDR")
    out: dict[str, Any] = {}
    if with_version:
        out["version"] = ip.get("version") or _ip_version(address)
    if isinstance(ip.get("interface"), int):
        out["interface"] = ip["interface"]
    out["address"] = address
    if ip.get("gateway"):
        out["gateway"] = ip["gateway"]
    return out


def _encode_route(route: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(route.get("dst"), str):
        raise DecodingFailure("error decoding prevResult: routes[].dst must be a CIDR string")
    out = {k: route[k] for k in keys if route.get(k) not in (None, "", 0)}
    for k in ("table", "scope"):  # pointers in Go: 0 is a real value
        if k in keys and isinstance(route.get(k), int):
            out[k] = route[k]
    return {k: out[k] for k in keys if k in out}


def encode_result(prev: dict[str, Any] | None, version: str) -> dict[str, Any]:
    """The result to print for a config of `version`, given the decoded prevResult (or None)."""
    if version in ("0.1.0", "0.2.0"):
        out: dict[str, Any] = {"cniVersion": version}
        for key in ("ip4", "ip6"):
            if prev and isinstance(prev.get(key), dict):
                out[key] = prev[key]
        out["dns"] = _dns(prev)
        return out
    prev = _obj(prev, "prevResult") if prev is not None else {}
    is_11 = version == "1.1.0"
    with_version = version.startswith("0.")
    out = {"cniVersion": version}
    ifaces = [_obj(i, "interfaces[]") for i in _list(prev.get("interfaces", []), "interfaces")]
    if ifaces:
        keys = _IFACE_KEYS if is_11 else _IFACE_KEYS_PRE_11
        out["interfaces"] = [_pick(i, keys, always=("name",)) for i in ifaces]
    ips = [_obj(i, "ips[]") for i in _list(prev.get("ips", []), "ips")]
    if ips:
        out["ips"] = [_encode_ip(i, with_version) for i in ips]
    routes = [_obj(r, "routes[]") for r in _list(prev.get("routes", []), "routes")]
    if routes:
        keys = _ROUTE_KEYS if is_11 else _ROUTE_KEYS_PRE_11
        out["routes"] = [_encode_route(r, keys) for r in routes]
    out["dns"] = _dns(prev)
    return out


def _dns(prev: dict[str, Any] | None) -> dict[str, Any]:
    dns = (prev or {}).get("dns")
    dns = {} if dns is None else _obj(dns, "dns")
    return {k: dns[k] for k in _DNS_KEYS if dns.get(k)}
