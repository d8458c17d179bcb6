"""Named network namespaces for tests: created by us, with a unique prefix, always removed."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SOCKETS = str(Path(__file__).with_name("sockets.py"))


def is_root() -> bool:
    return os.geteuid() == 0


def run(*argv: str, check: bool = True, input: str | None = None) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, input=input, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@contextmanager
def netns(prefix: str = "icni-t") -> Iterator[str]:
    """A fresh named netns with lo up; yields its name; deleted afterwards."""
    name = unique(prefix)
    run("ip", "netns", "add", name)
    try:
        run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0")
        yield name
    finally:
        run("ip", "netns", "delete", name, check=False)


def path(name: str) -> str:
    return f"/var/run/netns/{name}"


def ns_exec(name: str, *argv: str, check: bool = True) -> str:
    return run("ip", "netns", "exec", name, *argv, check=check)


class Listener:
    """sockets.py listen, inside a netns; `ready` is awaited by reading its first line."""

    def __init__(self, ns: str, port: int, count: int = 1) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, SOCKETS, "listen", str(port), str(count)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline().strip()
        if first != "ready":
            self.proc.kill()
            raise RuntimeError(f"listener on {port} in {ns} failed: {self.proc.stderr.read()}")

    def lines(self) -> list[str]:
        out, _ = self.proc.communicate(timeout=30)
        return [ln for ln in out.splitlines() if ln]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def connect(ns: str, host: str, port: int, uid: int | None = None) -> tuple[int, str]:
    argv = ["ip", "netns", "exec", ns, sys.executable, SOCKETS, "connect", host, str(port)]
    if uid is not None:
        argv.append(str(uid))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode, proc.stdout.strip()
