"""`istio-cni-node rules`, driven through click's CliRunner.

The flag sets mirror upstream's capture test cases and the plugin's defaults; their expected
output is the golden file `test_rules_golden.py` pins against upstream, so the command prints
what istio-iptables would apply for the same flags.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from admin.rules_cmd import config_from_flags, rules_command
from cni.iptables_config import IptablesConfig

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "cni" / "golden"

FLAG_CASES: dict[str, list[str]] = {
    # istio-iptables' own defaults (with UID/GID 1337) are upstream's "empty" case.
    "capture-empty": [],
    "plugin-basic": ["-b", "*", "-d", "15020,15021,15090", "-o", "15020", "-i", "*"],
    "plugin-tproxy": [
        *("-m", "TPROXY", "-b", "*", "-d", "15020,15021,15090", "-o", "15020", "-i", "*"),
    ],
    "plugin-dns": [
        *("-b", "*", "-d", "15020,15021,15090", "-o", "15020", "-i", "*"),
        *("--redirect-dns", "--capture-all-dns"),
    ],
    "capture-tproxy": [
        *("--istio-inbound-interception-mode", "TPROXY", "--istio-inbound-ports", "*"),
        *("--istio-service-exclude-cidr", "1.1.0.0/16", "--istio-service-cidr", "9.9.0.0/16"),
        *("--redirect-dns", "--dns-servers-v4", "127.0.0.53", "--proxy-gid", "1337"),
        *("--istio-exclude-interfaces", "not-istio-nic", "--ipv6"),
    ],
    "capture-dns-uid-gid": [
        *("--redirect-dns", "--dns-servers-v4", "127.0.0.53", "--dns-servers-v6", "::127.0.0.53"),
        *("-g", "1,2", "-u", "3,4", "--ipv6"),
    ],
    "capture-ipv6-dns-uid-gid": ["--ipv6", "--redirect-dns", "-g", "1,2", "-u", "3,4"],
    "capture-ipv6-ipnets": [
        *("-b", "4000,5000", "-d", "6000,7000,", "-k", "eth0,eth1"),
        *("-x", "2001:db8::/32", "-i", "2001:db8::/32", "--ipv6"),
    ],
    "capture-outbound-owner-groups": ["--outbound-owner-groups", "java,202"],
    "capture-outbound-owner-groups-exclude": ["--outbound-owner-groups-exclude", "888,ftp"],
    "capture-drop-invalid": ["--drop-invalid"],
    "capture-host-ipv4-loopback-cidr": ["--host-ipv4-loopback-cidr", "127.0.0.1/8"],
    "capture-kube-virt-interfaces": ["-k", "eth1,eth2", "-i", "*"],
    "capture-outbound-ports-include": ["-q", "32000,31000"],
    "capture-inbound-ports-wildcard-tproxy": ["-b", "*", "-m", "TPROXY"],
    "capture-basic-exclude-nic": ["-c", "not-istio-nic"],
    "capture-loopback-outbound-iprange": [
        *("-i", "127.1.2.3/32", "--redirect-dns", "--dns-servers-v4", "127.0.0.53"),
        *("-g", "1,2", "-u", "3,4"),
    ],
}


def run(args: list[str]):  # noqa: ANN201 - click's Result
    return CliRunner().invoke(rules_command, args)


@pytest.mark.parametrize("name", sorted(FLAG_CASES))
def test_output_matches_golden(name: str) -> None:
    result = run(FLAG_CASES[name])
    assert result.exit_code == 0, result.output
    assert result.stdout == (GOLDEN_DIR / f"{name}.golden").read_text()
    # Upstream's ipv6-dns-uid-gid case sets REDIRECT_DNS with no servers: DNS is turned off,
    # with a warning, as istio-iptables does.
    assert "error" not in result.stderr


def test_defaults_are_istio_iptables_defaults() -> None:
    cfg = config_from_flags()
    assert cfg == IptablesConfig(inbound_interception_mode="REDIRECT")
    assert cfg.inbound_ports_include == () and cfg.outbound_ip_ranges_include == ()


def test_gid_defaults_to_uid_like_upstream() -> None:
    cfg = config_from_flags(proxy_uid="3,4")
    assert cfg.proxy_gid == ("3", "4")


def test_long_and_short_names_agree() -> None:
    long = run(["--envoy-port", "16001", "--inbound-capture-port", "16006", "--proxy-uid", "7"])
    short = run(["-p", "16001", "-z", "16006", "-u", "7"])
    assert long.exit_code == short.exit_code == 0
    assert long.stdout == short.stdout
    assert "--to-ports 16001" in long.stdout and "--uid-owner 7 " in long.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["-x", "*"], "outbound_ip_ranges_exclude"),
        (["-m", "NONE"], "--istio-inbound-interception-mode"),
        (["--host-ipv4-loopback-cidr", "10.0.0.1/32"], "IPv4 loopback"),
        (["--dns-servers-v4", "::1"], "--dns-servers-v4"),
        (["--dns-servers-v6", "10.0.0.1"], "--dns-servers-v6"),
        # every flag is checked with the plugin's parsers before anything is built
        (["-p", "abc"], "--envoy-port/-p: 'abc' is not a port number"),
        (["-p", "70000"], "--envoy-port/-p: '70000' is not a port number"),
        (["-z", "-1"], "--inbound-capture-port/-z: '-1'"),
        (["-e", "1e3"], "--inbound-tunnel-port/-e: '1e3'"),
        (["-u", "abc"], "--proxy-uid/-u: 'abc' is not a user or group id"),
        (["-g", "1,4294967295"], "--proxy-gid/-g: '4294967295'"),
        (["-c", "eth0;rm"], "--istio-exclude-interfaces/-c: 'eth0;rm' is not a valid interface"),
        (["-k", "eth0 -j ACCEPT"], "--kube-virt-interfaces/-k: 'eth0 -j ACCEPT'"),
        (["-b", "80,x"], "--istio-inbound-ports/-b: 'x'"),
        (["-d", "*"], "--istio-local-exclude-ports/-d: '*'"),
        (["-q", "80\n-A X"], "--istio-outbound-ports/-q:"),
        (["-i", "junk"], "--istio-service-cidr/-i: 'junk' is not a CIDR"),
        (["-x", "10.0.0.0/8,*"], "--istio-service-exclude-cidr/-x: '*' is not a CIDR"),
        (["-t", "abc"], "--istio-inbound-tproxy-mark/-t: 'abc'"),
        (["-r", "4294967296"], "--istio-inbound-tproxy-route-table/-r: '4294967296'"),
        (["--outbound-owner-groups", "java,-j"], "--outbound-owner-groups: '-j'"),
        (["--outbound-owner-groups-exclude", "a b"], "--outbound-owner-groups-exclude: 'a b'"),
        (["-o", "json"], "-o is istio-iptables' --istio-local-outbound-ports-exclude"),
    ],
)
def test_invalid_input_is_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    result = run(args)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("istio-cni-node rules: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in result.output


def test_a_huge_junk_value_is_cut_in_the_error_line() -> None:
    result = run(["-c", "x;" * 100_000])
    assert result.exit_code == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert "--istio-exclude-interfaces/-c" in line and len(line) < 400


def test_values_reach_the_payload_in_their_parsed_form() -> None:
    """What the plugin would program for the same numbers: ports and ids as integers, CIDRs as
    Go prints them, whatever spacing or leading zeros they were given with."""
    spaced = run(["-p", " 16001", "-u", "007", "-i", "2001:DB8:0::/32", "--ipv6"])
    plain = run(["-p", "16001", "-u", "7", "-i", "2001:db8::/32", "--ipv6"])
    assert spaced.exit_code == plain.exit_code == 0, spaced.output
    assert spaced.stdout == plain.stdout and "--to-ports 16001" in plain.stdout


def test_notes_go_to_stderr() -> None:
    result = run(["--redirect-dns"])
    assert result.exit_code == 0
    assert "DNS capture disabled" in result.stderr
    assert "ISTIO_OUTPUT_DNS" not in result.stdout


def test_restore_text_marks_the_ipv6_payload() -> None:
    from cni.rules import build_ruleset

    text = build_ruleset(IptablesConfig(enable_ipv6=True)).restore_text()
    v4, v6 = text.split("# ip6tables-restore\n")
    assert v4.startswith("* nat\n") and v4.endswith("COMMIT\n")
    assert "::6/128" in v6 and "127.0.0.6" not in v6


# --- --native-nftables: the istio-nftables transaction ---------------------------------------

NFT_FLAG_CASES: dict[str, list[str]] = {
    **FLAG_CASES,
    "capture-inbound-ports-empty-tproxy": ["-m", "TPROXY"],
}


@pytest.mark.parametrize("name", sorted(NFT_FLAG_CASES))
def test_native_nftables_output_matches_golden(name: str) -> None:
    """The same flags print the transaction `test_nft_rules_golden.py` pins against upstream."""
    result = run(["--native-nftables", *NFT_FLAG_CASES[name]])
    assert result.exit_code == 0, result.output
    assert result.stdout == (GOLDEN_DIR / "nft" / f"{name}.golden").read_text()
    assert "error" not in result.stderr


def test_native_nftables_is_one_command_per_line_for_nft() -> None:
    out = run(["--native-nftables", *FLAG_CASES["capture-tproxy"]]).stdout
    lines = out.splitlines()
    assert out.endswith("\n") and all(lines)
    assert lines[:2] == ["add table inet istio-proxy-nat", "flush table inet istio-proxy-nat"]
    assert all(line.startswith(("add ", "flush ", "insert ")) for line in lines)
    assert "# ip6tables-restore" not in out and "COMMIT" not in out


def test_native_nftables_errors_and_notes_like_iptables_mode() -> None:
    bad = run(["--native-nftables", "-x", "*"])
    assert bad.exit_code == 2 and bad.stdout == ""
    assert bad.stderr.startswith("istio-cni-node rules: error: ")
    note = run(["--native-nftables", "--redirect-dns"])
    assert note.exit_code == 0 and "DNS capture disabled" in note.stderr
    assert "istio-output-dns" not in note.stdout
