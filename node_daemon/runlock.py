"""One agent per node: an exclusive `flock` on `<run dir>/agent.lock`, held for the agent's life.

Two agents on one node (an overlapping rollout, a debug copy of the DaemonSet) share the run
dir: each binds the plugin's sockets there (`cni.sock`, `log.sock`), finds them replaced by the
other's, and binds them back on its next check, so each is ready half the time and the node
flaps. The agent therefore takes this lock before it touches anything shared (the sockets, the
node's taint and condition, the plugin on the host) and keeps it until its shutdown is done
(uninstall included), so a second agent waits, not ready, and starts only once the first has
finished.

What is held is the open file description, never a name: the kernel drops the lock when the
holder dies, however it dies (SIGKILL, OOM), so nothing stale is ever left to clean up. The fd
is close-on-exec: a child (iptables, nft) must not inherit it and keep the lock after the
agent is gone. The holder unlinks the file before it lets go; so a waiter that locked a file
then checks that the path still names the inode it locked, and starts over on a fresh file if
not (otherwise it and a newcomer on the new file would both hold "the" lock). The holder's pid
is written into the file for the waiter's message, and used for nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "agent.lock"
MAX_PID_BYTES = 32


class RunDirLock:
    """`<run_dir>/agent.lock`: `acquire()` tries once; `release()` unlinks and lets go."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if nobody holds it (never blocks); True when held. Raises OSError
        when the run dir cannot hold a lock file at all."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(8):  # a holder unlinking between our open and flock: start over
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                         0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    return False
                raise
            if self._names(fd):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._fd = fd
                return True
            os.close(fd)  # we locked a file its holder had already unlinked
        return False

    def _names(self, fd: int) -> bool:
        """Whether the lock path still names the file `fd` has open."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def holder(self) -> str:
        """The pid the holder wrote ("?" when unreadable): for messages only."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return "?"
        try:
            text = os.read(fd, MAX_PID_BYTES).decode("ascii", "replace").strip()
        except OSError:
            return "?"
        finally:
            os.close(fd)
        return text if text.isdigit() else "?"

    def release(self) -> None:
        """Unlink the file (while still holding it), then let go. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            if self._names(fd):
                os.unlink(self.path)
        os.close(fd)
