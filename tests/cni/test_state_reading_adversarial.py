"""Live state is read from a structured form and compared exactly (#17, class 4).

A pod whose root has NET_ADMIN in its own netns can write whatever it likes there: comments
with braces, quotes, escapes and newlines on tables and rules, chains named like ours, raw names
that some extensions print unquoted. None of it may make CHECK see our rules when they are gone
(forge), or miss them when they are there (hide). Native nftables mode reads our tables as
nftables' JSON, each listed by name; iptables mode parses iptables-save as iptables-save frames
it, and has the kernel confirm (`-C`) what the text shows of ours.

Each forge below was believed on 170a823 (CHECK identical, the rule gone); each hide made
CHECK report our intact tables missing.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from cni import nft_exec
from cni.apply import check, program
from cni.backends import RuleMode
from cni.backends.nftables import NftablesBackend
from cni.netns import in_netns
from cni.nft_rules import build_nft_ruleset
from cni.nft_ruleset import NAT_TABLE
from testbed.netns import Netns
from tests.cni.netns_fixtures import CONFIGS, need, ruleset

pytestmark = pytest.mark.root

REDIRECT_NFT = "meta l4proto tcp counter redirect to :15001"
REDIRECT_IPT = "-t nat -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"
JUMP_IPT = "-t nat -A OUTPUT -j ISTIO_OUTPUT"


def nft_apply(ns: Netns, text: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-f", "-"], input=text, text=True,
                   check=True, capture_output=True, timeout=30)


@pytest.fixture(params=["libnftables", "nft"])
def way(request: pytest.FixtureRequest) -> str:
    need("nft")
    if request.param == "libnftables" and nft_exec.LibNftables.load() is None:
        pytest.skip(f"{nft_exec.LIBRARY} not installed")
    return request.param


def nft_mode(way: str) -> RuleMode:
    return RuleMode(native_nftables=True, nftables_backend=way)


def nft_rules():  # noqa: ANN201
    return build_nft_ruleset(CONFIGS["basic"])


def delete_nft_rule(ns: Netns, chain: str, statement: str) -> None:
    """Delete the rule of our nat table's `chain` that holds `statement` (a JSON key)."""
    listing = json.loads(ns.run("nft", "-j", "list", "chain", "inet", NAT_TABLE, chain))
    [handle] = [o["rule"]["handle"] for o in listing["nftables"]
                if "rule" in o and any(statement in s for s in o["rule"]["expr"])]
    ns.run("nft", "delete", "rule", "inet", NAT_TABLE, chain, "handle", str(handle))


def test_a_foreign_table_comment_cannot_hide_our_tables(netns: Netns, way: str) -> None:
    """A table listed before ours, whose comment opens blocks it never closes."""
    nft_apply(netns, 'add table inet aaa { comment "{ { { table inet istio-proxy-nat {" ; }\n')
    rs = nft_rules()
    assert program(netns.path, rs, nft_mode(way), ipv6=False) == "applied"
    diff = check(netns.path, rs, nft_mode(way), ipv6=False)
    assert diff.state == "identical", diff
    assert program(netns.path, rs, nft_mode(way), ipv6=False) == "already-programmed"


def test_a_foreign_table_comment_cannot_forge_a_deleted_rule(netns: Netns, way: str) -> None:
    """The redirect to 15001 deleted; a table added after ours whose comment (< 128 bytes,
    newlines and braces) spells it back into our chain."""
    rs = nft_rules()
    program(netns.path, rs, nft_mode(way), ipv6=False)
    delete_nft_rule(netns, "istio-redirect", "redirect")
    forged = ("\n}\ntable inet istio-proxy-nat {\nchain istio-redirect {\n"
              f"{REDIRECT_NFT}\n}}\n}}\ntable inet x {{\n")
    assert len(forged.encode()) <= 128
    nft_apply(netns, f'add table inet zzz {{ comment "{forged}" ; }}\n')
    assert REDIRECT_NFT in netns.run("nft", "list", "ruleset")  # what a line reader saw
    diff = check(netns.path, rs, nft_mode(way), ipv6=False)
    assert diff.missing == (f"inet {NAT_TABLE} istio-redirect: {REDIRECT_NFT}",), diff
    assert diff.extra == ()


def test_comments_on_our_own_objects_are_differences(netns: Netns, way: str) -> None:
    """A rule of ours spelled again in a comment on a rule inside our chain is that rule plus
    a comment: an extra, never the missing one; a comment on our table is a difference too,
    and the fix puts both right."""
    rs = nft_rules()
    program(netns.path, rs, nft_mode(way), ipv6=False)
    delete_nft_rule(netns, "istio-redirect", "redirect")
    nft_apply(netns, f"add rule inet {NAT_TABLE} istio-redirect meta l4proto tcp counter "
                     f'comment "{REDIRECT_NFT}"\n')
    diff = check(netns.path, rs, nft_mode(way), ipv6=False)
    assert diff.missing == (f"inet {NAT_TABLE} istio-redirect: {REDIRECT_NFT}",)
    assert len(diff.extra) == 1 and "comment" in diff.extra[0]
    with in_netns(netns.path):
        assert NftablesBackend(way).replace(rs) is True
    assert check(netns.path, rs, nft_mode(way), ipv6=False).state == "identical"


def test_a_dormant_table_of_ours_is_not_in_sync(netns: Netns, way: str) -> None:
    """`flags dormant` switches a table off without changing a rule: CHECK must see it, and
    the fix must switch it back on."""
    rs = nft_rules()
    program(netns.path, rs, nft_mode(way), ipv6=False)
    netns.run("nft", "add", "table", "inet", NAT_TABLE, "{ flags dormant ; }")
    diff = check(netns.path, rs, nft_mode(way), ipv6=False)
    assert diff.state == "conflict" and any(NAT_TABLE in line for line in diff.extra), diff
    assert program(netns.path, rs, nft_mode(way), ipv6=False) == "applied"
    assert "dormant" not in netns.run("nft", "list", "table", "inet", NAT_TABLE)
    assert check(netns.path, rs, nft_mode(way), ipv6=False).state == "identical"


def test_both_ways_read_a_hostile_netns_the_same(netns: Netns) -> None:
    need("nft")
    if nft_exec.LibNftables.load() is None:
        pytest.skip(f"{nft_exec.LIBRARY} not installed")
    nft_apply(netns, 'add table inet aaa { comment "{ \' {" ; }\n')
    rs = nft_rules()
    program(netns.path, rs, nft_mode("nft"), ipv6=False)
    nft_apply(netns, f'add rule inet {NAT_TABLE} output counter comment "}} {{ \' x"\n')
    with in_netns(netns.path):
        lib, binary = NftablesBackend("libnftables"), NftablesBackend("nft")
        assert lib._read("here") == binary._read("here")
        assert lib.check(rs) == binary.check(rs)
        assert lib.check(rs).extra == (f'inet {NAT_TABLE} output: counter {{"comment":"}} {{ '
                                       f"' x\"}}",)


# --- iptables mode -------------------------------------------------------------------------
FLAVORS = ["nft", "legacy", "python-iptables"]
TOOL = {"nft": "iptables-nft", "legacy": "iptables-legacy", "python-iptables": "iptables-legacy"}


@pytest.fixture(params=FLAVORS)
def backend(request: pytest.FixtureRequest) -> str:
    need(f"{TOOL[request.param]}-save", f"{TOOL[request.param]}-restore")
    return request.param


def ipt(ns: Netns, backend: str, *argv: str) -> None:
    ns.run(TOOL[backend], *argv)


def test_a_comment_with_newlines_cannot_forge_a_deleted_jump(netns: Netns, backend: str) -> None:
    """Our jump from nat OUTPUT deleted; a foreign rule's comment spells it on a line of its
    own (iptables-save prints a comment's newline as is)."""
    rs = ruleset("basic")
    program(netns.path, rs, backend)
    ipt(netns, backend, "-t", "nat", "-D", "OUTPUT", "-j", "ISTIO_OUTPUT")
    ipt(netns, backend, "-t", "nat", "-A", "OUTPUT", "-d", "192.0.2.1", "-m", "comment",
        "--comment", 'x\n-A OUTPUT -j ISTIO_OUTPUT\n"q\\', "-j", "RETURN")
    assert "\n-A OUTPUT -j ISTIO_OUTPUT\n" in netns.run(f"{TOOL[backend]}-save")
    diff = check(netns.path, rs, backend)
    assert diff.missing == (JUMP_IPT,) and diff.extra == (), diff


def test_a_raw_name_with_newlines_cannot_forge_a_deleted_rule(netns: Netns,
                                                              backend: str) -> None:
    """`-m recent --name` is printed raw: a name holding newlines spells a whole line of one
    of our chains. The text cannot tell; the kernel (`-C`) can."""
    rs = ruleset("basic")
    program(netns.path, rs, backend)
    ipt(netns, backend, "-t", "nat", "-F", "ISTIO_REDIRECT")
    ipt(netns, backend, "-t", "nat", "-N", "AAA")
    ipt(netns, backend, "-t", "nat", "-A", "AAA", "-m", "recent", "--rcheck", "--name",
        "x\n-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n-A AAA", "-j", "RETURN")
    save = netns.run(f"{TOOL[backend]}-save")
    if backend != "python-iptables":
        assert "\n" + REDIRECT_IPT.removeprefix("-t nat ") + "\n" in save
    diff = check(netns.path, rs, backend)
    assert REDIRECT_IPT in diff.missing, diff


def test_comments_with_quotes_escapes_and_newlines_are_one_value(netns: Netns,
                                                                 backend: str) -> None:
    """Foreign rules whose comments hold what would end a line or a quote are foreign rules:
    CHECK is in sync, and the fix keeps them."""
    for text in ('a "quoted" \\ back\\slash', "new\nline\n*filter\nCOMMIT", "'single' \"",
                 "-j ISTIO_OUTPUT", ":ISTIO_INBOUND - [0:0]"):
        ipt(netns, backend, "-t", "nat", "-A", "OUTPUT", "-d", "192.0.2.1", "-m", "comment",
            "--comment", text, "-j", "RETURN")
    rs = ruleset("basic")
    assert program(netns.path, rs, backend) == "applied"
    assert check(netns.path, rs, backend).state == "identical"
    before = netns.run(f"{TOOL[backend]}-save").count("192.0.2.1")
    with in_netns(netns.path):
        from cni.backends import select_backend

        assert select_backend(backend).replace(ruleset("dns")) is True
    assert check(netns.path, ruleset("dns"), backend).state == "identical"
    assert netns.run(f"{TOOL[backend]}-save").count("192.0.2.1") == before == 5


def test_chains_named_like_ours_in_tables_we_do_not_own(netns: Netns, backend: str) -> None:
    """`ISTIO_OUTPUT` in filter and `ISTIO_CUSTOM` in nat are someone else's: not a
    conflict for the ADD, not in CHECK, not removed by the fix."""
    ipt(netns, backend, "-t", "filter", "-N", "ISTIO_OUTPUT")
    ipt(netns, backend, "-t", "filter", "-A", "OUTPUT", "-j", "ISTIO_OUTPUT")
    ipt(netns, backend, "-t", "nat", "-N", "ISTIO_CUSTOM")
    ipt(netns, backend, "-t", "nat", "-A", "ISTIO_CUSTOM", "-j", "RETURN")
    rs = ruleset("basic")
    assert program(netns.path, rs, backend) == "applied"
    assert check(netns.path, rs, backend).state == "identical"
    with in_netns(netns.path):
        from cni.backends import select_backend

        select_backend(backend).replace(ruleset("dns"))
        select_backend(backend).reset(ruleset("dns"))
    save = netns.run(f"{TOOL[backend]}-save")
    assert ":ISTIO_CUSTOM" in save and "-A OUTPUT -j ISTIO_OUTPUT" in save
    assert ":ISTIO_REDIRECT" not in save


def test_a_raw_name_spelling_a_rule_that_is_there_changes_nothing(netns: Netns,
                                                                  backend: str) -> None:
    """The same spelling while the rule is there: not a second copy (an extra), because a
    line out of its chain's place makes our chains be read one by one; CHECK stays in sync,
    and after a fix it is in sync again (no repair that never converges)."""
    rs = ruleset("basic")
    program(netns.path, rs, backend)
    ipt(netns, backend, "-t", "nat", "-N", "AAA")
    ipt(netns, backend, "-t", "nat", "-A", "AAA", "-m", "recent", "--rcheck", "--name",
        "x\n-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n-A AAA", "-j", "RETURN")
    assert check(netns.path, rs, backend).state == "identical"
    with in_netns(netns.path):
        from cni.backends import select_backend

        assert select_backend(backend).replace(ruleset("dns")) is True
    assert check(netns.path, ruleset("dns"), backend).state == "identical"
