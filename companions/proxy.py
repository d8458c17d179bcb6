"""A transparent-proxy stand-in for istio-proxy, for the demo and the end-to-end tests.

It plays the sidecar's part in the plugin's rules, nothing more: it listens on 15001 (outbound
capture) and 15006 (inbound capture), IPv4 and IPv6, reads each connection's original
destination with SO_ORIGINAL_DST, prints one line per connection

    outbound 10.99.1.5:41234 -> 10.99.1.1:8080
    inbound 10.99.1.1:50112 -> 10.99.1.5:9080

and forwards the bytes both ways to that destination. Its own connections must not be captured
again, and it relies on the same exemptions as Envoy:

- it runs as uid/gid 1337 (`ISTIO_OUTPUT ... --uid-owner 1337 -j RETURN`): it binds its ports
  as root, then drops privileges;
- inbound, it connects from 127.0.0.6 (or ::6), upstream's passthrough source address
  (`-s 127.0.0.6/32 -o lo -j RETURN`), so the connection reaches the app on the pod address
  instead of looping back into 15006.

Everything the process needs after the privilege drop is imported and exercised before it:
the interpreter may live somewhere uid 1337 cannot read (a pyenv under /root), and Python loads
some codecs lazily (`idna`, for any str host given to getaddrinfo).

Run: `python -m companions.proxy [--uid 1337] [--max-connections 64]` inside the pod netns.
"ready" on stdout means it is listening; SIGTERM/SIGINT close the listeners and every
connection, then it exits 0.
"""

from __future__ import annotations

import argparse
import encodings.idna  # noqa: F401 - loaded before the privilege drop (see module docstring)
import errno
import os
import select
import signal
import socket
import struct
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
PROXY_UID = 1337
SO_ORIGINAL_DST = 80  # netfilter's getsockopt, same number for SOL_IP and SOL_IPV6
PASSTHROUGH_SOURCE = {socket.AF_INET: "127.0.0.6", socket.AF_INET6: "::6"}
CONNECT_TIMEOUT = 10.0
BUFFER = 65536

Address = tuple[str, int]


def original_dst(conn: socket.socket) -> Address:
    """Where the client meant to go, as the NAT table recorded it before redirecting."""
    if conn.family == socket.AF_INET6:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)  # sockaddr_in6
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0]
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)  # sockaddr_in
    return socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0]


def fmt(addr: Sequence[object]) -> str:
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(port: int) -> list[socket.socket]:
    """One socket per family: SO_ORIGINAL_DST only answers in the connection's own family."""
    socks = []
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            if family == socket.AF_INET6 and exc.errno in (errno.EADDRNOTAVAIL,
                                                           errno.EAFNOSUPPORT):
                continue  # no IPv6 in this netns
            raise
        sock.listen(128)
        socks.append(sock)
    return socks


def drop_privileges(uid: int, gid: int) -> None:
    """Become the proxy user for good (supplementary groups, gid, then uid)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


@dataclass
class Proxy:
    """The listeners, the live connections and the shutdown pipe."""

    listeners: dict[socket.socket, str]
    max_connections: int = 64
    out: object = sys.stdout
    _conns: set[socket.socket] = field(default_factory=set)
    _threads: set[threading.Thread] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop_r: int = -1
    _stop_w: int = -1

    def __post_init__(self) -> None:
        self._stop_r, self._stop_w = os.pipe()
        os.set_blocking(self._stop_w, False)

    def log(self, line: str) -> None:
        with self._lock:
            self.out.write(line + "\n")  # type: ignore[attr-defined]
            self.out.flush()  # type: ignore[attr-defined]

    def stop(self, *_: object) -> None:
        """Async-signal-safe: wakes `serve`, which does the actual shutdown."""
        try:
            os.write(self._stop_w, b"x")
        except BlockingIOError:
            pass

    def serve(self) -> None:
        """Accept until stopped; one thread per connection, at most `max_connections`."""
        try:
            while True:
                ready, _, _ = select.select([*self.listeners, self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                for lsock in ready:
                    self._accept(lsock)
        finally:
            self._shutdown()

    def _accept(self, lsock: socket.socket) -> None:
        try:
            conn, peer = lsock.accept()
        except OSError:
            return
        with self._lock:
            full = len(self._threads) >= self.max_connections
        if full:
            self.log(f"{self.listeners[lsock]} {fmt(peer)} rejected: too many connections")
            conn.close()
            return
        thread = threading.Thread(target=self._handle, args=(conn, peer, self.listeners[lsock]),
                                  daemon=True)
        with self._lock:
            self._threads.add(thread)
            self._conns.add(conn)
        thread.start()

    def _handle(self, conn: socket.socket, peer: Address, direction: str) -> None:
        upstream = None
        try:
            try:
                dst = original_dst(conn)
            except OSError as exc:
                self.log(f"{direction} {fmt(peer)} -> none (no original destination: "
                         f"{exc.strerror})")
                return
            self.log(f"{direction} {fmt(peer)} -> {fmt(dst)}")
            try:
                upstream = self._connect(conn.family, dst, direction)
            except OSError as exc:
                self.log(f"{direction} {fmt(peer)} -> {fmt(dst)} failed: {exc.strerror or exc}")
                return
            with self._lock:
                self._conns.add(upstream)
            pump(conn, upstream, self._stop_r)
        finally:
            with self._lock:
                self._conns.discard(conn)
                if upstream is not None:
                    self._conns.discard(upstream)
                self._threads.discard(threading.current_thread())
            conn.close()
            if upstream is not None:
                upstream.close()

    def _connect(self, family: int, dst: Address, direction: str) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if direction == "inbound":
                sock.bind((PASSTHROUGH_SOURCE[family], 0))
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(dst)
            sock.settimeout(None)
        except OSError:
            sock.close()
            raise
        return sock

    def _shutdown(self) -> None:
        """Close listeners, cut every live connection, wait for the handler threads."""
        for lsock in self.listeners:
            lsock.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(timeout=5)


def pump(a: socket.socket, b: socket.socket, stop_fd: int) -> None:
    """Copy bytes both ways until both directions reached EOF (half-closes are forwarded)."""
    peer = {a: b, b: a}
    open_ = {a, b}
    while open_:
        ready, _, _ = select.select([*open_, stop_fd], [], [])
        if stop_fd in ready:
            return
        for src in ready:
            try:
                data = src.recv(BUFFER)
            except OSError:
                return  # reset: the handler closes both sides
            if data:
                try:
                    peer[src].sendall(data)
                except OSError:
                    return
            else:
                open_.discard(src)
                try:
                    peer[src].shutdown(socket.SHUT_WR)
                except OSError:
                    pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outbound-port", type=int, default=OUTBOUND_PORT)
    parser.add_argument("--inbound-port", type=int, default=INBOUND_PORT)
    parser.add_argument("--uid", type=int, default=PROXY_UID)
    parser.add_argument("--gid", type=int, default=None, help="default: same as --uid")
    parser.add_argument("--max-connections", type=int, default=64)
    args = parser.parse_args(argv)

    listeners = {s: "outbound" for s in listen(args.outbound_port)}
    listeners.update({s: "inbound" for s in listen(args.inbound_port)})
    "warm-up".encode("idna")  # the codec machinery too, not just the module
    if os.geteuid() == 0:
        drop_privileges(args.uid, args.uid if args.gid is None else args.gid)
    proxy = Proxy(listeners, max_connections=args.max_connections)
    signal.signal(signal.SIGTERM, proxy.stop)
    signal.signal(signal.SIGINT, proxy.stop)
    proxy.log("ready")
    proxy.serve()
    proxy.log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
