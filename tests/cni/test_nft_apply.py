"""The nftables backend in real netns, both ways (libnftables in-process and `nft -f -`).

Driven as the pod pipeline drives every backend (`cni.apply`, the link step included).

Program is one transaction, idempotent (a re-ADD leaves the rules' handles alone), replaces
our own tables when they differ and never touches anything else; CHECK names missing and
extra rules; both ways leave the same `nft list ruleset`.
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from cni import apply, nft_exec
from cni.backends import RuleMode
from cni.backends.nftables import NftablesBackend
from cni.errors import InvalidNetNS, RulesApplyFailed
from cni.live_state import StateDiff
from cni.netns import in_netns
from cni.nft_rules import build_nft_ruleset
from cni.nft_ruleset import NftRuleSet
from tests.cni.netns_fixtures import CONFIGS, Netns, need

pytestmark = pytest.mark.root
WAYS = ["libnftables", "nft"]
FOREIGN = """\
add table inet foreign
add chain inet foreign output { type filter hook output priority 0 ; }
add rule inet foreign output tcp dport 9 counter accept
add table ip nat
add chain ip nat OUTPUT { type nat hook output priority -100 ; }
add rule ip nat OUTPUT tcp dport 7 counter return
"""


class Nft:
    """One nftables way, driven through `cni.apply` in the pod netns (IPv6 on: the TPROXY
    rule sets get both families' routes)."""

    def __init__(self, way: str = "auto") -> None:
        self.mode = RuleMode(native_nftables=True, nftables_backend=way)
        self.backend = NftablesBackend(way)

    def program(self, path: str, rs: NftRuleSet) -> str:
        return apply.program(path, rs, self.mode, ipv6=True)

    def check(self, path: str, rs: NftRuleSet) -> StateDiff:
        return apply.check(path, rs, self.mode, ipv6=True)

    def reset(self, path: str) -> bool:
        """The backend's reset: True if there were tables of ours."""
        with in_netns(path):
            return self.backend.reset()

    @property
    def nft(self) -> nft_exec.Nft:
        return self.backend.nft


def nft_rules(name: str) -> NftRuleSet:
    return build_nft_ruleset(CONFIGS[name])


def available(way: str) -> None:
    if way == "libnftables" and nft_exec.LibNftables.load() is None:
        pytest.skip(f"{nft_exec.LIBRARY} not installed")
    need("nft")


@pytest.fixture(params=WAYS)
def way(request: pytest.FixtureRequest) -> str:
    available(request.param)
    return request.param


def listing(ns: Netns, *flags: str) -> str:
    """`nft list ruleset`; counter values dropped (the netns's own packets move them)."""
    text = ns.run("nft", *flags, "list", "ruleset")
    return re.sub(r"counter packets \d+ bytes \d+", "counter", text)


def table_names(ns: Netns) -> list[str]:
    return ns.run("nft", "list", "tables").split()[2::3]


def test_missing_netns_is_invalid_netns() -> None:
    with pytest.raises(InvalidNetNS):
        Nft().program("/var/run/netns/icni-b-does-not-exist", nft_rules("basic"))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_both_ways_leave_the_same_ruleset(make_netns, name: str) -> None:  # noqa: ANN001
    for w in WAYS:
        available(w)
    lib_ns, bin_ns = make_netns(), make_netns()
    rs = nft_rules(name)
    assert Nft("libnftables").program(lib_ns.path, rs) == "applied"
    assert Nft("nft").program(bin_ns.path, rs) == "applied"
    assert listing(lib_ns) == listing(bin_ns)
    assert table_names(lib_ns) == [t.name for t in rs.tables]


def test_program_is_idempotent_and_keeps_the_rules(netns, way: str) -> None:  # noqa: ANN001
    rs = nft_rules("dns")
    prog = Nft(way)
    assert prog.program(netns.path, rs) == "applied"
    first = listing(netns, "-a")  # with rule handles: a rebuild would renumber them
    assert prog.program(netns.path, rs) == "already-programmed"
    assert listing(netns, "-a") == first
    diff = prog.check(netns.path, rs)
    assert diff.state == "identical" and not diff.missing and not diff.extra


def test_check_names_missing_and_extra_rules_and_program_repairs(netns, way: str) -> None:  # noqa: ANN001
    rs = nft_rules("basic")
    prog = Nft(way)
    prog.program(netns.path, rs)
    clean = listing(netns)
    netns.run("nft", "add rule inet istio-proxy-nat istio-output tcp dport 4444 return")
    netns.run("nft", "flush chain inet istio-proxy-nat istio-redirect")
    netns.run("nft", "add chain inet istio-proxy-nat istio-stray")
    diff = prog.check(netns.path, rs)
    assert diff.state == "conflict"
    assert "inet istio-proxy-nat istio-output: tcp dport 4444 return" in diff.extra
    assert "chain inet istio-proxy-nat istio-stray" in diff.extra
    assert diff.missing == (
        "inet istio-proxy-nat istio-redirect: meta l4proto tcp counter redirect to :15001",)
    assert prog.program(netns.path, rs) == "applied"
    assert listing(netns) == clean
    assert prog.check(netns.path, rs).state == "identical"


def test_foreign_objects_in_our_table_are_replaced_too(netns, way: str) -> None:  # noqa: ANN001
    rs = nft_rules("basic")
    prog = Nft(way)
    prog.program(netns.path, rs)
    clean = listing(netns)
    netns.run("nft", "add set inet istio-proxy-nat stray { type ipv4_addr ; }")
    diff = prog.check(netns.path, rs)
    assert diff.extra == ("inet istio-proxy-nat: set stray",) and not diff.missing
    assert prog.program(netns.path, rs) == "applied"
    assert listing(netns) == clean
    assert prog.program(netns.path, rs) == "already-programmed"


def test_a_changed_base_chain_policy_is_repaired(netns, way: str) -> None:  # noqa: ANN001
    rs = nft_rules("basic")
    prog = Nft(way)
    prog.program(netns.path, rs)
    clean = listing(netns)
    netns.run("nft", "chain inet istio-proxy-nat prerouting { policy drop ; }")
    diff = prog.check(netns.path, rs)
    assert [line for line in diff.extra if "policy drop" in line]
    assert prog.program(netns.path, rs) == "applied"
    assert "policy drop" not in listing(netns)
    # Rebuilt chains list last; chain order means nothing to nftables, and CHECK ignores it.
    assert sorted(listing(netns).splitlines()) == sorted(clean.splitlines())
    assert prog.check(netns.path, rs).state == "identical"


def test_reordered_rules_are_a_difference(netns, way: str) -> None:  # noqa: ANN001
    rs = nft_rules("basic")
    prog = Nft(way)
    prog.program(netns.path, rs)
    netns.run("nft", "insert rule inet istio-proxy-nat istio-output counter jump istio-redirect")
    netns.run("nft", "delete rule inet istio-proxy-nat istio-output handle "
              + last_handle(netns, "istio-output"))
    diff = prog.check(netns.path, rs)
    assert diff.missing and diff.extra and sorted(diff.missing) == sorted(diff.extra)


def last_handle(ns: Netns, chain: str) -> str:
    text = ns.run("nft", "-a", "list", "chain", "inet", "istio-proxy-nat", chain)
    return re.findall(r"# handle (\d+)", text)[-1]


def test_switching_rule_sets_replaces_ours_and_spares_the_rest(netns, way: str) -> None:  # noqa: ANN001
    apply_foreign(netns)
    foreign = foreign_part(netns)
    prog = Nft(way)
    prog.program(netns.path, nft_rules("ipv6"))  # nat + mangle (TPROXY) + raw (DNS)
    assert set(table_names(netns)) >= {"istio-proxy-mangle", "istio-proxy-raw"}
    basic = nft_rules("basic")
    assert prog.program(netns.path, basic) == "applied"
    assert [n for n in table_names(netns) if n.startswith("istio-")] == ["istio-proxy-nat"]
    assert "istio-output-dns" not in listing(netns)
    assert prog.check(netns.path, basic).state == "identical"
    assert foreign_part(netns) == foreign
    fresh = Nft(way)
    assert prog.reset(netns.path) is True
    assert not any(n.startswith("istio-") for n in table_names(netns))
    assert fresh.reset(netns.path) is False
    assert foreign_part(netns) == foreign


def apply_foreign(ns: Netns) -> None:
    import subprocess

    subprocess.run(["ip", "netns", "exec", ns.name, "nft", "-f", "-"], input=FOREIGN, text=True,
                   check=True, capture_output=True)


def foreign_part(ns: Netns) -> str:
    text = listing(ns)
    return "\n".join(block for block in re.split(r"(?m)^(?=table )", text)
                     if not block.startswith("table inet istio-proxy-"))


def test_failed_transaction_changes_nothing(netns, way: str) -> None:  # noqa: ANN001
    prog = Nft(way)
    prog.program(netns.path, nft_rules("basic"))
    before = listing(netns, "-a")
    bad = build_nft_ruleset(replace(CONFIGS["basic"], owner_groups_include=("no-such-group-x",)))
    with pytest.raises(RulesApplyFailed) as err:
        prog.program(netns.path, bad)
    assert "Group does not exist" in str(err.value)
    assert listing(netns, "-a") == before
    assert prog.check(netns.path, nft_rules("basic")).state == "identical"


def test_check_of_an_unprogrammed_netns_is_clean_and_missing_everything(netns, way: str) -> None:  # noqa: ANN001
    diff = Nft(way).check(netns.path, nft_rules("basic"))
    assert diff.clean and diff.state == "clean" and not diff.extra
    assert diff.missing[0] == "table inet istio-proxy-nat"


def test_unavailable_library_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, netns) -> None:  # noqa: ANN001
    monkeypatch.setattr(nft_exec, "LIBRARY", "libnftables-not-here.so.1")
    with pytest.raises(RulesApplyFailed, match="libnftables-not-here.so.1 cannot be loaded"):
        Nft("libnftables").program(netns.path, nft_rules("basic"))
    need("nft")
    prog = Nft("auto")
    assert prog.program(netns.path, nft_rules("basic")) == "applied"
    assert prog.nft.name == "nft"  # auto falls back to the host's binary


def test_unknown_way_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown nftables way 'iptables'"):
        NftablesBackend("iptables").nft  # noqa: B018


def test_concurrent_programs_of_one_netns_converge(netns, way: str) -> None:  # noqa: ANN001
    """The agent and the plugin may program one pod at the same time: every call succeeds and
    the netns holds the rule set whole (transactions never interleave)."""
    from concurrent.futures import ThreadPoolExecutor

    rs = nft_rules("tproxy")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: Nft(way).program(netns.path, rs),
                                range(8)))
    assert "applied" in results and set(results) <= {"applied", "already-programmed"}
    assert Nft(way).check(netns.path, rs).state == "identical"


def test_racing_different_rule_sets_never_fail_and_the_last_program_wins(
    netns, way: str  # noqa: ANN001
) -> None:
    """A pod whose spec changed while a repair ran: replacements race each other. None fails
    (deletes of objects another writer removed are harmless), and a final program converges."""
    from concurrent.futures import ThreadPoolExecutor

    sets = [nft_rules("ipv6"), nft_rules("basic"), nft_rules("dns"), nft_rules("wide")] * 3
    Nft(way).program(netns.path, nft_rules("tproxy"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda rs: Nft(way).program(netns.path, rs), sets))
    assert set(results) <= {"applied", "already-programmed"}
    final = nft_rules("dns")
    Nft(way).program(netns.path, final)
    assert Nft(way).check(netns.path, final).state == "identical"


RACER = """
import sys
sys.path.insert(0, ".")
from cni import apply
from cni.backends import RuleMode
from cni.nft_rules import build_nft_ruleset
from tests.cni.netns_fixtures import CONFIGS
way, path, *names = sys.argv[1:]
sets = [build_nft_ruleset(CONFIGS[n]) for n in names]
print("ready", flush=True)
sys.stdin.readline()
mode = RuleMode(native_nftables=True, nftables_backend=way)
for i in range(20):
    apply.program(path, sets[i % len(sets)], mode, ipv6=True)
"""


def test_writers_in_two_processes_never_fail(netns, way: str) -> None:  # noqa: ANN001
    """The plugin and the agent are different processes: no shared lock, only the retries."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", RACER, way, netns.path, *names],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=root)
             for names in (("tproxy", "wide"), ("ipv6", "basic"))]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    final = nft_rules("wide")
    Nft(way).program(netns.path, final)
    assert Nft(way).check(netns.path, final).state == "identical"


def test_scratch_netns_is_empty_and_the_thread_comes_back(netns) -> None:  # noqa: ANN001
    import os
    import socket

    from cni.netns import in_netns, scratch_netns

    with in_netns(netns.path):
        pod = os.stat("/proc/thread-self/ns/net").st_ino
        with scratch_netns():
            assert os.stat("/proc/thread-self/ns/net").st_ino != pod
            assert [name for _, name in socket.if_nameindex()] == ["lo"]
        assert os.stat("/proc/thread-self/ns/net").st_ino == pod
