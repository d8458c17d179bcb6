"""CNI_AGENT_RUN_DIR: created on install when missing, emptied of what this install created on
uninstall, and of nothing else.

The run dir holds the plugin's kubeconfig (installer), its log file `istio-cni.log` with its
rotation `.1` (the plugin) and `log.sock`/`cni.sock`/`agent.lock` (the agent, which removes them
itself when it stops). Uninstall must remove exactly what this install created, so an install
records, on disk, what was already there when it began: a later agent (after a restart or an
upgrade, which keep the plugin) finishes the same install, and its uninstall reads the same
record.

- **The record** (`.istio-cni-install-record`, JSON): the identity (device, inode) of every
  plugin log file present when the install began, i.e. when no record existed yet. Uninstall
  removes the log files whose identity is not in it (the ones this install's plugin created;
  a file that was there before keeps its inode when the plugin rotates it to `.1`, so it stays
  too), then the record. With no readable record (an install by an older version), uninstall
  cannot tell and leaves every log file alone.
- **The directory itself** goes only when the installer created it: a mark file left at
  creation says so. In the DaemonSet the kubelet creates it (hostPath `DirectoryOrCreate`) and
  it is the container's mount point, so it stays, empty of ours.

Upstream's uninstall removes the config entry, the kubeconfig and the `istio-cni` binary, and
nothing in the run dir besides the kubeconfig.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import stat
from pathlib import Path

from cni.plugin_log import LOG_FILE_NAME
from installer import atomic
from installer.config import InstallerConfig

log = logging.getLogger(__name__)

CREATED_MARK = ".istio-cni-created-by-installer"
"""Present in the run dir when the installer created the directory."""
RECORD = ".istio-cni-install-record"
"""What was in the run dir before this install began (see the module docstring)."""
_LOG_FILES = re.compile(rf"{re.escape(LOG_FILE_NAME)}(\.[0-9]+)?")

Identity = tuple[int, int]


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


def _log_files(directory: Path) -> dict[str, tuple[Identity, bool]]:
    """The plugin's log file names in `directory`: name -> (identity, a regular file)."""
    out = {}
    for name in sorted(os.listdir(directory)):
        if _LOG_FILES.fullmatch(name):
            try:
                st = os.lstat(directory / name)
            except FileNotFoundError:
                continue
            out[name] = ((st.st_dev, st.st_ino), stat.S_ISREG(st.st_mode))
    return out


def begin(cfg: InstallerConfig) -> None:
    """Record what is already in the run dir, unless this install has recorded it already
    (a restarted or upgraded agent continues the same install). Called before anything that
    makes the plugin run, so nothing of this install's is there yet."""
    directory = cfg.cni_agent_run_dir
    ensure(directory)
    if os.path.lexists(directory / RECORD):
        return
    kept = sorted(identity for identity, _ in _log_files(directory).values())
    atomic.atomic_write(directory / RECORD, json.dumps({"kept": kept}).encode(), 0o600)
    if kept:
        log.info("%d plugin log file(s) already in %s: not this install's, kept on uninstall",
                 len(kept), directory)


def _recorded(directory: Path) -> set[Identity] | None:
    """The identities the record keeps; None when there is no usable record."""
    try:
        data = atomic.read_bytes(directory / RECORD)
    except OSError as exc:
        log.warning("cannot read %s: %s", directory / RECORD, exc.strerror or exc)
        return None
    if data is None:
        return None
    try:
        kept = json.loads(data)["kept"]
        return {(int(dev), int(ino)) for dev, ino in kept}
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("%s is not a record this installer wrote (%s)", directory / RECORD, exc)
        return None


def clean(cfg: InstallerConfig) -> list[str]:
    """Remove the plugin log files this install created, the record, and the directory when
    we created it and it is now empty; returns what was removed. Anything else stays."""
    directory = cfg.cni_agent_run_dir
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    kept = _recorded(directory)
    removed = []
    if kept is None:
        if _log_files(directory):
            log.info("no record of what this install created in %s: leaving the plugin's "
                     "log files", directory)
    else:
        # only regular files: the plugin never makes anything else there (a link or a FIFO
        # under that name is someone else's)
        for name, (identity, regular) in _log_files(directory).items():
            if regular and identity not in kept and atomic.remove_file(directory / name):
                removed.append(name)
    if RECORD in names:
        atomic.remove_file(directory / RECORD)
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
