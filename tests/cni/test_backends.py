"""Backends in real netns: iptables-restore (nft, legacy, auto detection) and libiptc.

The contract: both backends leave identical `iptables-legacy-save` output for the same rule set.
"""

from __future__ import annotations

import pytest

from cni.backends import select_backend
from cni.backends.libiptc import LibiptcBackend, find_xtables_libdir
from cni.backends.restore import Flavor, RestoreBackend, parse_version
from cni.errors import RulesApplyFailed
from cni.live_state import diff_state
from cni.netns import in_netns
from cni.ruleset import FamilyRules, Rule
from tests.cni.netns_fixtures import iptables_save, need, ruleset, strip_counters

IDENTICAL_CASES = ["basic", "tproxy", "dns", "ipv6", "wide"]


def test_select_backend_names() -> None:
    assert isinstance(select_backend("auto"), RestoreBackend)
    assert select_backend("legacy").force == "legacy"  # type: ignore[attr-defined]
    assert isinstance(select_backend("python-iptables"), LibiptcBackend)
    with pytest.raises(ValueError, match="unknown rule backend"):
        select_backend("iptables")


def test_select_backend_for_a_mode() -> None:
    from cni.backends import RuleMode
    from cni.backends.nftables import NftablesBackend

    nft = select_backend(RuleMode(native_nftables=True, nftables_backend="nft"))
    assert isinstance(nft, NftablesBackend) and nft.way == "nft" and nft.native_nftables
    legacy = select_backend(RuleMode(iptables_backend="legacy"))
    assert legacy.force == "legacy" and not legacy.native_nftables  # type: ignore[attr-defined]
    assert RuleMode().other() == RuleMode(native_nftables=True)
    assert (RuleMode().label, RuleMode(True).label) == ("iptables", "native nftables")
    with pytest.raises(ValueError, match="unknown nftables backend 'iptables'"):
        select_backend(RuleMode(native_nftables=True, nftables_backend="iptables"))


def test_parse_version() -> None:
    assert parse_version("iptables-save v1.8.9 (legacy)") == (1, 8, 9)
    assert parse_version("garbage") is None


def test_restore_argv_waits_only_for_lockable_legacy() -> None:
    b = RestoreBackend()
    assert b.restore_argv(Flavor("iptables-legacy", True, (1, 8, 9))) == [
        "iptables-legacy-restore", "--noflush", "--wait=30"]
    assert b.restore_argv(Flavor("iptables-legacy", True, (1, 6, 1))) == [
        "iptables-legacy-restore", "--noflush"]
    assert b.restore_argv(Flavor("iptables-nft", False, (0, 0, 0))) == [
        "iptables-nft-restore", "--noflush"]


def test_xtables_libdir_is_found() -> None:
    libdir = find_xtables_libdir()
    if libdir is None:
        pytest.skip("no xtables extensions installed")
    assert libdir.endswith("xtables")


def legacy_tools(fam_v6: bool) -> tuple[str, str]:
    prefix = "ip6tables" if fam_v6 else "iptables"
    return f"{prefix}-legacy-save", f"{prefix}-legacy-restore"


@pytest.mark.root
@pytest.mark.parametrize("name", IDENTICAL_CASES)
def test_libiptc_and_restore_legacy_save_identically(make_netns, name: str) -> None:  # noqa: ANN001
    need("iptables-legacy-save", "ip6tables-legacy-save")
    if find_xtables_libdir() is None:
        pytest.skip("no xtables extensions for python-iptables")
    rs = ruleset(name)
    via_restore, via_libiptc = make_netns(), make_netns()
    for ns, backend in ((via_restore, "legacy"), (via_libiptc, "python-iptables")):
        with in_netns(ns.path):
            applier = select_backend(backend, ns.path)
            for fam in rs.families():
                applier.apply(fam)
    for fam in rs.families():
        save = legacy_tools(fam.ipv6)[0]
        want = iptables_save(via_restore, save)
        assert "ISTIO_OUTPUT" in want
        assert iptables_save(via_libiptc, save) == want
        # libiptc's own renderer (for hosts without binaries) prints the same text too
        with in_netns(via_libiptc.path):
            rendered = LibiptcBackend().save(fam.ipv6)
        assert "\n".join(strip_counters(line) for line in rendered.splitlines()) == want
        assert diff_state(rendered, fam).state == "identical"


@pytest.mark.root
@pytest.mark.parametrize("force", ["nft", "legacy"])
def test_restore_backend_applies_and_saves(netns, force: str) -> None:  # noqa: ANN001
    need(f"iptables-{force}-restore", f"iptables-{force}-save")
    fam = ruleset("basic").v4
    with in_netns(netns.path):
        b = RestoreBackend(force, netns.path)
        assert diff_state(b.save(False), fam).state == "clean"
        b.apply(fam)
        assert diff_state(b.save(False), fam).state == "identical"
    assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in netns.run(
        f"iptables-{force}-save")


@pytest.mark.root
def test_auto_prefers_nft_in_a_fresh_netns(netns) -> None:  # noqa: ANN001
    need("iptables-nft", "iptables-nft-save", "iptables-legacy-save")
    with in_netns(netns.path):
        flavor = RestoreBackend(None, netns.path).flavor(False)
    assert flavor.binary == "iptables-nft" and not flavor.legacy


@pytest.mark.root
def test_auto_uses_legacy_when_legacy_rules_exist(netns) -> None:  # noqa: ANN001
    need("iptables-legacy", "iptables-legacy-save")
    netns.run("iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-p", "255", "-j", "RETURN")
    with in_netns(netns.path):
        flavor = RestoreBackend(None, netns.path).flavor(False)
    assert flavor.binary == "iptables-legacy" and flavor.legacy
    assert flavor.version >= (1, 6, 2)


@pytest.mark.root
def test_restore_failure_says_what_where_why(netns) -> None:  # noqa: ANN001
    need("iptables-legacy-restore")
    bad = FamilyRules(False, (Rule("nat", "ISTIO_X", ("-A", "ISTIO_X", "-j", "NO_SUCH")),))
    with in_netns(netns.path), pytest.raises(RulesApplyFailed) as err:
        RestoreBackend("legacy", netns.path).apply(bad)
    assert f"in {netns.path}: exit" in err.value.msg
    assert "iptables-legacy-restore (legacy)" in err.value.msg
    assert "ISTIO_X" not in netns.run("iptables-legacy-save")


@pytest.mark.root
def test_libiptc_builds_everything_before_committing(netns) -> None:  # noqa: ANN001
    """A failure in the nat table leaves mangle (committed first) untouched."""
    need("iptables-legacy", "iptables-legacy-save")
    netns.run("iptables-legacy", "-t", "nat", "-N", "ISTIO_OUTPUT")
    with in_netns(netns.path), pytest.raises(RulesApplyFailed, match="already exists"):
        LibiptcBackend(netns.path).apply(ruleset("tproxy").v4)
    save = netns.run("iptables-legacy-save")
    assert "ISTIO_DIVERT" not in save and "ISTIO_INBOUND" not in save


@pytest.mark.root
def test_libiptc_delete_removes_everything(netns) -> None:  # noqa: ANN001
    need("iptables-legacy-save")
    fam = ruleset("tproxy").v4
    with in_netns(netns.path):
        b = LibiptcBackend(netns.path)
        b.apply(fam)
        b.delete(fam)
        assert diff_state(b.save(False), fam).state == "clean"
    assert "ISTIO" not in netns.run("iptables-legacy-save")
