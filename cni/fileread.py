"""Reading files the plugin does not control: bounded in size, and never blocked by what they are.

The plugin runs unattended for every pod, so a file that is not what it seems must be an error,
not a hang: a FIFO put where the kubeconfig should be blocks `open()` until a writer appears, and
`/dev/zero` never ends. `read_regular_file` opens without blocking (`O_NONBLOCK`: opening a FIFO
returns at once), checks on the open descriptor (`fstat`, so nothing can be swapped in between)
that it is a regular file, and reads at most `limit` bytes. Links are followed: these are reads,
and Kubernetes mounts secrets and projected tokens as links (`token -> ..data/token`).

`read_file_at_most` is for a file a person names on the command line, where a pipe is a fair
input (`--pod-file <(kubectl get pod p -o json)`): it stops past `limit`, and with `timeout` it
also stops when the whole read (opening included) takes longer, so a FIFO nobody writes to, or
a terminal, is an error rather than a hang.

Both raise `OSError` with `strerror` saying what is wrong, so callers' existing "cannot read
PATH: {strerror}" messages stay right. Hot path: stdlib only, nothing imported beyond `os`.
"""

from __future__ import annotations

import errno
import os
import stat

_CHUNK = 64 * 1024

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_regular_file(path: str, limit: int) -> bytes:
    """The contents of the regular file at `path`; `OSError` if it is anything else or too big."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a file")
            raise OSError(errno.EINVAL, f"not a regular file ({kind})", path)
        return _read_fd(fd, limit, path)
    finally:
        os.close(fd)


def read_file_at_most(path: str | os.PathLike[str], limit: int,
                      timeout: float | None = None) -> bytes:
    """The contents of `path` (any readable file, a pipe included) if at most `limit` bytes,
    and, with `timeout`, if it all came within `timeout` seconds."""
    if timeout is None:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            return _read_fd(fd, limit, os.fspath(path))
        finally:
            os.close(fd)
    # Without blocking, opening a FIFO returns at once; the wait for its writer is then a poll
    # with a deadline (Linux reports no hang-up on a FIFO that never had a writer).
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return _read_fd(fd, limit, os.fspath(path))
        return _read_fd_until(fd, limit, os.fspath(path), timeout)
    finally:
        os.close(fd)


def _read_fd_until(fd: int, limit: int, path: str, timeout: float) -> bytes:
    """`_read_fd` for a non-blocking descriptor that may have nothing yet (a pipe, a FIFO, a
    terminal): wait for data with `poll`, for no longer than `timeout` seconds in all."""
    import select
    import time

    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks: list[bytes] = []
    total = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise OSError(errno.ETIMEDOUT, f"not read to its end within {timeout:g} s", path)
        try:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
        except BlockingIOError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", path)


def _read_fd(fd: int, limit: int, path: str) -> bytes:
    """Read to EOF, but stop (and fail) as soon as more than `limit` bytes have come."""
    chunks: list[bytes] = []
    total = 0
    while chunk := os.read(fd, min(_CHUNK, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", path)
    return b"".join(chunks)
