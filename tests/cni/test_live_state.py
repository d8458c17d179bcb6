"""cni.live_state: our payload params translated to iptables-save's form, and the diff.

The pure tests pin the translation; the root tests prove it against the real thing: every
rule set applied with iptables-restore (nft and legacy) saves exactly as `wanted_state` says.
"""

from __future__ import annotations

import subprocess

import pytest

from cni.live_state import UnsupportedRule, diff_state, parse_save, save_form, wanted_state
from cni.ruleset import FamilyRules, Rule
from tests.cni.netns_fixtures import CONFIGS, need, ruleset


def rule(table: str, text: str) -> Rule:
    params = tuple(text.split())
    return Rule(table, params[1], params)


@pytest.mark.parametrize(
    ("text", "ipv6", "want"),
    [
        ("-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --uid-owner "
         "1337 -j ISTIO_IN_REDIRECT", False,
         "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner "
         "--uid-owner 1337 -j ISTIO_IN_REDIRECT"),
        ("-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j REDIRECT --to-port 15053", False,
         "-A ISTIO_OUTPUT_DNS -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053"),
        ("-I ISTIO_INBOUND 2 -p tcp -s ::6/128 -i lo -j RETURN", True,
         "-A ISTIO_INBOUND -s ::6/128 -i lo -p tcp -j RETURN"),
        ("-A ISTIO_TPROXY ! -d ::1/128 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff "
         "--on-port 15006", True,
         "-A ISTIO_TPROXY ! -d ::1/128 -p tcp -j TPROXY --on-port 15006 --on-ip :: "
         "--tproxy-mark 0x539/0xffffffff"),
        ("-A OUTPUT -p tcp -m connmark --mark 1337 -j CONNMARK --restore-mark", False,
         "-A OUTPUT -p tcp -m connmark --mark 0x539 -j CONNMARK --restore-mark "
         "--nfmask 0xffffffff --ctmask 0xffffffff"),
        ("-A ISTIO_DIVERT -j MARK --set-mark 1337", False,
         "-A ISTIO_DIVERT -j MARK --set-xmark 0x539/0xffffffff"),
        ("-A ISTIO_OUTPUT -d 10.1.2.3/8 -j RETURN", False,
         "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j RETURN"),
    ],
)
def test_save_form(text: str, ipv6: bool, want: str) -> None:
    assert save_form(rule("nat", text), ipv6) == want


def test_unknown_option_is_refused() -> None:
    with pytest.raises(UnsupportedRule):
        save_form(rule("nat", "-A ISTIO_OUTPUT -m statistic --probability 0.5 -j RETURN"), False)


BASIC_SAVE = """\
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:ISTIO_OUTPUT - [0:0]
:KUBE-FOREIGN - [0:0]
-A PREROUTING -j KUBE-FOREIGN
-A OUTPUT -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p tcp -m tcp --dport 15020 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
COMMIT
"""
WANT = FamilyRules(False, (
    rule("nat", "-A OUTPUT -j ISTIO_OUTPUT"),
    rule("nat", "-A ISTIO_OUTPUT -p tcp --dport 15020 -j RETURN"),
    rule("nat", "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN"),
))


def test_identical_ignores_foreign_rules_and_chains() -> None:
    diff = diff_state(BASIC_SAVE, WANT)
    assert diff.state == "identical"


def test_clean_netns() -> None:
    diff = diff_state("*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j KUBE-X\nCOMMIT\n", WANT)
    assert diff.state == "clean"
    assert len(diff.missing) == 4 and diff.extra == ()


def test_flushed_chain_reports_missing_rules() -> None:
    flushed = BASIC_SAVE.replace("-A ISTIO_OUTPUT -p tcp -m tcp --dport 15020 -j RETURN\n", "")
    diff = diff_state(flushed, WANT)
    assert diff.state == "conflict"
    assert diff.missing == ("-t nat -A ISTIO_OUTPUT -p tcp -m tcp --dport 15020 -j RETURN",)


def test_extra_chain_and_jump_are_reported() -> None:
    extra = BASIC_SAVE.replace(":KUBE-FOREIGN", ":ISTIO_INBOUND - [0:0]\n:KUBE-FOREIGN").replace(
        "-A PREROUTING -j KUBE-FOREIGN", "-A PREROUTING -p tcp -j ISTIO_INBOUND")
    diff = diff_state(extra, WANT)
    assert set(diff.extra) == {"-t nat -N ISTIO_INBOUND",
                               "-t nat -A PREROUTING -p tcp -j ISTIO_INBOUND"}
    assert diff.missing == ()


def test_chains_named_like_ours_are_not_ours() -> None:
    """Upstream's exact chain names in our tables only: a lookalike, or one of our names in a
    table we do not use, is someone else's and never in a diff."""
    lookalikes = BASIC_SAVE.replace(":KUBE-FOREIGN", ":ISTIO_CUSTOM - [0:0]\n:ISTIOOUTPUT - [0:0]"
                                    "\n:KUBE-FOREIGN").replace(
        "-A PREROUTING -j KUBE-FOREIGN", "-A PREROUTING -j ISTIO_CUSTOM\n-A OUTPUT -j ISTIOOUTPUT")
    lookalikes += ("*filter\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n"
                   "-A OUTPUT -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -j DROP\nCOMMIT\n")
    assert diff_state(lookalikes, WANT).state == "identical"


def test_reordered_chain_is_a_conflict() -> None:
    lines = BASIC_SAVE.splitlines()
    lines[7], lines[8] = lines[8], lines[7]
    assert diff_state("\n".join(lines), WANT).state == "conflict"


def test_parse_save_reads_counters_form() -> None:
    text = "*nat\n:OUTPUT ACCEPT [1:2]\n[3:4] -A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n"
    assert parse_save(text) == {"nat": {"OUTPUT": ["-A OUTPUT -j ISTIO_OUTPUT"]}}


@pytest.mark.root
@pytest.mark.parametrize("flavor", ["nft", "legacy"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_normalizer_matches_real_iptables_save(make_netns, flavor: str, name: str) -> None:  # noqa: ANN001
    rs = ruleset(name)
    for fam in rs.families():
        prefix = "ip6tables" if fam.ipv6 else "iptables"
        need(f"{prefix}-{flavor}-restore", f"{prefix}-{flavor}-save")
        ns = make_netns()
        subprocess.run(["ip", "netns", "exec", ns.name, f"{prefix}-{flavor}-restore", "--noflush"],
                       input=fam.restore_payload(), text=True, check=True)
        live = parse_save(ns.run(f"{prefix}-{flavor}-save"))
        for table, chains in wanted_state(fam).items():
            for chain, lines in chains.items():
                got = live[table][chain]
                if chain.startswith("ISTIO"):
                    assert got == lines, (table, chain)
                else:
                    assert [g for g in got if g in lines] == lines, (table, chain)
        assert diff_state(ns.run(f"{prefix}-{flavor}-save"), fam).state == "identical"
