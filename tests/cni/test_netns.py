"""cni.netns: entering a netns by path, reading its addresses, and upstream's getLocalIP."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

import pytest

from cni.errors import InvalidNetNS, NoPodAddress
from cni.netns import detect_ipv6, in_netns, pod_addresses


def ips(*texts: str) -> list:
    return [ipaddress.ip_address(t) for t in texts]


@pytest.mark.parametrize(
    ("addresses", "dual", "want"),
    [
        (("127.0.0.1", "::1", "10.0.0.5", "fd00::5"), False, False),
        (("127.0.0.1", "::1", "10.0.0.5", "fd00::5"), True, True),
        (("::1", "fe80::1", "fd00::5", "10.0.0.5"), False, True),
        (("169.254.1.1", "10.0.0.5"), False, False),
        (("10.0.0.5",), True, False),
        (("::ffff:10.0.0.5", "fd00::1"), False, False),
        (("ff02::1", "2001:db8::1"), False, True),
    ],
)
def test_detect_ipv6_follows_get_local_ip(addresses: tuple, dual: bool, want: bool) -> None:
    assert detect_ipv6(ips(*addresses), dual) is want


def test_detect_ipv6_without_usable_address() -> None:
    with pytest.raises(NoPodAddress):
        detect_ipv6(ips("127.0.0.1", "::1", "fe80::1"), dual_stack=True)


def test_missing_netns_path_is_invalid_netns(tmp_path) -> None:  # noqa: ANN001
    missing = tmp_path / "no-such-netns"
    with pytest.raises(InvalidNetNS, match="does not exist"), in_netns(str(missing)):
        pytest.fail("entered a missing netns")
    assert not missing.exists()  # never created


def test_regular_file_is_not_a_netns(tmp_path) -> None:  # noqa: ANN001
    f = tmp_path / "ns"
    f.write_text("")
    with pytest.raises(InvalidNetNS, match="not a namespace"), in_netns(str(f)):
        pytest.fail("entered a regular file")


def test_other_namespace_type_is_refused() -> None:
    with pytest.raises(InvalidNetNS, match="not a netns"), in_netns("/proc/self/ns/uts"):
        pytest.fail("entered a UTS namespace as a netns")


def test_hot_path_imports_no_heavy_modules() -> None:
    code = ("import sys, cni.apply, cni.netns, cni.live_state, cni.backends.restore;"
            "print(sorted(m for m in ('pyroute2', 'iptc') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(
                             os.path.dirname(os.path.abspath(__file__))))).stdout
    assert out.strip() == "[]"


@pytest.mark.root
def test_in_netns_enters_and_restores(netns) -> None:  # noqa: ANN001
    before = os.stat("/proc/thread-self/ns/net").st_ino
    with in_netns(netns.path):
        assert os.stat("/proc/thread-self/ns/net").st_ino == os.stat(netns.path).st_ino
    assert os.stat("/proc/thread-self/ns/net").st_ino == before


@pytest.mark.root
def test_in_netns_restores_after_an_error(netns) -> None:  # noqa: ANN001
    before = os.stat("/proc/thread-self/ns/net").st_ino
    with pytest.raises(RuntimeError), in_netns(netns.path):
        raise RuntimeError("boom")
    assert os.stat("/proc/thread-self/ns/net").st_ino == before


@pytest.mark.root
def test_pod_addresses_in_go_order(make_netns) -> None:  # noqa: ANN001
    ns = make_netns(v4="10.77.0.2", v6="fd00:77::2")
    with in_netns(ns.path):
        got = pod_addresses()
    usable = [a for a in got if not a.is_link_local]
    assert usable == ips("127.0.0.1", "::1", "10.77.0.2", "fd00:77::2")
    assert ipaddress.ip_address("10.77.0.2") not in pod_addresses()  # back on the host
    assert detect_ipv6(got, dual_stack=False) is False
    assert detect_ipv6(got, dual_stack=True) is True


@pytest.mark.root
def test_pod_addresses_ipv6_only(make_netns) -> None:  # noqa: ANN001
    ns = make_netns(v6="fd00:78::2")
    with in_netns(ns.path):
        assert detect_ipv6(pod_addresses(), dual_stack=False) is True
