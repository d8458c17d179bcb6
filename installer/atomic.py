"""Atomic file writes: the only way the installer changes a file on the host.

Every write goes to a temp file in the destination's own directory, is fsynced, gets its final
mode, and is renamed over the destination; the directory is fsynced after the rename. A reader
(the kubelet, containerd, another CNI's watcher) therefore sees the old bytes or the new bytes,
never a truncated file, whatever happens to this process (SIGKILL, OOM) or to the node (power
loss). Temp names start with a dot and end in `.istio-cni-tmp-<random>`: no `.conf`, `.conflist`
or `.json` suffix, so libcni never loads one, and `remove_stale_temps` can find and delete what a
killed run left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

TEMP_MARK = ".istio-cni-tmp-"


def temp_name(final_name: str) -> str:
    """The temp name used for `final_name` (also what `is_temp` recognises)."""
    return f".{final_name}{TEMP_MARK}{secrets.token_hex(4)}"


def is_temp(name: str) -> bool:
    return name.startswith(".") and TEMP_MARK in name


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable (best effort on filesystems without it)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` (file mode `mode`) atomically; raises OSError on failure.

    The temp file is removed if anything fails before the rename, so a failed write leaves the
    directory as it was.
    """
    directory = path.parent
    tmp = directory / temp_name(path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, mode)  # explicit: the umask must not decide a kubeconfig's mode
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def remove_file(path: Path) -> bool:
    """Unlink `path` durably; False if it was already gone (removal is idempotent)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def remove_stale_temps(directory: Path) -> list[str]:
    """Delete our temp files left in `directory` by a run that was killed mid-write."""
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if is_temp(name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / name)
                removed.append(name)
    return removed


MAX_READ_BYTES = 1 << 20
"""The most any file the installer reads may hold (CNI configs are a few KB): net.d is shared
with other writers, and one huge file must not grow the agent without bound."""


def read_bytes(path: Path, limit: int = MAX_READ_BYTES) -> bytes | None:
    """The file's bytes, or None when it does not exist.

    Opened without blocking and checked to be a regular file (a FIFO or a device in net.d would
    otherwise hang or flood the agent), and read up to `limit` bytes: more raises OSError
    (EFBIG), as does anything that is not a regular file (EINVAL). Symlinks are followed, as
    the runtime follows them.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        chunks = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def file_mode(path: Path, default: int) -> int:
    """The permission bits of `path`, or `default` when it does not exist."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return default
