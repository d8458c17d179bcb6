"""A user namespace with tiny inotify limits, and a process in it that takes the instances.

Each user namespace has its own `/proc/sys/user/max_inotify_instances` and
`max_inotify_watches` (user_namespaces(7)); what a user's processes in it use is counted there
(and in every ancestor). So a test can reach the kernel's limits without touching the host's
(128 instances per user, shared by every root process on this machine): `InotifyHog` starts a
holder process in a new user namespace (root mapped to root, so files stay accessible), sets
the limits there, and takes or releases instances on command; `enter(argv)` runs any command in
the same namespace (`nsenter`), where its instances count against the same tiny limit.

The holder (`python -m testbed.inotify_limit`) answers one line per command on stdin:
`hold N` (take instances until N are held or none is left: "holding K"), `release` ("holding
0"), `grab` (from now on, take any instance that becomes free: "grabbing"), `status`
("holding K"). Closing its stdin ends it.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from testbed.cleanup import Cleanup
from testbed.procs import HarnessError

REPO = Path(__file__).resolve().parents[1]
ANSWER_TIMEOUT = 30.0


def missing_prerequisites() -> str | None:
    """Why a user namespace with its own limits cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root: a user namespace with its own inotify limits, entered by nsenter"
    if not (shutil.which("unshare") and shutil.which("nsenter")):
        return "needs unshare and nsenter (util-linux)"
    return None


class InotifyHog:
    """The holder process, in its own user namespace with `instances`/`watches` limits."""

    def __init__(self, cleanup: Cleanup, instances: int, watches: int = 8192) -> None:
        argv = ["unshare", "--user", "--map-root-user", sys.executable, "-c",
                f"import sys; sys.path.insert(0, {str(REPO)!r}); "
                "from testbed.inotify_limit import main; "
                f"sys.exit(main({instances}, {watches}))"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        cleanup.add("stop the inotify hog", self.stop)
        self._expect("limits set")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def enter(self, argv: list[str]) -> list[str]:
        """`argv` run in the hog's user namespace (as its root, i.e. the host's root)."""
        return ["nsenter", f"--target={self.pid}", "--user", "--preserve-credentials", "--",
                *argv]

    def command(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._expect(None)

    def hold(self, n: int) -> int:
        return int(self.command(f"hold {n}").split()[1])

    def held(self) -> int:
        return int(self.command("status").split()[1])

    def _expect(self, line: str | None) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], ANSWER_TIMEOUT)
        got = self.proc.stdout.readline().strip() if ready else ""
        if not got or (line is not None and got != line):
            self.proc.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise HarnessError(f"inotify hog: expected {line or 'an answer'!r}, got {got!r}: "
                               f"{err.strip().splitlines()[-1:]}")
        return got

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


# --- the holder, inside the user namespace --------------------------------------------------------

def main(instances: int, watches: int) -> int:
    Path("/proc/sys/user/max_inotify_instances").write_text(f"{instances}\n")
    Path("/proc/sys/user/max_inotify_watches").write_text(f"{watches}\n")
    libc = ctypes.CDLL(None, use_errno=True)
    held: list[int] = []
    lock = threading.Lock()
    grabbing = threading.Event()
    ended = threading.Event()

    def take() -> bool:
        fd = libc.inotify_init1(os.O_CLOEXEC)
        if fd < 0:
            return False
        held.append(fd)
        return True

    def grab() -> None:  # take whatever instance is freed, within a millisecond
        while not ended.is_set():
            grabbing.wait()
            with lock:
                take()
            ended.wait(0.001)  # pacing, so the hog does not eat a core of a shared machine

    threading.Thread(target=grab, daemon=True).start()
    print("limits set", flush=True)
    for line in sys.stdin:
        cmd = line.split()
        with lock:
            if cmd[:1] == ["hold"]:
                while len(held) < int(cmd[1]) and take():
                    pass
            elif cmd == ["release"]:
                grabbing.clear()
                while held:
                    os.close(held.pop())
            elif cmd == ["grab"]:
                grabbing.set()
                print("grabbing", flush=True)
                continue
            print(f"holding {len(held)}", flush=True)
    ended.set()
    return 0
