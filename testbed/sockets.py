"""Socket tools run inside pod/node netns by the harness (via `ip netns exec`).

  listen PORT [COUNT]       accept COUNT connections on 0.0.0.0:PORT (and [::]:PORT); for each
                            print "conn <peer> orig <original destination>" read with
                            SO_ORIGINAL_DST (getsockopt SOL_IP/SOL_IPV6 80), then exit.
  connect HOST PORT [UID]   connect (as UID if given), print "connected <local addr>", exit 0;
                            exit 1 with "refused"/"timeout".
  serve PORT NAME           accept connections on PORT for ever; say NAME to each and close:
                            who answered a client is what the client reads.
  probe HOST PORT UID [N]   N connections (0: until killed) one after the other as UID, each
                            printing "got <name> <t>" (what the server said) or "fail <why>
                            <t>", t the CLOCK_MONOTONIC second the connection began.
The listener and the server print "ready" once they listen, so tests synchronise on output,
never on sleeps.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
import time

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


def serve(port: int, name: str) -> None:
    socks = [s for s in (_bound(socket.AF_INET, port), _bound(socket.AF_INET6, port)) if s]
    print("ready", flush=True)
    said = name.encode() + b"\n"
    while True:
        readable, _, _ = select.select(socks, [], [])
        for sock in readable:
            conn, _ = sock.accept()
            with conn:
                try:
                    conn.sendall(said)
                except OSError:
                    continue  # the client gave up: nothing to tell it


def probe(host: str, port: int, uid: int, count: int) -> None:
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    if os.getuid() != uid:  # else already started as that uid (inside a pod's userns)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    done = 0
    while count == 0 or done < count:
        done += 1
        began = time.monotonic()
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(sockaddr)
                said = s.makefile("rb").readline(64).decode(errors="replace").strip()
            outcome = f"got {said}" if said else "fail nothing-said"
        except OSError as exc:
            outcome = f"fail {type(exc).__name__}"
        print(f"{outcome} {began:.6f}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "listen":
        listen(int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    elif sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1] == "probe":
        probe(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
              int(sys.argv[5]) if len(sys.argv) > 5 else 0)
    else:
        uid = int(sys.argv[4]) if len(sys.argv) > 4 else None
        sys.exit(connect(sys.argv[2], int(sys.argv[3]), uid))
