"""Native nftables mode redirects real traffic: both ways, IPv4 and IPv6.

A pod netns and a peer netns joined by a veth. With the plugin's rule sets programmed by
`cni.apply` (the link step included) with the nftables backend: outbound TCP reaches 15001
with its original destination (`SO_ORIGINAL_DST` works for nft `redirect` too), inbound
reaches 15006, the proxy's uid 1337 bypasses capture, DNS reaches 15053, and TPROXY (its
policy routing added by the link step) delivers inbound with the original destination as
local address.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, replace

import pytest

from cni import apply, nft_exec
from cni.backends import RuleMode
from cni.iptables_config import IptablesConfig
from cni.netns import in_netns
from cni.nft_rules import build_nft_ruleset
from testbed.cleanup import Cleanup
from testbed.netns import create_netns
from testbed.procs import sh
from testbed.traffic import Listener, connect
from tests.cni.netns_fixtures import PLUGIN_DEFAULT, need

pytestmark = pytest.mark.root
SO_ORIGINAL_DST = 80
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
TIMEOUT_S = 10


@dataclass(frozen=True)
class Pair:
    pod: str
    peer: str
    family: int

    @property
    def pod_ip(self) -> str:
        return "10.78.0.2" if self.family == 4 else "fd78::2"

    @property
    def peer_ip(self) -> str:
        return "10.78.0.1" if self.family == 4 else "fd78::1"

    @property
    def pod_path(self) -> str:
        return f"/var/run/netns/{self.pod}"

    @property
    def af(self) -> socket.AddressFamily:
        return socket.AF_INET if self.family == 4 else socket.AF_INET6

    @property
    def any_addr(self) -> str:
        return "0.0.0.0" if self.family == 4 else "::"


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def pair(request: pytest.FixtureRequest, cleanup: Cleanup) -> Pair:
    """Two netns joined by a veth pair, each end `eth0`, carrying 10.78.0.0/24 and fd78::/64."""
    need("ip")
    pod, peer = create_netns(cleanup, "icni-b"), create_netns(cleanup, "icni-b")
    p = Pair(pod.name, peer.name, request.param)
    sh("ip", "-n", p.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
       "netns", p.peer)
    for ns, host in ((p.pod, "2"), (p.peer, "1")):
        sh("ip", "-n", ns, "-batch", "-", input=(
            f"addr add 10.78.0.{host}/24 dev eth0\n"
            f"addr add fd78::{host}/64 dev eth0 nodad\n"
            "link set eth0 up\n"))
    return p


@pytest.fixture(params=["libnftables", "nft"])
def way(request: pytest.FixtureRequest) -> str:
    if request.param == "libnftables" and nft_exec.LibNftables.load() is None:
        pytest.skip(f"{nft_exec.LIBRARY} not installed")
    need("nft")
    return request.param


def program(p: Pair, way: str, cfg: IptablesConfig) -> None:
    rs = build_nft_ruleset(replace(cfg, enable_ipv6=p.family == 6))
    mode = RuleMode(native_nftables=True, nftables_backend=way)
    assert apply.program(p.pod_path, rs, mode, ipv6=p.family == 6) == "applied"


def listen_in_pod(p: Pair, port: int, transparent: bool = False) -> socket.socket:
    with in_netns(p.pod_path):
        sock = socket.socket(p.af, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if transparent:
            level = socket.SOL_IP if p.family == 4 else socket.IPPROTO_IPV6
            sock.setsockopt(level, IP_TRANSPARENT if p.family == 4 else IPV6_TRANSPARENT, 1)
        sock.bind((p.any_addr, port))
        sock.listen(4)
        sock.settimeout(TIMEOUT_S)
    return sock


def original_dst(p: Pair, conn: socket.socket) -> tuple[str, int]:
    if p.family == 4:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, addr = struct.unpack("!2xH4s8x", raw)
        return socket.inet_ntoa(addr), port
    raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
    return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0]


def test_outbound_reaches_15001_with_original_destination(pair: Pair, way: str) -> None:
    program(pair, way, PLUGIN_DEFAULT)
    listener = listen_in_pod(pair, 15001)
    with listener, in_netns(pair.pod_path), socket.socket(pair.af) as client:
        client.settimeout(TIMEOUT_S)
        client.connect((pair.peer_ip, 80))
        conn, _ = listener.accept()
        with conn:
            assert original_dst(pair, conn) == (pair.peer_ip, 80)


def test_inbound_reaches_15006_with_original_destination(pair: Pair, way: str) -> None:
    program(pair, way, PLUGIN_DEFAULT)
    with listen_in_pod(pair, 15006) as listener:
        code, out = connect(pair.peer, pair.pod_ip, 8080)
        assert code == 0, out
        conn, peer = listener.accept()
        with conn:
            assert peer[0] == pair.peer_ip
            assert original_dst(pair, conn) == (pair.pod_ip, 8080)


def test_proxy_uid_bypasses_capture(pair: Pair, way: str) -> None:
    program(pair, way, PLUGIN_DEFAULT)
    remote = Listener(pair.peer, 80)
    try:
        code, out = connect(pair.pod, pair.peer_ip, 80, uid=1337)
        assert code == 0, out
        assert remote.lines()[0].startswith(f"conn {pair.pod_ip} ")
    finally:
        remote.stop()
    with listen_in_pod(pair, 15001) as captured:  # an app uid is still captured
        code, out = connect(pair.pod, pair.peer_ip, 80, uid=1000)
        assert code == 0, out
        captured.accept()[0].close()


def test_dns_reaches_15053(pair: Pair, way: str) -> None:
    program(pair, way, replace(PLUGIN_DEFAULT, redirect_dns=True, capture_all_dns=True))
    with in_netns(pair.pod_path):
        udp = socket.socket(pair.af, socket.SOCK_DGRAM)
        udp.bind((pair.any_addr, 15053))
        udp.settimeout(TIMEOUT_S)
        sender = socket.socket(pair.af, socket.SOCK_DGRAM)
    tcp = listen_in_pod(pair, 15053)
    with udp, sender, tcp:
        with in_netns(pair.pod_path):
            sender.sendto(b"query", (pair.peer_ip, 53))
        assert udp.recvfrom(64)[0] == b"query"
        with in_netns(pair.pod_path), socket.socket(pair.af) as client:
            client.settimeout(TIMEOUT_S)
            client.connect((pair.peer_ip, 53))
            conn, _ = tcp.accept()
            with conn:
                assert original_dst(pair, conn) == (pair.peer_ip, 53)


def test_tproxy_delivers_inbound_with_original_destination(pair: Pair, way: str) -> None:
    cfg = replace(PLUGIN_DEFAULT, inbound_interception_mode="TPROXY")
    program(pair, way, cfg)
    routes = build_nft_ruleset(cfg).tproxy_routes
    assert routes is not None
    fam = f"-{pair.family}"  # the link step added the policy routing, as in iptables mode
    assert f"fwmark {hex(routes.mark)} lookup {routes.table}" in sh(
        "ip", fam, "-n", pair.pod, "rule", "show")
    assert "local default dev lo" in sh(
        "ip", fam, "-n", pair.pod, "route", "show", "table", str(routes.table))
    with listen_in_pod(pair, 15006, transparent=True) as listener:
        code, out = connect(pair.peer, pair.pod_ip, 8080)
        assert code == 0, out
        conn, peer = listener.accept()
        with conn:
            assert peer[0] == pair.peer_ip
            assert conn.getsockname()[:2] == (pair.pod_ip, 8080)
