"""Pod netns owned by a user namespace (`hostUsers: false`), and processes run inside them.

`create_userns_netns` starts a holder process (this module's `hold`) that unshares a
user namespace and a network namespace, has its `uid_map`/`gid_map` written by us (host root),
and is then attached by name (`ip netns attach`: the bind mount a runtime makes), so CNI_NETNS
and `ip netns exec` work as for any pod. By default both namespaces are made at once, before
the map exists, as a runtime cloning both in one go does (the netns's /proc/net files then
stay owned by host root); `net_after_map` makes the netns from inside the mapped user
namespace instead. The holder is the pod's "pause container": the node agent finds the netns
through /proc by it. Its removal (netns deleted, holder stopped) is registered on the caller's
`Cleanup` as soon as it exists.

`inside(ns, uid, module, *args)` is the argv that runs a module of the repo (the proxy
stand-in, `testbed/sockets.py`) as its `__main__` inside the pod's user and network namespaces
as a uid *of the pod* (1337, 1000; 0 is the pod's root). The interpreter may live where such
a uid cannot read (a pyenv under /root), so the launcher imports the module and warms the
codecs while still host root, then enters the namespaces (it is single-threaded, as the kernel
requires), drops to the uid and runs the already compiled code. `inside_binary` does the same
for a binary, e.g. the pod's root flushing its own rules as a pod with NET_ADMIN can.
"""

from __future__ import annotations

import ctypes
import fcntl
import importlib
import os
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from testbed import netns as nsutil
from testbed.cleanup import Cleanup
from testbed.procs import HarnessError, sh

REPO = Path(__file__).resolve().parents[1]
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
NS_GET_USERNS = 0xB701
POD_MAPPING = "0 100000 65536"
"""What the kubelet gives a `hostUsers: false` pod: its uids 0-65535 are host 100000-165535."""
HOLDER_TIMEOUT = 15.0


@dataclass
class UsernsNetns:
    """A named pod netns owned by its own user namespace, kept alive by `holder`."""

    name: str
    holder: subprocess.Popen

    @property
    def path(self) -> str:
        return nsutil.path(self.name)

    @property
    def userns(self) -> str:
        """The owning user namespace's file (the holder's)."""
        return f"/proc/{self.holder.pid}/ns/user"

    def run(self, *argv: str, check: bool = True, input: str | None = None) -> str:
        """argv in the netns, as host root (outside the user namespace)."""
        return nsutil.ns_exec(self.name, *argv, check=check, input=input)


def create_userns_netns(cleanup: Cleanup, prefix: str, mapping: str = POD_MAPPING,
                        net_after_map: bool = False) -> UsernsNetns:
    """A netns `<prefix>-<hex>`, lo up, owned by a new user namespace mapped by `mapping`
    (uid_map and gid_map lines); removed when `cleanup` closes."""
    name = nsutil.unique(prefix)
    argv = [*_LAUNCHER, "hold", *(["--net-after-map"] if net_after_map else [])]
    holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    cleanup.add(f"stop the holder of {name}", lambda: _stop(holder))
    _expect(holder, "unshared")
    for what in ("uid_map", "gid_map"):
        Path(f"/proc/{holder.pid}/{what}").write_text(mapping + "\n")
    assert holder.stdin is not None
    holder.stdin.write("mapped\n")
    holder.stdin.flush()
    _expect(holder, "ready")
    sh("ip", "netns", "attach", name, str(holder.pid))
    cleanup.add(f"delete netns {name}", lambda: nsutil.delete_netns(name))
    ns = UsernsNetns(name, holder)
    ns.run("ip", "link", "set", "lo", "up")
    ns.run("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
           "net.ipv6.conf.default.accept_dad=0")
    return ns


def inside(ns: UsernsNetns | str, uid: int, module: str, *args: str) -> list[str]:
    """The argv running `module` as `__main__` in `ns`'s user and network namespaces, as the
    pod's `uid` (and gid)."""
    path = ns.path if isinstance(ns, UsernsNetns) else ns
    return [*_LAUNCHER, "exec", path, str(uid), module, *args]


def inside_binary(ns: UsernsNetns | str, uid: int, *argv: str) -> list[str]:
    """The argv running a binary (`iptables-nft ...`) there as the pod's `uid`: the pod's
    root (0) keeps its capabilities across the exec, as in a container of the pod."""
    path = ns.path if isinstance(ns, UsernsNetns) else ns
    return [*_LAUNCHER, "execv", path, str(uid), *argv]


_LAUNCHER = [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(REPO)!r}); "
             "from testbed.userns import main; sys.exit(main(sys.argv[1:]))"]
"""This module's `main`, from any working directory."""


def _expect(holder: subprocess.Popen, line: str) -> None:
    """The holder's next stdout line must be `line`, within HOLDER_TIMEOUT."""
    assert holder.stdout is not None
    ready, _, _ = select.select([holder.stdout], [], [], HOLDER_TIMEOUT)
    got = holder.stdout.readline().strip() if ready else ""
    if got != line:
        holder.kill()
        err = holder.stderr.read() if holder.stderr else ""
        raise HarnessError(f"userns holder: expected {line!r}, got {got!r}: "
                           f"{err.strip().splitlines()[-1:]}")


def _stop(holder: subprocess.Popen) -> None:
    """Closing its stdin ends the holder; SIGKILL if it has not gone within 5 s."""
    if holder.poll() is None:
        try:
            if holder.stdin is not None:
                holder.stdin.close()
            holder.wait(timeout=5)
        except (subprocess.TimeoutExpired, BrokenPipeError):
            holder.kill()
            holder.wait(timeout=5)
    for stream in (holder.stdout, holder.stderr):
        if stream is not None:
            stream.close()


# --- the two processes this module runs as `python -m testbed.userns` ---------------------------

def _libc_call(name: str, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def hold(net_after_map: bool) -> int:
    """Unshare, wait for the map, (unshare the netns), say "ready", live until stdin closes."""
    _libc_call("unshare", CLONE_NEWUSER | (0 if net_after_map else CLONE_NEWNET))
    print("unshared", flush=True)
    if sys.stdin.readline().strip() != "mapped":
        return 1
    if net_after_map:
        _libc_call("unshare", CLONE_NEWNET)
    print("ready", flush=True)
    sys.stdin.read()  # until the harness closes it
    return 0


def _enter(netns_path: str, uid: int) -> None:
    """Into the netns and the user namespace owning it, then become the pod's `uid`."""
    net = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    owner = fcntl.ioctl(net, NS_GET_USERNS)
    _libc_call("setns", net, CLONE_NEWNET)
    _libc_call("setns", owner, CLONE_NEWUSER)
    os.close(net)
    os.close(owner)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def run_inside(netns_path: str, uid: int, module: str, args: list[str]) -> None:
    """Load `module` as host root, enter, become `uid`, run it as __main__."""
    mod = importlib.import_module(module)
    assert mod.__file__ is not None
    code = compile(Path(mod.__file__).read_text(), mod.__file__, "exec")
    "warm-up".encode("idna")  # getaddrinfo encodes str hosts with it, after the drop
    importlib.import_module("shutil")  # argparse imports it lazily, for its help formatter
    _enter(netns_path, uid)
    sys.argv = [mod.__file__, *args]
    exec(code, {"__name__": "__main__", "__file__": mod.__file__})


def main(argv: list[str]) -> int:
    if argv[:1] == ["hold"]:
        return hold("--net-after-map" in argv[1:])
    if argv[:1] == ["exec"] and len(argv) >= 4:
        run_inside(argv[1], int(argv[2]), argv[3], argv[4:])
        return 0
    if argv[:1] == ["execv"] and len(argv) >= 4:
        _enter(argv[1], int(argv[2]))
        os.execvp(argv[3], argv[3:])
    print("usage: python -m testbed.userns hold [--net-after-map] | "
          "exec NETNS UID MODULE [ARGS...] | execv NETNS UID BINARY [ARGS...]",
          file=sys.stderr)
    return 2


def owner_of(path: str) -> tuple[int, int]:
    """(st_dev, st_ino) of the user namespace owning the netns at `path`."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        owner = fcntl.ioctl(fd, NS_GET_USERNS)
    finally:
        os.close(fd)
    try:
        st = os.fstat(owner)
    finally:
        os.close(owner)
    return st.st_dev, st.st_ino


def ns_key(path: str) -> tuple[int, int]:
    """(st_dev, st_ino) of a namespace file (`/proc/PID/ns/user`...)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
