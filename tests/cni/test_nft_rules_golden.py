"""Golden tests for `cni.nft_rules.build_nft_ruleset`: byte-identical to upstream istio-nftables.

Each case builds an `IptablesConfig` and compares the transaction text (exactly what is fed to
`nft -f`) with `golden/nft/NAME.golden`:

- `capture-*`: upstream's `tools/istio-nftables/pkg/capture/run_test.go` cases, the same names
  and flags as the istio-iptables capture cases (`test_rules_golden.CAPTURE_CASES`) plus
  `inbound-ports-empty-tproxy`, on top of its `constructTestConfig()`.
- `plugin-*`: the three configurations the CNI plugin programs for a default injected pod
  (REDIRECT, TPROXY, DNS capture), as in the iptables goldens.

`golden/nft/upstream/` holds upstream's own goldens verbatim, from istio/istio
`tools/istio-nftables/pkg/capture/testdata/NAME.golden`; the commit each was read at is in
`UPSTREAM_GOLDENS`. The newest stored versions of seven of them carry the `counter` statement
of upstream's current `run.go` and must equal ours byte for byte. For the others only older
versions were available: they predate the `counter` statement (and one of them the `route`
type of the mangle output chain), and are compared after applying exactly those named deltas
to our output (`test_matches_older_upstream_golden`); every other byte must still match.

Refresh: `REFRESH_GOLDEN=1 pytest tests/cni/test_nft_rules_golden.py` rewrites our goldens from
the current code; review the diff against upstream before committing it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from cni.iptables_config import IptablesConfig
from cni.nft_rules import build_nft_ruleset
from tests.cni.test_rules_golden import CAPTURE_CASES, PLUGIN_CASES

GOLDEN_DIR = Path(__file__).parent / "golden" / "nft"
UPSTREAM_DIR = GOLDEN_DIR / "upstream"

NFT_CAPTURE_CASES: dict[str, dict[str, object]] = {
    **CAPTURE_CASES,
    "inbound-ports-empty-tproxy": {"inbound_interception_mode": "TPROXY"},
}

ALL_CASES: dict[str, IptablesConfig] = {
    **PLUGIN_CASES,
    **{f"capture-{n}": IptablesConfig(**f) for n, f in NFT_CAPTURE_CASES.items()},  # type: ignore[arg-type]
}


def transaction(name: str) -> str:
    return build_nft_ruleset(ALL_CASES[name]).transaction()


@pytest.mark.parametrize("name", sorted(ALL_CASES))
def test_golden(name: str) -> None:
    got = transaction(name)
    path = GOLDEN_DIR / f"{name}.golden"
    if os.environ.get("REFRESH_GOLDEN"):
        path.write_text(got)
    assert got == path.read_text(), f"{name}: output differs from {path}"


# --- upstream's own goldens ---------------------------------------------------------------


def no_counter(text: str) -> str:
    """Before upstream added a `counter` statement to every rule."""
    return re.sub(r" counter(?= |$)", "", text, flags=re.MULTILINE)


def mangle_output_filter_type(text: str) -> str:
    """Before the mangle output chain became `type route` (marks re-route packets)."""
    return text.replace(
        "istio-proxy-mangle output { type route hook output",
        "istio-proxy-mangle output { type filter hook output",
    )


Delta = Callable[[str], str]

UPSTREAM_GOLDENS: dict[str, tuple[str, tuple[Delta, ...]]] = {
    "basic-exclude-nic": ("2b6f8d79828ecff0d27290de82bf351604d7ffd5", ()),
    "dns-uid-gid": ("64c7327be4199ef1f44ad8f25396fad5d412752b", ()),
    "ipv6-dns-outbound-owner-groups-exclude": ("2b6f8d79828ecff0d27290de82bf351604d7ffd5", ()),
    "ipv6-dns-outbound-owner-groups": ("7adf6095d92023d2e78306c755e97db8f42f9074", ()),
    "ipv6-ipnets": ("64c7327be4199ef1f44ad8f25396fad5d412752b", ()),
    "ip-range": ("7adf6095d92023d2e78306c755e97db8f42f9074", ()),
    "inbound-ports-wildcard": ("96950588c3dc63fb9aeaebc7dc3f1cec14a9dd9b", ()),
    "inbound-ports-empty-tproxy": ("a9a4365650022d3dac4033ea1e43104f2f1f6224", (no_counter,)),
    "ipv6-empty-inbound-ports": ("a0417bbab01b5ec8379ed55bf78021ea5f310d13", (no_counter,)),
    "ipv6-inbound-ports": ("e791a5c7d911c3fc1c0a22dff1055daf21274170", (no_counter,)),
    "ipv6-outbound-ports": ("b512b338037dcf11b32a1d60e59d1744222f5878", (no_counter,)),
    "ipv6-dns-uid-gid": ("5ddd23d373ca36bd0b804f3137a42fc3163ff5b0", (no_counter,)),
    "outbound-owner-groups": ("2bde5a7382af600e9535cfbde5c5473c71a94659", (no_counter,)),
    "host-ipv4-loopback-cidr": ("097687aae0c7501bbb2aa4ea232cc14c92924db3", (no_counter,)),
    "ipnets-with-kube-virt-interfaces": (
        "11d3fd6643b32c26e84421fc2882a6d6bd8fe048", (no_counter,)),
    "inbound-ports-wildcard-tproxy": (
        "8014fb694ab94dacef8f8a5d887c8289cde3a8ef", (no_counter, mangle_output_filter_type)),
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_GOLDENS))
def test_matches_upstream_golden(name: str) -> None:
    _commit, deltas = UPSTREAM_GOLDENS[name]
    got = transaction(f"capture-{name}")
    for delta in deltas:
        got = delta(got)
    assert got == (UPSTREAM_DIR / f"{name}.golden").read_text()


def test_every_upstream_golden_is_compared() -> None:
    stored = {p.stem for p in UPSTREAM_DIR.glob("*.golden")}
    assert stored == set(UPSTREAM_GOLDENS)
    assert stored <= set(NFT_CAPTURE_CASES)


def test_deltas_are_not_vacuous() -> None:
    """Each delta changes our output for the case it is applied to."""
    for name, (_commit, deltas) in UPSTREAM_GOLDENS.items():
        got = transaction(f"capture-{name}")
        for delta in deltas:
            changed = delta(got)
            assert changed != got, f"{name}: {delta.__name__} changes nothing"
            got = changed


# --- properties of the rule set --------------------------------------------------------------


def test_every_rule_counts() -> None:
    for name in ALL_CASES:
        for line in transaction(name).splitlines():
            if line.startswith(("add rule", "insert rule")):
                assert " counter " in line, f"{name}: {line}"


def test_ipv6_matches_only_with_ipv6() -> None:
    for name, cfg in ALL_CASES.items():
        text = transaction(name)
        if not cfg.enable_ipv6:
            assert "ip6 " not in text and "tproxy ip6" not in text, name


def test_mangle_only_for_tproxy_or_drop_invalid_and_raw_only_for_dns() -> None:
    for name, cfg in ALL_CASES.items():
        tables = [t.name for t in build_nft_ruleset(cfg).tables]
        tproxy = cfg.inbound_interception_mode == "TPROXY"
        assert ("istio-proxy-mangle" in tables) == (tproxy or cfg.drop_invalid), name
        dns = cfg.redirect_dns and bool(
            cfg.capture_all_dns or cfg.dns_servers_v4 or cfg.dns_servers_v6)
        assert ("istio-proxy-raw" in tables) == dns, name
        assert tables[0] == "istio-proxy-nat"


def test_inserts_resolve_like_upstream() -> None:
    """An insert into an empty chain, or at/after its end, is an append (nftables refuses it)."""
    rs = build_nft_ruleset(ALL_CASES["capture-inbound-ports-empty-tproxy"])
    mangle = rs.table("istio-proxy-mangle")
    assert mangle is not None
    inbound = [r for r in mangle.rules if r.chain == "istio-inbound"]
    assert [r.index for r in inbound] == [None, None, None]
    assert mangle.chain_rules()["istio-inbound"][0] == "meta l4proto tcp mark 1337 counter return"


def test_tproxy_routes_and_passthrough_follow_iptables_mode() -> None:
    rs = build_nft_ruleset(ALL_CASES["plugin-tproxy"])
    assert rs.tproxy_routes is not None
    assert (rs.tproxy_routes.mark, rs.tproxy_routes.table) == (1337, 133)
    assert build_nft_ruleset(ALL_CASES["capture-inbound-ports-empty-tproxy"]).tproxy_routes is None
    assert build_nft_ruleset(ALL_CASES["capture-ipv6-ipnets"]).ipv6_passthrough_addr
    assert not build_nft_ruleset(ALL_CASES["plugin-basic"]).ipv6_passthrough_addr


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"outbound_ip_ranges_exclude": ("*",)}, "outbound_ip_ranges_exclude"),
        ({"owner_groups_include": tuple(str(g) for g in range(65))}, "cannot exceed 64"),
        ({"host_ipv4_loopback_cidr": "10.0.0.1/32"}, "IPv4 loopback address"),
    ],
)
def test_invalid_config_raises_like_iptables_mode(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        build_nft_ruleset(IptablesConfig(**fields))  # type: ignore[arg-type]


def test_dns_without_servers_is_disabled_with_a_note() -> None:
    rs = build_nft_ruleset(IptablesConfig(redirect_dns=True))
    assert rs.table("istio-proxy-raw") is None
    assert "istio-output-dns" not in rs.transaction()
    assert any("DNS capture disabled" in note for note in rs.notes)


def test_nft_rules_module_is_lean() -> None:
    """The plugin's hot path: importing the builder (or the applier) pulls in nothing heavy;
    subprocess, ctypes' libnftables and shutil wait until a way to run nft is chosen."""
    import subprocess
    import sys

    code = (
        "import sys; before = set(sys.modules); import cni.nft_rules; "
        "bad = {'ipaddress', 'click', 'kubernetes', 'pyroute2', 'subprocess', 'json', 'ctypes'} "
        "& (set(sys.modules) - before); print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2]).stdout.strip()
    assert out == "[]"
    code = (
        "import sys; before = set(sys.modules); import cni.backends.nftables; "
        "bad = {'click', 'kubernetes', 'pyroute2', 'subprocess', 'json', 'shutil'} "
        "& (set(sys.modules) - before); print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2]).stdout.strip()
    assert out == "[]"


# --- the translation from a pod's redirect spec -------------------------------------------------


def pod_transaction(annotations: dict[str, str], env: dict[str, str] | None = None,
                    ipv6: bool = False) -> str:
    from cni.podinfo import extract_pod_info
    from cni.redirect import redirect_from_pod, to_iptables_config

    proxy = {"name": "istio-proxy", "args": ["proxy", "sidecar"],
             "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}
    pod = extract_pod_info({
        "metadata": {"name": "p", "namespace": "n",
                     "annotations": {"sidecar.istio.io/status": "{}", **annotations}},
        "spec": {"containers": [proxy]}})
    return build_nft_ruleset(to_iptables_config(redirect_from_pod(pod), ipv6)).transaction()


@pytest.mark.parametrize(
    ("annotations", "env", "golden"),
    [
        ({}, {}, "plugin-basic"),
        ({"sidecar.istio.io/interceptionMode": "TPROXY"}, {}, "plugin-tproxy"),
        ({}, {"ISTIO_META_DNS_CAPTURE": "true"}, "plugin-dns"),
    ],
)
def test_a_default_injected_pod_gets_the_plugin_transaction(
    annotations: dict[str, str], env: dict[str, str], golden: str
) -> None:
    got = pod_transaction(annotations, env)
    assert got == (GOLDEN_DIR / f"{golden}.golden").read_text()


def test_annotations_reach_the_transaction_in_canonical_form() -> None:
    got = pod_transaction({
        "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.1/8,fd00:0::5/128",
        "traffic.sidecar.istio.io/includeOutboundPorts": "8080, 09090",
        "traffic.sidecar.istio.io/excludeInterfaces": "net1",
        "istio.io/reroute-virtual-interfaces": "tun0",
    }, ipv6=True)
    assert "add rule inet istio-proxy-nat istio-output ip daddr 10.0.0.1/8 counter return\n" in got
    assert "ip6 daddr fd00::5/128 counter return\n" in got
    assert "tcp dport 9090 counter jump istio-redirect\n" in got and "09090" not in got
    assert "add rule inet istio-proxy-nat prerouting iifname net1 counter return\n" in got
    assert "iifname tun0 counter jump istio-redirect\n" in got
    assert " 8080" in got and ", " not in got.replace("{ 53, ", "")
