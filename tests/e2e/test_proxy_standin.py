"""The proxy stand-in (companions/proxy.py) in a pod netns programmed with the plugin's rules.

Real traffic both ways, IPv4 and IPv6: an app's connection to an echo server outside the pod is
captured to 15001 and forwarded to its original destination; a client's connection to an app
port in the pod is captured to 15006 and forwarded, from 127.0.0.6 / ::6, to the app listening
on the pod address. The proxy's own connections are exempt only because it really runs as uid
1337 and uses the passthrough source, so these tests also prove the privilege drop.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from cni import apply, netns
from cni.pipeline import rules_for
from cni.redirect import Redirect
from testbed import netns as nsutil
from testbed.cleanup import Cleanup
from testbed.pods import REPO
from testbed.procs import sh

pytestmark = pytest.mark.root

ADDRS = {"4": ("10.203.0.1", "10.203.0.2", 24), "6": ("fd00:203::1", "fd00:203::2", 64)}
LINE_TIMEOUT = 30.0


@dataclass
class Pod:
    """A pod netns wired by veth to a node netns, with the plugin's default rules in it."""

    node: str
    pod: str

    def ip(self, family: str, side: str) -> str:
        node_ip, pod_ip, _ = ADDRS[family]
        return node_ip if side == "node" else pod_ip


@pytest.fixture
def pod(cleanup: Cleanup) -> Pod:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces")
    node = nsutil.create_netns(cleanup, "icni-f-node").name
    pod_ns = nsutil.create_netns(cleanup, "icni-f-pod").name
    veth = f"icf{pod_ns[-8:]}"
    sh("ip", "-n", node, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns",
       pod_ns)
    for fam, (node_ip, pod_ip, plen) in ADDRS.items():
        sh("ip", f"-{fam}", "-n", node, "addr", "add", f"{node_ip}/{plen}", "dev", veth,
           "nodad")
        sh("ip", f"-{fam}", "-n", pod_ns, "addr", "add", f"{pod_ip}/{plen}", "dev", "eth0",
           "nodad")
    sh("ip", "-n", node, "link", "set", veth, "up")
    sh("ip", "-n", pod_ns, "link", "set", "eth0", "up")
    # the injected pod's defaults, IPv6 on: what the plugin programs for a dual-stack pod
    ruleset = rules_for(Redirect(), ipv6=True)
    apply.program(nsutil.path(pod_ns), ruleset, "auto")
    return Pod(node, pod_ns)


class ProxyProcess:
    """companions/proxy.py run as root inside the pod netns; it drops to uid 1337 itself."""

    def __init__(self, ns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "companions.proxy"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = self.line()
        if first != "ready":
            self.proc.kill()
            raise RuntimeError(f"proxy did not start: {first!r} {self.proc.stderr.read()}")

    def line(self) -> str:
        """The next log line; bounded wait so a silent proxy fails the test instead of hanging."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], LINE_TIMEOUT)
        if not ready:
            raise AssertionError("proxy printed nothing")
        return self.proc.stdout.readline().strip()

    def terminate(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=LINE_TIMEOUT)
        return self.proc.returncode, out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def proxy(pod: Pod) -> Iterator[ProxyProcess]:
    p = ProxyProcess(pod.pod)
    try:
        yield p
    finally:
        p.kill()


@dataclass
class EchoServer:
    """An echo server bound in a netns (the socket keeps its netns after we switch back)."""

    sock: socket.socket
    peers: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, ns: str, host: str, port: int) -> EchoServer:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with netns.in_netns(nsutil.path(ns)):
            sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(4)
        server = cls(sock)
        threading.Thread(target=server._serve, daemon=True).start()
        return server

    def _serve(self) -> None:
        try:
            conn, peer = self.sock.accept()
        except OSError:
            return  # closed by the test
        self.peers.append(peer[0])
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def round_trip(ns: str, host: str, port: int, payload: bytes) -> tuple[bytes, str]:
    """Connect from `ns` (as root, like an app), send, half-close, read the echo."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with netns.in_netns(nsutil.path(ns)):
        sock = socket.socket(family, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(LINE_TIMEOUT)
        sock.connect((host, port))
        local = sock.getsockname()
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks), fmt(local)


def fmt(addr: tuple) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@pytest.mark.parametrize("family", ["4", "6"])
def test_outbound_goes_through_15001_to_the_original_destination(pod: Pod, proxy: ProxyProcess,
                                                                  family: str):
    node_ip = pod.ip(family, "node")
    echo = EchoServer.start(pod.node, node_ip, 8080)
    try:
        reply, local = round_trip(pod.pod, node_ip, 8080, b"hello outbound\n")
    finally:
        echo.close()
    assert reply == b"hello outbound\n"
    assert proxy.line() == f"outbound {local} -> {fmt((node_ip, 8080))}"
    # the upstream leg came from the proxy (uid 1337, exempt), from the pod's address
    assert echo.peers == [pod.ip(family, "pod")]


@pytest.mark.parametrize("family", ["4", "6"])
def test_inbound_goes_through_15006_to_the_app_on_the_pod_address(pod: Pod, proxy: ProxyProcess,
                                                                   family: str):
    pod_ip = pod.ip(family, "pod")
    app = EchoServer.start(pod.pod, pod_ip, 9080)
    try:
        reply, local = round_trip(pod.node, pod_ip, 9080, b"hello inbound\n")
    finally:
        app.close()
    assert reply == b"hello inbound\n"
    assert proxy.line() == f"inbound {local} -> {fmt((pod_ip, 9080))}"
    # the app sees upstream's passthrough source, which is why the proxy's leg is not captured
    assert app.peers == ["127.0.0.6" if family == "4" else "::6"]


def test_sigterm_closes_open_connections_and_exits_cleanly(pod: Pod, proxy: ProxyProcess):
    node_ip = pod.ip("4", "node")
    echo = EchoServer.start(pod.node, node_ip, 8080)
    with netns.in_netns(nsutil.path(pod.pod)):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        client.settimeout(LINE_TIMEOUT)
        client.connect((node_ip, 8080))
        assert proxy.line().startswith("outbound ")
        status, rest = proxy.terminate()
        assert status == 0
        assert rest.splitlines()[-1] == "stopped"
        assert client.recv(10) == b""  # the proxy cut the connection on its way out
    finally:
        client.close()
        echo.close()


def test_runs_as_the_proxy_user(pod: Pod, proxy: ProxyProcess):
    status = open(f"/proc/{proxy.proc.pid}/status").read()
    uid_line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
    gid_line = next(ln for ln in status.splitlines() if ln.startswith("Gid:"))
    assert uid_line.split()[1:] == ["1337"] * 4
    assert gid_line.split()[1:] == ["1337"] * 4
