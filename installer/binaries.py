"""Copy the plugin binaries onto the host, atomically; remove them on uninstall.

Every regular file of CNI_BIN_SOURCE_DIR (the frozen plugin in the image) goes into every
target dir through a temp file + rename in that dir, so the kubelet never executes a half-written
binary, and temps left by a killed run are removed first. A file whose bytes and mode already
match is not rewritten: the watch loop must not wake itself up. A read-only bin dir is the
classic platform trap (GKE's /opt/cni/bin), so that error names the setting to change.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from installer import atomic
from installer.config import InstallerConfig

log = logging.getLogger(__name__)

PLUGIN_NAME = "istio-cni"
READ_ONLY_HINT = (
    "the host's CNI bin dir must be writable: some platforms keep it elsewhere (GKE: "
    "/home/kubernetes/bin; set the chart's global.platform=gke, i.e. mount that host path and "
    "point CNI_BIN_TARGET_DIRS at it)")


class BinariesError(Exception):
    """A binary could not be installed or removed; the message has the path and the reason."""


def source_binaries(cfg: InstallerConfig) -> list[str]:
    """Names to install: regular files of the source dir, minus SKIP_CNI_BINARIES."""
    src = cfg.cni_bin_source_dir
    try:
        names = sorted(os.listdir(src))
    except OSError as exc:
        raise BinariesError(f"cannot list CNI_BIN_SOURCE_DIR {src}: {exc.strerror or exc}") \
            from exc
    return [n for n in names
            if (src / n).is_file() and n not in cfg.skip_cni_binaries and not atomic.is_temp(n)]


def _same(src: Path, dst: Path) -> bool:
    try:
        s, d = os.stat(src), os.stat(dst)
    except FileNotFoundError:
        return False
    if s.st_size != d.st_size or (s.st_mode & 0o7777) != (d.st_mode & 0o7777):
        return False
    return src.read_bytes() == dst.read_bytes()


def _fail(path: Path, exc: OSError) -> BinariesError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return BinariesError(f"cannot write {path}: {reason}: {READ_ONLY_HINT}")
    return BinariesError(f"cannot write {path}: {reason}")


def install_binaries(cfg: InstallerConfig) -> list[Path]:
    """Copy what differs; returns the paths written (empty when all were in place)."""
    names = source_binaries(cfg)
    written: list[Path] = []
    for target in cfg.cni_bin_target_dirs:
        if not target.is_dir():
            raise BinariesError(f"CNI bin dir {target} does not exist (is the host's "
                                "/opt/cni/bin mounted there? see CNI_BIN_TARGET_DIRS)")
        try:
            for stale in atomic.remove_stale_temps(target):
                log.info("removed a temp file left by an interrupted copy: %s", target / stale)
        except OSError as exc:
            raise _fail(target, exc) from exc
        for name in names:
            src, dst = cfg.cni_bin_source_dir / name, target / name
            if dst.exists() and not cfg.update_cni_binaries:
                continue
            if _same(src, dst):
                continue
            try:
                atomic.atomic_write(dst, src.read_bytes(), os.stat(src).st_mode & 0o7777)
            except OSError as exc:
                raise _fail(dst, exc) from exc
            log.info("installed %s", dst)
            written.append(dst)
    return written


def installed_names(cfg: InstallerConfig) -> list[str]:
    """What uninstall removes: the source's names when readable, and always the plugin."""
    try:
        names = source_binaries(cfg)
    except BinariesError:
        names = []
    return sorted(set(names) | {PLUGIN_NAME})


def remove_binaries(cfg: InstallerConfig) -> None:
    for target in cfg.cni_bin_target_dirs:
        for name in installed_names(cfg):
            path = target / name
            try:
                if atomic.remove_file(path):
                    log.info("removed %s", path)
            except FileNotFoundError:
                continue  # the target dir itself is gone
            except OSError as exc:
                raise _fail(path, exc) from exc
