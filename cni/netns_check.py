"""What CNI_NETNS may name: the one check on the runtime's netns that every path makes.

The in-process plugin (`cni.netns.in_netns`, every stage that enters the pod netns), the thin
client that hands a call to the node agent (`cni.agent_client`) and the agent itself (on the
descriptor it is handed) all go through this module, so no path accepts what another refuses:
a symlink to another pod's netns, a FIFO, a device, a namespace of another type or the host's
own netns are refused the same way, with the same message, wherever the call is served.

What a path must be (`open_netns`): opened with `O_PATH | O_NOFOLLOW` (never blocks on a FIFO,
no side effect on a device, a planted symlink is not followed), a link only if it is the
kernel's own namespace link (`/proc/PID/ns/net` reads as `net:[INODE]`) or one of our own
descriptors (`/proc/self/fd/N`, how the agent names what it was handed), an inode of nsfs,
reopened read-only through `/proc/self/fd` (no second lookup of the path) and of type
CLONE_NEWNET (`NS_GET_NSTYPE`). `is_own_netns` tells the caller's own (the host's) netns apart.

Lean on purpose: the thin client imports this on every agent-served pod start, so it uses only
`posix` and `_stat` (built into the interpreter) and `fcntl` (one small extension), not `os` (a
millisecond of imports) or `ctypes` (three); `cni.errors` and `errno` are imported only to
refuse (a fifth of a millisecond the accepted netns never pays). nsfs is recognised by its
device number, which every namespace file shares (one kernel-internal nsfs mount; bind mounts
keep it), instead of `fstatfs`'s f_type, which only ctypes can read.
"""

import _stat
import posix

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), Linux >= 4.11
OWN_NETNS = "/proc/self/ns/net"
_OWN_FD_PREFIX = "/proc/self/fd/"
_DIGITS = frozenset("0123456789")
_NS_NAME = frozenset("abcdefghijklmnopqrstuvwxyz_")


def _refused(msg: str) -> Exception:
    """`cni.errors.InvalidNetNS(msg)` (code 8), imported only when something is refused."""
    from cni.errors import InvalidNetNS

    return InvalidNetNS(msg)


def _kind(mode: int) -> str:
    for test, name in ((_stat.S_ISFIFO, "a FIFO"), (_stat.S_ISSOCK, "a socket"),
                       (_stat.S_ISCHR, "a character device"), (_stat.S_ISBLK, "a block device"),
                       (_stat.S_ISDIR, "a directory"), (_stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "a regular file"


def _is_ns_link_target(target: str) -> bool:
    """What a `/proc/PID/ns/*` link reads as: `<type>:[<inode>]` (e.g. `net:[4026531840]`)."""
    name, sep, rest = target.partition(":[")
    return (sep != "" and name != "" and set(name) <= _NS_NAME and rest.endswith("]")
            and len(rest) > 1 and set(rest[:-1]) <= _DIGITS)


def _is_own_fd(path: str) -> bool:
    """`/proc/self/fd/N`: a descriptor this process holds (the agent enters what it was handed
    through it)."""
    rest = path[len(_OWN_FD_PREFIX):] if path.startswith(_OWN_FD_PREFIX) else ""
    return rest != "" and set(rest) <= _DIGITS


def _nsfs_device() -> int:
    """The device number of nsfs: the one every namespace file is on."""
    return posix.stat(OWN_NETNS).st_dev


def _follow_ns_link(path: str) -> int:
    """The O_PATH fd of what a namespace link names; any other link is refused."""
    if _is_own_fd(path):
        return posix.open(path, posix.O_PATH | posix.O_CLOEXEC)
    target = posix.readlink(path)
    if not _is_ns_link_target(target):
        raise _refused(
            f"enter netns {path}: a symbolic link (to {target[:200]!r}), not a namespace file")
    return posix.open(path, posix.O_PATH | posix.O_CLOEXEC)


def open_netns(path: str) -> int:
    """An `O_RDONLY | O_CLOEXEC` descriptor of the network namespace at `path` (the caller closes
    it); `InvalidNetNS`, naming the path and what it is, for anything else. Never blocks, never
    creates anything, never follows a link that is not a namespace's."""
    try:
        pfd = posix.open(path, posix.O_PATH | posix.O_NOFOLLOW | posix.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise _refused(f"enter netns {path}: path does not exist") from exc
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise _refused(f"enter netns {path}: cannot open: {_why(exc)}") from exc
    try:
        info = posix.fstat(pfd)
        if _stat.S_ISLNK(info.st_mode):
            followed = _follow_ns_link(path)
            posix.close(pfd)
            pfd = followed
            info = posix.fstat(pfd)
        if not _stat.S_ISREG(info.st_mode) or info.st_dev != _nsfs_device():
            raise _refused(f"enter netns {path}: {_kind(info.st_mode)}, not a namespace file")
        fd = posix.open(f"{_OWN_FD_PREFIX}{pfd}",
                        posix.O_RDONLY | posix.O_NONBLOCK | posix.O_CLOEXEC)
    except OSError as exc:
        raise _refused(f"enter netns {path}: cannot open: {_why(exc)}") from exc
    finally:
        posix.close(pfd)
    try:
        _check_nstype(fd, f"enter netns {path}")
    except BaseException:
        posix.close(fd)
        raise
    return fd


def check_netns_fd(fd: int, what: str) -> None:
    """Refuse a descriptor that is not a network namespace (`what` names it in the error): for
    a descriptor that came from another process, which could be any open file."""
    try:
        info = posix.fstat(fd)
        nsfs = _nsfs_device()
    except OSError as exc:
        raise _refused(f"{what}: cannot inspect: {_why(exc)}") from exc
    if not _stat.S_ISREG(info.st_mode) or info.st_dev != nsfs:
        raise _refused(f"{what}: {_kind(info.st_mode)}, not a namespace file")
    _check_nstype(fd, what)


def is_own_netns(fd: int) -> bool:
    """Is `fd` this process's own network namespace (for the plugin and the agent alike: the
    host's)? Compared as (device, inode), the namespace's identity."""
    mine, theirs = posix.stat(OWN_NETNS), posix.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


def _check_nstype(fd: int, what: str) -> None:
    """A namespace of another type (uts, mnt...) is refused before anything enters it."""
    import fcntl

    try:
        nstype = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as exc:
        import errno

        if exc.errno == errno.ENOTTY:
            raise _refused(f"{what}: not a namespace file") from exc
        return  # ioctl unsupported (kernel < 4.11): setns(CLONE_NEWNET) will say EINVAL
    if nstype != CLONE_NEWNET:
        raise _refused(f"{what}: namespace type {nstype:#x} is not a netns")


def _why(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
