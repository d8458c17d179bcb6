"""Socket tools run inside pod/node netns by the harness (via `ip netns exec`).

  listen PORT [COUNT]       accept COUNT connections on 0.0.0.0:PORT (and [::]:PORT); for each
                            print "conn <peer> orig <original destination>" read with
                            SO_ORIGINAL_DST (getsockopt SOL_IP/SOL_IPV6 80), then exit.
  connect HOST PORT [UID]   connect (as UID if given), print "connected <local addr>", exit 0;
                            exit 1 with "refused"/"timeout".
The listener prints "ready" once it listens, so tests synchronise on output, never on sleeps.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys

SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80


def original_dst(conn: socket.socket) -> str:
    if conn.family == socket.AF_INET6:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        port = struct.unpack("!H", raw[2:4])[0]
        addr = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        return f"[{addr}]:{port}"
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack("!H", raw[2:4])[0]
    return f"{socket.inet_ntoa(raw[4:8])}:{port}"


def _bound(family: int, port: int) -> socket.socket | None:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    except OSError:
        sock.close()
        return None  # e.g. no IPv6 in this netns
    sock.listen(16)
    return sock


def listen(port: int, count: int) -> None:
    """One IPv4 and one IPv6 socket: SO_ORIGINAL_DST is per family."""
    socks = [s for s in (_bound(socket.AF_INET, port), _bound(socket.AF_INET6, port)) if s]
    print("ready", flush=True)
    for _ in range(count):
        readable, _, _ = select.select(socks, [], [], 60)
        if not readable:
            print("timeout", flush=True)
            return
        conn, peer = readable[0].accept()
        with conn:
            try:
                orig = original_dst(conn)
            except OSError as exc:
                orig = f"none({exc.errno})"
            host = peer[0].removeprefix("::ffff:")
            print(f"conn {host} orig {orig.replace('::ffff:', '')}", flush=True)


def connect(host: str, port: int, uid: int | None) -> int:
    # Resolve before dropping privileges: the codecs Python loads lazily may not be readable
    # by the unprivileged uid.
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(sockaddr)
            print(f"connected {s.getsockname()[0]}", flush=True)
    except ConnectionRefusedError:
        print("refused", flush=True)
        return 1
    except TimeoutError:
        print("timeout", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "listen":
        listen(int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    else:
        uid = int(sys.argv[4]) if len(sys.argv) > 4 else None
        sys.exit(connect(sys.argv[2], int(sys.argv[3]), uid))
