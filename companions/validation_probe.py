"""Stand-in for Istio's `istio-validation` init container (`istio-iptables --run-validation`).

What upstream's validation (`tools/istio-iptables/pkg/validation`) does, and so this does: listen on
127.0.0.1:15001 and :15006 (::1 for an IPv6 pod) with SO_REUSEADDR; as the proxy uid (1337),
connect from 127.0.0.1 to 127.0.0.6:15002 every second. Only the CNI's redirect turns that
connection into one accepted by our 15006 listener with SO_ORIGINAL_DST port 15002: then exit 0.
Without the rules nothing listens on 15002, so after the timeout (5 s) log upstream's message
and exit 126, the code the repair controller keys on.

The same probe holds in native nftables mode: upstream's `istio-output` chain sends the
proxy uid's connection on `lo` to a non-127.0.0.1 address (`oifname "lo" ip daddr !=
127.0.0.1 ... meta skuid 1337 jump istio-in-redirect`) to `redirect to :15006`, and nft's
`redirect` is conntrack NAT like iptables' REDIRECT, so SO_ORIGINAL_DST still reads 15002
(the demo and its e2e test run it in both modes).

Privileges: the listeners are bound first, then the process drops to uid/gid 1337 when started
as root. Everything that may be imported lazily is imported before that, because after setuid
the interpreter's own files (e.g. under /root) may be unreadable.
"""

from __future__ import annotations

import argparse
import encodings.idna  # noqa: F401 - socket may need it lazily for address strings
import os
import select
import socket
import struct
import sys
import threading
import time

VALIDATION_ERROR_CODE = 126
SO_ORIGINAL_DST = 80
FAILURE_MESSAGE = (
    "iptables validation failed; workload is not ready for Istio.\n"
    "When using Istio CNI, this can occur if a pod is scheduled before the node is ready.\n\n"
    "If installed with 'cni.repair.deletePods=true', this pod should automatically be deleted "
    "and retry.\nOtherwise, this pod will need to be manually removed so that it is scheduled "
    "on a node with istio-cni running, allowing iptables rules to be established.\n"
)


def original_port(conn: socket.socket) -> int:
    if conn.family == socket.AF_INET6:
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
    else:
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    return int(struct.unpack("!H", raw[2:4])[0])


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(16)
    return sock


def serve(listeners: list[socket.socket], probe_port: int, ok: threading.Event) -> None:
    """Accept until a connection arrives whose original destination port is the probe port."""
    while not ok.is_set():
        readable, _, _ = select.select(listeners, [], [], 0.5)
        for sock in readable:
            conn, _ = sock.accept()
            with conn:
                try:
                    if original_port(conn) == probe_port:
                        ok.set()
                except OSError:
                    pass  # not redirected: no conntrack original destination


def probe_once(local: str, target: str, port: int, timeout: float) -> None:
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.bind((local, 0))
        try:
            s.connect((target, port))
        except OSError:
            pass  # refused / timed out: the next try may succeed once rules exist


def drop_privileges(uid: int, gid: int) -> None:
    if os.geteuid() != 0:
        return
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ipv6", action="store_true", help="the pod's IP is IPv6: use ::1 / ::6")
    p.add_argument("--probe-port", type=int, default=15002)
    p.add_argument("--outbound-port", type=int, default=15001)
    p.add_argument("--inbound-port", type=int, default=15006)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between tries")
    p.add_argument("--timeout", type=float, default=5.0, help="give up after (seconds)")
    p.add_argument("--uid", type=int, default=1337)
    p.add_argument("--gid", type=int, default=1337)
    args = p.parse_args(argv)
    local, target = ("::1", "::6") if args.ipv6 else ("127.0.0.1", "127.0.0.6")
    listeners = [listen(local, args.outbound_port), listen(local, args.inbound_port)]
    drop_privileges(args.uid, args.gid)
    ok = threading.Event()
    threading.Thread(target=serve, args=(listeners, args.probe_port, ok), daemon=True).start()
    deadline = time.monotonic() + args.timeout
    while True:
        probe_once(local, target, args.probe_port, min(args.interval, args.timeout))
        left = deadline - time.monotonic()
        if ok.wait(max(0.0, min(args.interval, left))):
            print("validation passed", file=sys.stderr)
            return 0
        if time.monotonic() >= deadline:
            print(f"error {FAILURE_MESSAGE}", file=sys.stderr, end="")
            return VALIDATION_ERROR_CODE


if __name__ == "__main__":
    sys.exit(main())
