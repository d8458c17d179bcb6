"""Which pod a process belongs to, from the pod UID its cgroup path carries.

The kubelet puts every container of a pod under a cgroup named after the pod's UID, in each
driver's spelling:

- cgroupfs: `/kubepods/burstable/pod2c48913c-b29f-11e7-9350-020968147796/<container id>`
- systemd:  `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2c48913c_b29f_
  11e7_9350_020968147796.slice/cri-containerd-<container id>.scope`

and the same nested under a node's own container (kind: `/system.slice/docker-<id>.scope/
kubelet.slice/...`), or relative to the reader's cgroup namespace (an agent in a pod reads
`0::/../../kubepods-...-pod<uid>.slice/...`). So, like upstream's node agent, the UID is found
anywhere in the path: `pod` after a separator, the 32 hex digits in 8-4-4-4-12 groups joined by
`-`, `_` or nothing, then a separator or the end. It is reported in the API's spelling
(lowercase, dashes).

A process is a *pod's* only through its cgroup, which the runtime sets and the pod cannot
change; its addresses, start time and pid prove nothing of the kind. Processes outside the
kubepods hierarchy (the host's, or a test's) name no pod.
"""

from __future__ import annotations

import os
import re
import stat

CGROUP_READ_LIMIT = 64 * 1024
"""More than `/proc/PID/cgroup` ever is (one line per hierarchy, each path at most 4 KiB on
any real node); a longer file is not read as a pod's."""
POD_UID_RE = re.compile(
    r"(?<![0-9A-Za-z])pod([0-9a-f]{8})[-_]?([0-9a-f]{4})[-_]?([0-9a-f]{4})[-_]?([0-9a-f]{4})"
    r"[-_]?([0-9a-f]{12})(?![0-9A-Za-z])", re.IGNORECASE)


def pod_uids(cgroup: str) -> frozenset[str]:
    """The pod UIDs named by the paths of a `/proc/PID/cgroup` text (`ID:CONTROLLERS:PATH`
    lines; cgroup v1 has one per hierarchy, v2 one `0::PATH`). Normally one UID or none; a
    process whose paths name two pods is reported with both, and so belongs to neither."""
    uids = set()
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for groups in POD_UID_RE.findall(parts[2]):
            uids.add("-".join(groups).lower())
    return frozenset(uids)


def read_pod_uids(proc_dir: int) -> frozenset[str] | None:
    """`pod_uids` of the `cgroup` file in a process's `/proc/PID` directory (`proc_dir`, an
    open descriptor, so the file read is that process's even if its pid was reused since);
    None when it cannot be read (the process exited), is not a regular file or is longer
    than `CGROUP_READ_LIMIT`. Never blocks: a FIFO in its place is opened non-blocking and
    refused."""
    try:
        fd = os.open("cgroup", os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=proc_dir)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, size = [], 0
        while size <= CGROUP_READ_LIMIT:
            chunk = os.read(fd, CGROUP_READ_LIMIT + 1 - size)
            if not chunk:
                return pod_uids(b"".join(chunks).decode("utf-8", "replace"))
            chunks.append(chunk)
            size += len(chunk)
        return None
    except OSError:
        return None
    finally:
        os.close(fd)
