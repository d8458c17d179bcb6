"""Cgroups named the way the kubelet names a pod's, so that a test's process is a pod's.

The node agent tells whose a netns is from the pod UID in its processes' cgroup paths. A test
makes that real: `pod_cgroup` creates, in the host's cgroup v2 hierarchy, a test-owned subtree
`icni-test-<hex>/` holding a pod's cgroup in the systemd driver's spelling
(`kubepods-besteffort-pod<uid with _>.slice/cri-containerd-<id>.scope`) or cgroupfs's
(`kubepods/besteffort/pod<uid>/<id>`), and moves processes into it. Cleanup moves them back to
the hierarchy's root and removes the subtree. No controller is enabled: only the path matters.
"""

from __future__ import annotations

import errno
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from testbed.cleanup import Cleanup


def cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `.../unified` on a
    hybrid host), or None."""
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        head, sep, tail = line.partition(" - ")
        if sep and tail.split()[0] == "cgroup2":
            return Path(head.split()[4])
    return None


@dataclass
class PodCgroup:
    """A pod's container cgroup (`leaf`) under a test-owned subtree (`top`)."""

    root: Path
    top: Path
    leaf: Path
    uid: str

    def add(self, pid: int) -> None:
        """Move process `pid` into the pod's cgroup."""
        (self.leaf / "cgroup.procs").write_text(f"{pid}\n")

    def remove(self) -> None:
        """Move every process still here back to the root, then remove the subtree
        (idempotent)."""
        for directory in sorted((p for p in [self.top, *self.top.rglob("*")] if p.is_dir()),
                                key=lambda p: len(p.parts), reverse=True):
            for pid in _procs(directory):
                try:
                    (self.root / "cgroup.procs").write_text(f"{pid}\n")
                except OSError as exc:
                    if exc.errno != errno.ESRCH:  # exited meanwhile: nothing to move
                        raise
            directory.rmdir()


def pod_cgroup(cleanup: Cleanup, uid: str, driver: str = "systemd") -> PodCgroup:
    """A cgroup for a container of the pod with `uid`, in `driver`'s spelling; removed when
    `cleanup` closes. `OSError` when this host has no cgroup v2 hierarchy we may write."""
    root = cgroup2_mount()
    if root is None:
        raise OSError(errno.ENOENT, "no cgroup v2 hierarchy mounted")
    top = root / f"icni-test-{uuid.uuid4().hex[:8]}"
    container = uuid.uuid4().hex * 2
    if driver == "systemd":
        leaf = (top / f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice"
                / f"cri-containerd-{container}.scope")
    else:
        leaf = top / "kubepods" / "besteffort" / f"pod{uid}" / container
    top.mkdir()
    cgroup = PodCgroup(root, top, leaf, uid)
    cleanup.add(f"remove cgroup {top}", lambda: top.exists() and cgroup.remove())
    leaf.mkdir(parents=True)
    return cgroup


def _procs(directory: Path) -> list[int]:
    try:
        return [int(line) for line in (directory / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def writable() -> bool:
    """Whether `pod_cgroup` can work here (a cgroup v2 hierarchy we may create groups in)."""
    root = cgroup2_mount()
    return root is not None and os.access(root, os.W_OK)
