"""Golden tests for `cni.rules.build_ruleset`: byte-identical to upstream's istio-iptables.

Each case builds an `IptablesConfig`, renders it, and compares with `golden/NAME.golden`:

- `plugin-*`: the three payloads the upstream CNI plugin programs (default, TPROXY and DNS
  capture; upstream's `cni/pkg/plugin/testdata/{basic,tproxy,dns}.txt.golden`), verbatim.
- `capture-*`: upstream's `tools/istio-iptables/pkg/capture/run_test.go` cases (same names as
  its `testdata/*.golden`), each with the flags that upstream test sets on top of its
  `constructTestConfig()` (UID/GID 1337, owner groups `*`, loopback 127.0.0.1/32, all else
  empty). Upstream's golden holds what its stub dependencies executed: `iptables-save`
  lines around the `iptables-restore` stdin (v4 payload, then v6 payload). Our golden keeps
  only the payloads.

`golden/upstream/` holds four of upstream's capture goldens verbatim, from an older commit (in
`UPSTREAM_GOLDENS`) that predates three later changes to `capture.Run`.
`test_matches_upstream_golden` asserts our output equals each one after applying exactly the
named deltas below, each one of those later changes as upstream's current `run.go` makes it:

- `output_jump_all_protocols`: `-A OUTPUT -p tcp -j ISTIO_OUTPUT` became `-A OUTPUT -j
  ISTIO_OUTPUT` (the `plugin-basic` payload has it too).
- `drop_invalid_chain`: the INVALID drop moved into its own chain.
- `dns_no_owner_udp_return`: `SetupDNSRedir` no longer adds `-p udp --dport 53 -m owner ...
  -j RETURN` to nat ISTIO_OUTPUT_DNS (as in the `plugin-dns` payload).
- `dns_v6_jump_only_with_v6_servers`: the nat jump to ISTIO_OUTPUT_DNS is per family, only
  when capturing all DNS or that family has servers.

Golden file format: the IPv4 `iptables-restore` payload exactly as fed to `iptables-restore
--noflush`; for IPv6 cases (`enable_ipv6`) it is followed by the line `# ip6tables-restore`
and the IPv6 payload. Dropping that marker line gives upstream's concatenation.

Refresh: `REFRESH_GOLDEN=1 pytest tests/cni/test_rules_golden.py` rewrites the golden files from
the current code (like upstream's REFRESH_GOLDEN); by default the test compares. Review the
diff of a refresh line by line against upstream before committing it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from cni.iptables_config import IptablesConfig
from cni.rules import build_ruleset
from cni.ruleset import IP6_MARKER, RuleSet

GOLDEN_DIR = Path(__file__).parent / "golden"

# The CNI plugin's fixed inputs for a default injected pod (upstream's defaults for the
# sidecar annotations): include all inbound ports but 15020/15021/15090, exclude outbound port
# 15020, capture all CIDRs.
PLUGIN_DEFAULT = IptablesConfig(
    inbound_ports_include=("*",),
    inbound_ports_exclude=("15020", "15021", "15090"),
    outbound_ports_exclude=("15020",),
    outbound_ip_ranges_include=("*",),
)

PLUGIN_CASES: dict[str, IptablesConfig] = {
    "plugin-basic": PLUGIN_DEFAULT,
    "plugin-tproxy": replace(PLUGIN_DEFAULT, inbound_interception_mode="TPROXY"),
    "plugin-dns": replace(PLUGIN_DEFAULT, redirect_dns=True, capture_all_dns=True),
}

# Upstream capture/run_test.go cases: name -> the fields its test function sets.
# `KubeVirtInterfaces`/`RerouteVirtualInterfaces` is `reroute_virtual_interfaces` here.
CAPTURE_CASES: dict[str, dict[str, object]] = {
    "ipv6-empty-inbound-ports": {"enable_ipv6": True},
    "ip-range": {
        "outbound_ip_ranges_exclude": ("1.1.0.0/16",),
        "outbound_ip_ranges_include": ("9.9.0.0/16",),
        "redirect_dns": True,
        "proxy_gid": ("1", "2"),
        "proxy_uid": ("3", "4"),
        "dns_servers_v4": ("127.0.0.53",),
    },
    "tproxy": {
        "inbound_interception_mode": "TPROXY",
        "inbound_ports_include": ("*",),
        "outbound_ip_ranges_exclude": ("1.1.0.0/16",),
        "outbound_ip_ranges_include": ("9.9.0.0/16",),
        "redirect_dns": True,
        "dns_servers_v4": ("127.0.0.53",),
        "exclude_interfaces": ("not-istio-nic",),
        "enable_ipv6": True,
    },
    "ipv6-inbound-ports": {"inbound_ports_include": ("4000", "5000"), "enable_ipv6": True},
    "ipv6-virt-interfaces": {
        "inbound_ports_include": ("4000", "5000"),
        "reroute_virtual_interfaces": ("eth0", "eth1"),
        "enable_ipv6": True,
    },
    "ipv6-ipnets": {
        "inbound_ports_include": ("4000", "5000"),
        "inbound_ports_exclude": ("6000", "7000"),  # upstream: "6000,7000," (Split drops "")
        "reroute_virtual_interfaces": ("eth0", "eth1"),
        "outbound_ip_ranges_exclude": ("2001:db8::/32",),
        "outbound_ip_ranges_include": ("2001:db8::/32",),
        "enable_ipv6": True,
    },
    "ipv6-uid-gid": {
        "inbound_ports_include": ("4000", "5000"),
        "inbound_ports_exclude": ("6000", "7000"),
        "reroute_virtual_interfaces": ("eth0", "eth1"),
        "proxy_gid": ("1", "2"),
        "proxy_uid": ("3", "4"),
        "enable_ipv6": True,
        "outbound_ip_ranges_exclude": ("2001:db8::/32",),
        "outbound_ip_ranges_include": ("2001:db8::/32",),
    },
    "ipv6-outbound-ports": {"outbound_ports_include": ("32000", "31000"), "enable_ipv6": True},
    "empty": {},
    "kube-virt-interfaces": {
        "reroute_virtual_interfaces": ("eth1", "eth2"),
        "outbound_ip_ranges_include": ("*",),
    },
    "ipnets": {"outbound_ip_ranges_include": ("10.0.0.0/8",)},
    "ipnets-with-kube-virt-interfaces": {
        "reroute_virtual_interfaces": ("eth1", "eth2"),
        "outbound_ip_ranges_include": ("10.0.0.0/8",),
    },
    "inbound-ports-include": {"inbound_ports_include": ("32000", "31000")},
    "inbound-ports-wildcard": {"inbound_ports_include": ("*",)},
    "inbound-ports-tproxy": {
        "inbound_ports_include": ("32000", "31000"),
        "inbound_interception_mode": "TPROXY",
    },
    "inbound-ports-wildcard-tproxy": {
        "inbound_ports_include": ("*",),
        "inbound_interception_mode": "TPROXY",
    },
    "dns-uid-gid": {
        "redirect_dns": True,
        "dns_servers_v4": ("127.0.0.53",),
        "dns_servers_v6": ("::127.0.0.53",),
        "proxy_gid": ("1", "2"),
        "proxy_uid": ("3", "4"),
        "enable_ipv6": True,
    },
    "ipv6-dns-uid-gid": {
        "enable_ipv6": True,
        "redirect_dns": True,
        "proxy_gid": ("1", "2"),
        "proxy_uid": ("3", "4"),
    },
    "outbound-owner-groups": {"owner_groups_include": ("java", "202")},
    "outbound-owner-groups-exclude": {"owner_groups_exclude": ("888", "ftp")},
    "ipv6-dns-outbound-owner-groups": {
        "enable_ipv6": True,
        "redirect_dns": True,
        "owner_groups_include": ("java", "202"),
    },
    "ipv6-dns-outbound-owner-groups-exclude": {
        "enable_ipv6": True,
        "redirect_dns": True,
        "owner_groups_exclude": ("888", "ftp"),
    },
    "outbound-ports-include": {"outbound_ports_include": ("32000", "31000")},
    "loopback-outbound-iprange": {
        "outbound_ip_ranges_include": ("127.1.2.3/32",),
        "redirect_dns": True,
        "dns_servers_v4": ("127.0.0.53",),
        "proxy_gid": ("1", "2"),
        "proxy_uid": ("3", "4"),
    },
    "basic-exclude-nic": {"exclude_interfaces": ("not-istio-nic",)},
    "drop-invalid": {"drop_invalid": True},
    "host-ipv4-loopback-cidr": {"host_ipv4_loopback_cidr": "127.0.0.1/8"},
}

ALL_CASES: dict[str, IptablesConfig] = {
    **PLUGIN_CASES,
    **{f"capture-{name}": IptablesConfig(**fields) for name, fields in CAPTURE_CASES.items()},  # type: ignore[arg-type]
}


def render(ruleset: RuleSet) -> str:
    """The golden file text for a rule set (format in the module docstring)."""
    return ruleset.restore_text()


@pytest.mark.parametrize("name", sorted(ALL_CASES))
def test_golden(name: str) -> None:
    got = render(build_ruleset(ALL_CASES[name]))
    path = GOLDEN_DIR / f"{name}.golden"
    if os.environ.get("REFRESH_GOLDEN"):
        path.write_text(got)
    assert got == path.read_text(), f"{name}: output differs from {path}"


@pytest.mark.parametrize("name", sorted(PLUGIN_CASES))
def test_plugin_payloads_are_ipv4_only(name: str) -> None:
    """Upstream's plugin goldens are IPv4-only; the IPv6 payload must not leak into them."""
    ruleset = build_ruleset(PLUGIN_CASES[name])
    assert ruleset.v6 is None
    assert not ruleset.ipv6_passthrough_addr


# --- comparison with upstream's stored goldens ------------------------------------------------

Payloads = list[list[str]]
"""Upstream golden payloads (v4, then v6 if any), each as its lines."""


def upstream_payloads(text: str) -> Payloads:
    """Split an upstream capture golden into restore payloads, dropping `*tables-save` lines.

    A payload's tables come in sorted order, so a table header not after the previous one
    starts the next (IPv6) payload."""
    payloads: Payloads = []
    previous = ""
    for line in text.splitlines():
        if line in ("iptables-save", "ip6tables-save"):
            continue
        if line.startswith("* "):
            if not payloads or line <= previous:
                payloads.append([])
            previous = line
        payloads[-1].append(line)
    return payloads


def output_jump_all_protocols(payloads: Payloads) -> Payloads:
    old, new = "-A OUTPUT -p tcp -j ISTIO_OUTPUT", "-A OUTPUT -j ISTIO_OUTPUT"
    return [[new if line == old else line for line in p] for p in payloads]


def drop_invalid_chain(payloads: Payloads) -> Payloads:
    old = "-A PREROUTING -m conntrack --ctstate INVALID -j DROP"
    out: Payloads = []
    for p in payloads:
        lines: list[str] = []
        for line in p:
            if line == old:
                lines += [old.replace("-j DROP", "-j ISTIO_DROP"), "-A ISTIO_DROP -j DROP"]
            else:
                lines.append(line)
            if line == "* mangle" and old in p:
                lines.append("-N ISTIO_DROP")
        out.append(lines)
    return out


def dns_no_owner_udp_return(payloads: Payloads) -> Payloads:
    gone = re.compile(
        r"-A ISTIO_OUTPUT_DNS -p udp --dport 53 -m owner --[ug]id-owner \S+ -j RETURN"
    )
    return [[line for line in p if not gone.fullmatch(line)] for p in payloads]


def dns_v6_jump_only_with_v6_servers(payloads: Payloads) -> Payloads:
    """For the cases here (no IPv6 DNS servers, no capture-all): no nat DNS chain in v6."""
    v4, v6 = payloads
    nat = v6.index("* nat")
    end = v6.index("COMMIT", nat)
    dropped = {"-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS", "-N ISTIO_OUTPUT_DNS"}
    v6 = v6[:nat] + [line for line in v6[nat:end] if line not in dropped] + v6[end:]
    return [v4, v6]


UPSTREAM_GOLDENS: dict[str, tuple[str, tuple[Callable[[Payloads], Payloads], ...]]] = {
    "ipv6-empty-inbound-ports": (
        "2b3d3d86bf62ccaad895562d0382dc4fa010044e",
        (output_jump_all_protocols,),
    ),
    "drop-invalid": (
        "0fa9e7115c03cce56fc1d468fae61457e16b6ae2",
        (output_jump_all_protocols, drop_invalid_chain),
    ),
    "dns-uid-gid": ("0821c3956482ab464601f859fa09276897e2352a", (dns_no_owner_udp_return,)),
    "tproxy": (
        "0821c3956482ab464601f859fa09276897e2352a",
        (dns_no_owner_udp_return, dns_v6_jump_only_with_v6_servers),
    ),
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_GOLDENS))
def test_matches_upstream_golden(name: str) -> None:
    _commit, deltas = UPSTREAM_GOLDENS[name]
    payloads = upstream_payloads((GOLDEN_DIR / "upstream" / f"{name}.golden").read_text())
    for delta in deltas:
        payloads = delta(payloads)
    expected = "".join(line + "\n" for p in payloads for line in p)
    got = render(build_ruleset(ALL_CASES[f"capture-{name}"])).replace(IP6_MARKER, "")
    assert got == expected


def test_upstream_goldens_really_differ_by_the_deltas() -> None:
    """Guard against vacuous deltas: each one changes the upstream text it is applied to."""
    for name, (_commit, deltas) in UPSTREAM_GOLDENS.items():
        payloads = upstream_payloads((GOLDEN_DIR / "upstream" / f"{name}.golden").read_text())
        for delta in deltas:
            changed = delta(payloads)
            assert changed != payloads, f"{name}: {delta.__name__} changes nothing"
            payloads = changed


# --- validation and the non-payload outputs ------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"outbound_ip_ranges_exclude": ("*",)}, "outbound_ip_ranges_exclude"),
        ({"owner_groups_include": tuple(str(g) for g in range(65))}, "cannot exceed 64"),
        ({"host_ipv4_loopback_cidr": "not-a-cidr"}, "failed to parse CIDR 'not-a-cidr'"),
        ({"host_ipv4_loopback_cidr": "127.0.0.1"}, "failed to parse"),
        ({"host_ipv4_loopback_cidr": "10.0.0.1/32"}, "IPv4 loopback address"),
        ({"host_ipv4_loopback_cidr": "::1/128"}, "IPv4 loopback address"),
        ({"host_ipv4_loopback_cidr": "127.0.0.1/7"}, "mask in range [8, 32]"),
        (
            {
                "inbound_interception_mode": "TPROXY",
                "inbound_ports_include": ("*",),
                "inbound_tproxy_mark": "x",
            },
            "must be integers",
        ),
    ],
)
def test_invalid_config_raises(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build_ruleset(IptablesConfig(**fields))  # type: ignore[arg-type]


def test_owner_group_limit_is_inclusive_and_ignores_excludes() -> None:
    build_ruleset(IptablesConfig(owner_groups_include=tuple(str(g) for g in range(64))))
    build_ruleset(IptablesConfig(owner_groups_exclude=tuple(str(g) for g in range(100))))


def test_loopback_cidr_in_range_is_accepted() -> None:
    rules = build_ruleset(IptablesConfig(host_ipv4_loopback_cidr="127.10.0.1/8")).v4
    assert "-A ISTIO_OUTPUT -d 127.10.0.1/8 -j RETURN\n" in rules.restore_payload()


def test_dns_without_servers_is_disabled_with_a_note() -> None:
    ruleset = build_ruleset(IptablesConfig(redirect_dns=True))
    assert "ISTIO_OUTPUT_DNS" not in ruleset.v4.restore_payload()
    assert any("DNS capture disabled" in note for note in ruleset.notes)


def test_invalid_cidrs_are_skipped_with_a_note_like_upstream() -> None:
    ruleset = build_ruleset(
        IptablesConfig(outbound_ip_ranges_include=("10.0.0.0/8", "bogus", "10.1.0.0/255.255.0.0"))
    )
    payload = ruleset.v4.restore_payload()
    assert "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT\n" in payload
    assert "bogus" not in payload and "255.255" not in payload
    assert len(ruleset.notes) == 2


def test_cidrs_are_printed_like_go_netip() -> None:
    """Go's netip.Prefix keeps host bits and prints canonical IPv6; so do we."""
    ruleset = build_ruleset(
        IptablesConfig(
            outbound_ip_ranges_exclude=("10.0.0.1/8", "2001:DB8:0:0::/32"), enable_ipv6=True
        )
    )
    assert "-A ISTIO_OUTPUT -d 10.0.0.1/8 -j RETURN\n" in ruleset.v4.restore_payload()
    assert ruleset.v6 is not None
    assert "-A ISTIO_OUTPUT -d 2001:db8::/32 -j RETURN\n" in ruleset.v6.restore_payload()


def test_cidrs_stay_in_their_family() -> None:
    ruleset = build_ruleset(
        IptablesConfig(
            outbound_ip_ranges_include=("10.0.0.0/8", "fd00::/8"),
            outbound_ip_ranges_exclude=("10.1.0.0/16", "fd00:1::/32"),
            enable_ipv6=True,
        )
    )
    assert ruleset.v6 is not None
    v4, v6 = ruleset.v4.restore_payload(), ruleset.v6.restore_payload()
    assert "fd00" not in v4 and "10.0.0.0/8" in v4 and "10.1.0.0/16" in v4
    assert "10." not in v6 and "fd00::/8" in v6 and "fd00:1::/32" in v6
    assert "::6/128" in v6 and "::1/128" in v6 and "127.0.0." not in v6


def test_list_items_are_not_trimmed() -> None:
    """Upstream's config.Split keeps spaces; the parameter (and so the text) keeps them too."""
    ruleset = build_ruleset(IptablesConfig(outbound_ports_exclude=("15020", " 15021")))
    assert "-A ISTIO_OUTPUT -p tcp --dport  15021 -j RETURN\n" in ruleset.v4.restore_payload()


def test_empty_owner_group_include_returns_everything_like_upstream() -> None:
    ruleset = build_ruleset(IptablesConfig(owner_groups_include=()))
    assert "-A ISTIO_OUTPUT -j RETURN\n" in ruleset.v4.restore_payload()


def test_tproxy_routes_only_with_inbound_capture() -> None:
    tproxy = IptablesConfig(inbound_interception_mode="TPROXY", inbound_ports_include=("*",))
    routes = build_ruleset(tproxy).tproxy_routes
    assert routes is not None and (routes.mark, routes.table) == (1337, 133)
    assert build_ruleset(replace(tproxy, inbound_ports_include=())).tproxy_routes is None
    assert build_ruleset(IptablesConfig(inbound_ports_include=("*",))).tproxy_routes is None


def test_ipv6_passthrough_address_follows_ipv6() -> None:
    assert build_ruleset(IptablesConfig(enable_ipv6=True)).ipv6_passthrough_addr
    assert not build_ruleset(IptablesConfig()).ipv6_passthrough_addr


def test_rules_module_is_lean() -> None:
    """The plugin's hot path: importing the builder pulls in nothing heavy."""
    import subprocess
    import sys

    # Compare with a bare interpreter: site hooks may already import some of these.
    code = (
        "import sys; before = set(sys.modules); import cni.rules; "
        "bad = {'ipaddress', 'click', 'kubernetes', 'pyroute2', 'subprocess', 'json'} "
        "& (set(sys.modules) - before); print(sorted(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parents[2],
    ).stdout.strip()
    assert out == "[]"
