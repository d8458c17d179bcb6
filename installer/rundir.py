"""CNI_AGENT_RUN_DIR: created on install when missing, emptied of what is ours on uninstall.

The run dir holds the plugin's kubeconfig (installer), its log file `istio-cni.log` with its
rotations (the plugin) and `log.sock` (the node daemon's log sink, which removes it itself when it
stops). Uninstall removes the plugin's log files here, and the directory itself only when the
installer created it: a mark file left at creation says so, because a later agent (after a
restart or an upgrade) cannot otherwise tell. In the DaemonSet the kubelet creates the directory
(hostPath `DirectoryOrCreate`) and it is the container's mount point, so it stays, empty.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from pathlib import Path

from cni.plugin_log import LOG_FILE_NAME
from installer import atomic
from installer.config import InstallerConfig

log = logging.getLogger(__name__)

CREATED_MARK = ".istio-cni-created-by-installer"
"""Present in the run dir when the installer created the directory."""
_LOG_FILES = re.compile(rf"{re.escape(LOG_FILE_NAME)}(\.[0-9]+)?")


def ensure(directory: Path) -> None:
    """Create the run dir if it is missing, marking it as ours."""
    if directory.is_dir():
        return
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(directory, 0o755)
    except FileExistsError:
        return  # someone else created it meanwhile: not ours
    atomic.atomic_write(directory / CREATED_MARK, b"", 0o600)


def clean(cfg: InstallerConfig) -> list[str]:
    """Remove the plugin's log files, and the directory when we created it and it is now
    empty; returns what was removed. Anything else in it is not ours and stays."""
    directory = cfg.cni_agent_run_dir
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    removed = [name for name in names
               if _LOG_FILES.fullmatch(name) and atomic.remove_file(directory / name)]
    if CREATED_MARK in names:
        atomic.remove_file(directory / CREATED_MARK)
        try:
            os.rmdir(directory)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EBUSY):
                raise
            log.info("keeping %s: %s", directory, exc.strerror)
        else:
            removed.append(str(directory))
    for name in removed:
        log.info("removed %s", directory / name)
    return removed

