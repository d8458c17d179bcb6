"""Run a step on a pod netns as its owner: from inside the user namespace that owns the netns.

A pod with `hostUsers: false` gets a netns owned by its own user namespace (the pod's uids
0-65535 mapped to high host uids). The kernel accepts owner-match rules (`--uid-owner`,
`--gid-owner`, which every rule set has for the proxy's uid) only from a writer inside the
netns's own user namespace, so programming, checking and resetting such a netns happen there.

The owner comes from the netns itself (`ioctl(NS_GET_USERNS)` on this thread's netns): no pid
is looked up. A netns owned by our own user namespace (every `hostUsers: true` pod) runs the
step right here, exactly as without this module, for one ioctl and two stats.

Otherwise the step runs in a forked child: the kernel lets only a single-threaded process
`setns` into a user namespace (the agent has threads; a forked child has one), and nothing
ever comes back out of one. The child
- makes itself non-dumpable first: it is about to hold capabilities in a namespace the pod's
  root also administers, and must not be ptrace-able from there;
- enters the owner with `setns(CLONE_NEWUSER)`, keeping its credentials. Host uid 0 (unmapped
  in there) still owns what host root owns: the host's `/run/xtables.lock` (older iptables
  ignore `XTABLES_LOCKFILE`), and a netns's `/proc/net/ip_tables_names`, which the kernel
  leaves owned by host root when the netns was made before its uid map was written (a runtime
  cloning both namespaces at once does exactly that). The pod's root uid could read neither;
- raises the capabilities it now holds (all of them, in the pod's user namespace) as ambient
  ones, so the binaries it runs (`iptables-restore`, `nft`) keep them: an exec by a uid that
  is not the namespace's root would drop them all;
- runs the step in the pod netns (a forked child inherits its thread's netns) and sends back
  its return value or its exception, pickled, through a pipe read with a size and time bound.

Hot path: nothing beyond the standard library; `pickle` and `select` are imported only when a
step really runs in a child.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cni.errors import RulesApplyFailed
from cni.netns import CURRENT_NETNS, _c

T = TypeVar("T")

NS_GET_USERNS = 0xB701  # _IO(0xb7, 0x1), Linux >= 4.9
CLONE_NEWUSER = 0x10000000
PR_SET_DUMPABLE = 4
PR_CAPBSET_READ = 23
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_WORDS = 2  # version 3 capability sets are two 32-bit words
REPLY_LIMIT = 16 << 20
"""Largest reply read back from a child (a StateDiff of a netns full of rules is far less)."""
STEP_DEADLINE = 120.0
"""Longest a step may take in a child; covers iptables' `--wait=30` lock waits several times."""
OWN_USERNS = "/proc/self/ns/user"


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def foreign_owner() -> int | None:
    """An fd of the user namespace owning this thread's netns, when that is not our own one;
    None when it is ours (or the kernel cannot tell: before 4.9, or an owner above ours, which
    we could not enter anyway). The caller closes the fd."""
    net = os.open(CURRENT_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    try:
        owner = fcntl.ioctl(net, NS_GET_USERNS)  # a new fd, close-on-exec
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL, errno.EPERM):
            return None
        raise
    finally:
        os.close(net)
    theirs, ours = os.fstat(owner), os.stat(OWN_USERNS)
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        os.close(owner)
        return None
    return owner


def as_owner(where: str, step: Callable[..., T], *args: Any) -> T:
    """`step(*args)` run as the owner of this thread's netns (`where` names it in errors):
    right here when we own it, else in a child inside its user namespace (module docstring).
    The step's own exceptions come back as they were raised; a child that cannot enter, dies
    or overruns STEP_DEADLINE is a `RulesApplyFailed`."""
    owner = foreign_owner()
    if owner is None:
        return step(*args)
    try:
        return _in_child(owner, where, step, args)
    finally:
        os.close(owner)


def _in_child(owner: int, where: str, step: Callable[..., T], args: tuple[Any, ...]) -> T:
    import pickle

    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # child: never returns into the caller's stack
        code = 0
        try:
            os.close(rfd)
            try:
                _enter(owner, where)
                reply: tuple[bool, Any] = (True, step(*args))
            except BaseException as exc:  # noqa: B036 - everything must reach the parent
                reply = (False, exc)
            try:
                data = pickle.dumps(reply)
            except Exception as exc:  # an unpicklable result or exception: say what it was
                data = pickle.dumps((False, RulesApplyFailed(
                    f"in the user namespace owning {where}: {type(exc).__name__}: {exc}")))
            _write_all(wfd, data)
        except BaseException:  # noqa: B036 - the parent reports a child that said nothing
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    try:
        data = _read_reply(rfd, pid, where)
    finally:
        os.close(rfd)
    ok, value = pickle.loads(data)  # our own child's reply: same code, same privileges
    if ok:
        return value
    raise value


def _enter(owner: int, where: str) -> None:
    """Become the child described in the module docstring (non-dumpable, inside, ambient)."""
    libc = _c()
    try:
        _check(libc.prctl(PR_SET_DUMPABLE, ctypes.c_ulong(0), ctypes.c_ulong(0),
                          ctypes.c_ulong(0), ctypes.c_ulong(0)))
        _check(libc.setns(owner, CLONE_NEWUSER))
        _keep_caps_across_exec(libc)
    except OSError as exc:
        raise RulesApplyFailed(
            f"enter the user namespace owning {where}: {exc.strerror}") from exc


def _keep_caps_across_exec(libc: ctypes.CDLL) -> None:
    """Every capability both permitted and in the bounding set becomes inheritable and
    ambient (the only way a non-root uid keeps capabilities across exec)."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * CAP_WORDS)()
    _check(libc.capget(ctypes.byref(header), data))
    caps = [cap for cap in range(32 * CAP_WORDS)
            if data[cap // 32].permitted >> (cap % 32) & 1
            and libc.prctl(PR_CAPBSET_READ, ctypes.c_ulong(cap), ctypes.c_ulong(0),
                           ctypes.c_ulong(0), ctypes.c_ulong(0)) == 1]
    for cap in caps:
        data[cap // 32].inheritable |= 1 << (cap % 32)
    _check(libc.capset(ctypes.byref(header), data))
    for cap in caps:
        _check(libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_RAISE),
                          ctypes.c_ulong(cap), ctypes.c_ulong(0), ctypes.c_ulong(0)))


def _check(rc: int) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_reply(rfd: int, pid: int, where: str) -> bytes:
    """The child's whole reply (until it closes the pipe), then its exit status reaped; a
    child past STEP_DEADLINE or REPLY_LIMIT is killed."""
    import select

    deadline = time.monotonic() + STEP_DEADLINE
    chunks: list[bytes] = []
    size = 0
    poller = select.poll()
    poller.register(rfd, select.POLLIN)
    problem = ""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            problem = f"no answer after {STEP_DEADLINE:.0f} s"
            break
        chunk = os.read(rfd, 65536)
        if not chunk:
            break
        size += len(chunk)
        if size > REPLY_LIMIT:
            problem = f"a reply over {REPLY_LIMIT} bytes"
            break
        chunks.append(chunk)
    if problem:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if problem or not chunks:
        problem = problem or f"it died (wait status {status})"
        raise RulesApplyFailed(f"step in the user namespace owning {where}: {problem}")
    return b"".join(chunks)
