"""The demo's app and servers: a tiny echo server and a one-shot client, run inside a netns.

    python -m companions.demo.netcat serve HOST PORT
        prints "ready" once listening, then "connection from IP:PORT" per connection, and
        echoes every byte back; runs until SIGTERM.
    python -m companions.demo.netcat connect HOST PORT MESSAGE [--uid UID]
        sends MESSAGE, prints "reply: <what came back>", exits 0 (1 with "error: ..." if not).

Why `--uid`: the plugin's rules decide by socket owner (`--uid-owner 1337 -j RETURN` exempts
the proxy), and the owner is fixed when the socket is created. So the client becomes the app
user first, then creates its socket: that is what makes its connection an app's, captured to
15001. Everything the client needs is imported before the privilege drop, because the
interpreter may live where that user cannot read (a pyenv under /root).
"""

from __future__ import annotations

import argparse
import encodings.idna  # noqa: F401 - loaded before the privilege drop (see the docstring)
import os
import signal
import socket
import sys
import threading


def serve(host: str, port: int) -> int:
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(16)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print("ready", flush=True)
    while True:
        conn, peer = listener.accept()
        print(f"connection from {peer[0]}:{peer[1]}", flush=True)
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def connect(host: str, port: int, message: str, uid: int | None) -> int:
    if uid is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    try:
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(message.encode())
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
    except OSError as exc:
        print(f"error: {exc.strerror or exc}", flush=True)
        return 1
    print(f"reply: {reply.decode(errors='replace')}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("host")
    s.add_argument("port", type=int)
    c = sub.add_parser("connect")
    c.add_argument("host")
    c.add_argument("port", type=int)
    c.add_argument("message")
    c.add_argument("--uid", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        return serve(args.host, args.port)
    return connect(args.host, args.port, args.message, args.uid)


if __name__ == "__main__":
    sys.exit(main())
