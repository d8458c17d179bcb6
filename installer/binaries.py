"""Put the plugin onto the host, atomically, in whatever layout the image ships; remove it all.

CNI_BIN_SOURCE_DIR holds two kinds of entries, told apart by their shape:

- **a regular file** (a onefile build, or any helper binary): copied into every target dir
  through a temp file + rename in that dir, so the runtime never executes a half-written
  binary.
- **a onedir bundle**: a directory `NAME/` holding an executable `NAME/NAME` next to its
  `_internal/` tree (PyInstaller's onedir layout, ~2.5-3x faster to start than onefile). The
  whole tree is copied into a hidden, content-addressed directory `<bin>/.NAME-<hash>/`
  (written under a temp name, every file and directory fsynced, then renamed into place, so a
  version directory under its final name is complete by construction), and `<bin>/NAME` becomes
  a *relative* symlink `.NAME-<hash>/NAME`, swapped atomically (temp symlink + rename over the
  old name). The bootloader resolves /proc/self/exe, so it finds `_internal/` through the link.

Invariant, for a pod starting at any instant and for a SIGKILL at any step: once `<bin>/NAME`
exists it is the old plugin or the new one, complete, never missing and never dangling. That
follows from the order: new version dir complete → symlink swapped → only then older version
dirs removed (each renamed to a temp name first, so a half-deleted tree never carries a version
name that a later run would trust). Uninstall unlinks `NAME` before removing any version dir.
Temps (files, symlinks, directories) left by a killed run are removed on the next one.

What lands on the host is safe whatever the image holds: the runtime executes these files as
root for every pod, so modes are never copied as they are. A file gets 0755 when the image's
is executable by anyone, else 0644; a directory 0755; never setuid, setgid or sticky, never
writable by group or others (`installed_mode`). A symlink inside a bundle must resolve inside
the bundle: an absolute one, or one whose `..` climbs out of it (directly or through another
link), would point into the host's filesystem, so the bundle is refused with an error naming
the link, and nothing at all is installed (every bundle is checked before the first write).

Nothing is rewritten when it is already in place (same bytes and mode; same content hash): the
watch loop must not wake itself up. A read-only bin dir is the classic platform trap (GKE's
/opt/cni/bin), so that error names the setting to change.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from installer import atomic
from installer.config import InstallerConfig

log = logging.getLogger(__name__)

PLUGIN_NAME = "istio-cni"
READ_ONLY_HINT = (
    "the host's CNI bin dir must be writable: some platforms keep it elsewhere (GKE: "
    "/home/kubernetes/bin; set the chart's global.platform=gke, i.e. mount that host path and "
    "point CNI_BIN_TARGET_DIRS at it)")
EXEC_MODE = 0o755
DATA_MODE = 0o644
DIR_MODE = 0o755
MAX_LINK_HOPS = 40
"""As the kernel's path walk (ELOOP past 40 symlinks)."""
HASH_LEN = 16
"""Hex digits of the bundle's sha256 in its version dir name (64 bits: collisions are moot)."""
COPY_CHUNK = 1 << 20


class BinariesError(Exception):
    """A binary could not be installed or removed; the message has the path and the reason."""


@dataclass(frozen=True)
class SourceEntry:
    """One thing to install: `path` is a regular file, or a onedir bundle when `bundle`."""

    name: str
    path: Path
    bundle: bool


def _is_bundle(path: Path, name: str) -> bool:
    """A onedir bundle: a directory holding an executable regular file of its own name."""
    exe = path / name
    try:
        st = os.stat(exe)
    except OSError:
        return False
    return path.is_dir() and stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def source_entries(cfg: InstallerConfig) -> list[SourceEntry]:
    """What to install: regular files and onedir bundles of the source dir, minus
    SKIP_CNI_BINARIES. Anything else (a directory that is not a bundle) is not ours to copy."""
    src = cfg.cni_bin_source_dir
    try:
        names = sorted(os.listdir(src))
    except OSError as exc:
        raise BinariesError(f"cannot list CNI_BIN_SOURCE_DIR {src}: {exc.strerror or exc}") \
            from exc
    entries = []
    for name in names:
        if name in cfg.skip_cni_binaries or atomic.is_temp(name) or name.startswith("."):
            continue
        path = src / name
        if path.is_file():
            entries.append(SourceEntry(name, path, bundle=False))
        elif _is_bundle(path, name):
            entries.append(SourceEntry(name, path, bundle=True))
    return entries


def source_binaries(cfg: InstallerConfig) -> list[str]:
    """Names to install (files and bundles alike: each becomes `<bin>/NAME`)."""
    return [e.name for e in source_entries(cfg)]


# --- names in the target dir ----------------------------------------------------------------

def version_name(name: str, digest: str) -> str:
    """The hidden version dir of bundle `name`: a leading dot keeps it out of `ls` and makes it
    an unlikely plugin `type`; libcni only ever executes `<bin>/<type>`, never this."""
    return f".{name}-{digest}"


def is_version_name(entry: str, name: str) -> bool:
    """Whether `entry` in a bin dir is one of our version dirs of bundle `name`."""
    return re.fullmatch(rf"\.{re.escape(name)}-[0-9a-f]{{{HASH_LEN}}}", entry) is not None


def link_target(name: str, digest: str) -> str:
    """The symlink's content: **relative** to the bin dir, on purpose.

    The installer sees the host's bin dir at its mount point in the container
    (`/host/opt/cni/bin`), while the runtime executes the plugin on the host (`/opt/cni/bin`).
    An absolute link written from the container would name `/host/opt/cni/bin/...`, which does
    not exist on the host: every CNI call would fail with a dangling link. A relative link is
    resolved against the directory holding it, wherever that directory is mounted, so the same
    bytes are right in both views (and after a bin dir move, e.g. GKE's /home/kubernetes/bin).
    """
    return f"{version_name(name, digest)}/{name}"


def owned_filter(cfg: InstallerConfig) -> Callable[[str], bool]:
    """Which bin dir entries the watch loop reacts to: our binaries/links and our version dirs
    (deleting a version dir would leave the link dangling). Temps are our own noise."""
    names = set(installed_names(cfg))

    def ours(entry: str) -> bool:
        return entry in names or any(is_version_name(entry, n) for n in names)

    return ours


# --- what lands on the host: modes and links ------------------------------------------------

def installed_mode(st_mode: int) -> int:
    """A file's mode on the host: 0755 when the image's copy is executable by anyone, else
    0644. Nothing else of the image's mode survives (no setuid/setgid/sticky, no group or
    world write): these files are executed as root for every pod on the node."""
    return EXEC_MODE if st_mode & 0o111 else DATA_MODE


def _check_link(root: Path, rel: str, kinds: dict[str, int]) -> None:
    """Refuse the bundle if the symlink at `rel` does not resolve inside `root`: resolved as
    the kernel would (component by component, following links met on the way, `..` going up),
    but within the bundle, so an absolute target or a climb above its root is an error. A
    target that does not exist inside is left dangling (harmless); it never escapes."""
    where = root / rel
    parts = rel.split("/")[:-1]  # the link's own directory, relative to the bundle
    pending = [rel.rsplit("/", 1)[-1]]
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise BinariesError(
                    f"{where} -> {os.readlink(where)}: points outside the bundle {root}; "
                    "refusing to install it (a link must stay inside its bundle)")
            parts.pop()
            continue
        inside = "/".join([*parts, part])
        if stat.S_ISLNK(kinds.get(inside, 0)):
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise BinariesError(f"{where}: too many levels of symbolic links in the "
                                    f"bundle {root}; refusing to install it")
            target = os.readlink(root / inside)
            if target.startswith("/"):
                raise BinariesError(
                    f"{root / inside} -> {target}: an absolute symlink in the bundle {root} "
                    "would point into the host's filesystem; refusing to install it")
            pending = target.split("/") + pending
            continue
        parts.append(part)


# --- content hash of a bundle ---------------------------------------------------------------

Tree = list[tuple[str, os.stat_result]]
_hash_cache: dict[Path, tuple[tuple[object, ...], str]] = {}
"""Source bundle → (stat signature, digest). The watch loop reconciles on every event; the
image's bundle never changes, so rereading its ~20 MB each time would be pure waste."""


def _walk(root: Path) -> Tree:
    """Every entry below `root` in a fixed order (names sorted, parents before children);
    raises BinariesError for anything that must not be installed (a FIFO or device, a link
    leaving the bundle)."""
    out: Tree = []

    def visit(directory: Path, prefix: str) -> None:
        for name in sorted(os.listdir(directory)):
            rel = f"{prefix}{name}"
            st = os.lstat(directory / name)
            out.append((rel, st))
            if stat.S_ISDIR(st.st_mode):
                visit(directory / name, rel + "/")
            elif not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise BinariesError(f"{directory / name}: not a file, directory or symlink")

    visit(root, "")
    kinds = {rel: st.st_mode for rel, st in out}
    for rel, st in out:
        if stat.S_ISLNK(st.st_mode):
            _check_link(root, rel, kinds)
    return out


def _digest(root: Path, tree: Tree) -> str:
    """sha256 over each entry's kind, relative path, installed mode and content (or link
    target): what the version dir will hold, so the image's stray mode bits name nothing."""
    h = hashlib.sha256()
    for rel, st in tree:
        mode = installed_mode(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            h.update(f"d\0{rel}\0{DIR_MODE:o}\0".encode())
        elif stat.S_ISLNK(st.st_mode):
            h.update(f"l\0{rel}\0{os.readlink(root / rel)}\0".encode())
        else:
            h.update(f"f\0{rel}\0{mode:o}\0{st.st_size}\0".encode())
            with open(root / rel, "rb") as f:
                for chunk in iter(lambda: f.read(COPY_CHUNK), b""):
                    h.update(chunk)
    return h.hexdigest()[:HASH_LEN]


def bundle_digest(path: Path) -> tuple[str, Tree]:
    """The bundle's content hash (what names its version dir) and its tree."""
    tree = _walk(path)
    root_st = os.stat(path)
    signature = (root_st.st_mode, *((rel, st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode)
                                    for rel, st in tree))
    cached = _hash_cache.get(path)
    if cached is not None and cached[0] == signature:
        return cached[1], tree
    digest = _digest(path, tree)
    _hash_cache[path] = (signature, digest)
    return digest, tree


# --- low-level, crash-safe operations --------------------------------------------------------

def _fail(path: Path, exc: OSError) -> BinariesError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return BinariesError(f"cannot write {path}: {reason}: {READ_ONLY_HINT}")
    return BinariesError(f"cannot write {path}: {reason}")


def _discard(path: Path) -> bool:
    """Remove a file, symlink or whole tree. A directory is first renamed to a temp name: if we
    are killed halfway through deleting it, what remains is a temp (swept next run), never a
    partial tree under a version name that the next run would trust as complete."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return atomic.remove_file(path)
    doomed = path if atomic.is_temp(path.name) else path.with_name(atomic.temp_name(path.name))
    if doomed != path:
        os.rename(path, doomed)
        atomic.fsync_dir(path.parent)
    shutil.rmtree(doomed)
    return True


def remove_stale_temps(target: Path) -> list[str]:
    """Temps a killed run left in `target`: files, symlinks and half-copied bundle trees."""
    removed = []
    try:
        names = os.listdir(target)
    except FileNotFoundError:
        return removed
    for name in names:
        if atomic.is_temp(name):
            with contextlib.suppress(FileNotFoundError):
                _discard(target / name)
                removed.append(name)
    return removed


def _copy_file(src: Path, dst: Path, mode: int) -> None:
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with open(src, "rb") as f:
            for chunk in iter(lambda: f.read(COPY_CHUNK), b""):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
        os.fchmod(fd, mode)  # explicit: the umask must not decide an executable's mode
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_tree(src: Path, dst: Path, tree: Tree) -> None:
    """Copy `tree` (from `_walk(src)`) into the new directory `dst`, durably: every file and
    directory is fsynced before the caller renames `dst` into place."""
    os.mkdir(dst, 0o700)
    dirs = [dst]
    for rel, st in tree:
        target = dst / rel
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(target, 0o700)  # 0755 at the end, once filled
            dirs.append(target)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src / rel), target)
        else:
            _copy_file(src / rel, target, installed_mode(st.st_mode))
    for directory in reversed(dirs):  # children before parents
        os.chmod(directory, DIR_MODE)
        atomic.fsync_dir(directory)


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:  # missing, or not a symlink
        return None


def _complete(version_dir: Path, name: str) -> bool:
    """A version dir we can point at: a real directory with the executable in it. It only ever
    gets its name by a rename of a fully written temp tree, so that is enough."""
    try:
        return (stat.S_ISDIR(os.lstat(version_dir).st_mode)
                and stat.S_ISREG(os.stat(version_dir / name).st_mode))
    except OSError:
        return False


def _swap_link(link: Path, content: str) -> None:
    """Point `link` at `content` atomically: a temp symlink renamed over the old name (rename
    replaces a file or symlink in one step, so `link` is never absent)."""
    try:
        if stat.S_ISDIR(os.lstat(link).st_mode):
            raise BinariesError(f"cannot install {link}: a directory is in the way (not ours; "
                                "remove it)")
    except FileNotFoundError:
        pass
    tmp = link.with_name(atomic.temp_name(link.name))
    os.symlink(content, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    atomic.fsync_dir(link.parent)


def remove_old_versions(target: Path, name: str) -> list[str]:
    """Remove every version dir of `name` that `<target>/name` does not point at (all of them
    when it is a regular file or gone). Never the live one, whatever the source says."""
    live = _readlink(target / name)
    keep = live.split("/", 1)[0] if live else None
    removed = []
    for entry in sorted(os.listdir(target)):
        if is_version_name(entry, name) and entry != keep:
            with contextlib.suppress(FileNotFoundError):
                if _discard(target / entry):
                    removed.append(entry)
    return removed


# --- install / uninstall --------------------------------------------------------------------

def _same_file(src: Path, dst: Path) -> bool:
    """Bytes and mode already match: rewriting would wake the watch loop for nothing."""
    try:
        s, d = os.stat(src), os.lstat(dst)  # a symlink at dst is never "the same file"
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(d.st_mode) or s.st_size != d.st_size \
            or installed_mode(s.st_mode) != (d.st_mode & 0o7777):
        return False
    return src.read_bytes() == dst.read_bytes()


def _install_file(entry: SourceEntry, target: Path) -> list[Path]:
    """A onefile binary: one atomic write (which also replaces a bundle's symlink in one step;
    the version dirs go afterwards, in remove_old_versions)."""
    dst = target / entry.name
    if _same_file(entry.path, dst):
        return []
    try:
        if stat.S_ISDIR(os.lstat(dst).st_mode):
            raise BinariesError(f"cannot install {dst}: a directory is in the way (not ours; "
                                "remove it)")
    except FileNotFoundError:
        pass
    atomic.atomic_write(dst, entry.path.read_bytes(), installed_mode(os.stat(entry.path).st_mode))
    return [dst]


def _install_bundle(entry: SourceEntry, target: Path) -> list[Path]:
    """A onedir bundle: complete version dir first, then the link swap (module docstring)."""
    name = entry.name
    try:
        digest, tree = bundle_digest(entry.path)
    except OSError as exc:
        raise BinariesError(f"cannot read the bundle {entry.path}: {exc.strerror or exc}") \
            from exc
    version_dir = target / version_name(name, digest)
    written = []
    if not _complete(version_dir, name):
        _discard(version_dir)  # something broken under our name (a file, a gutted tree)
        tmp = target / atomic.temp_name(version_dir.name.lstrip("."))
        try:
            _copy_tree(entry.path, tmp, tree)
            os.rename(tmp, version_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic.fsync_dir(target)
        written.append(version_dir)
    link = target / name
    if _readlink(link) != link_target(name, digest):
        _swap_link(link, link_target(name, digest))
        written.append(link)
    return written


def install_binaries(cfg: InstallerConfig) -> list[Path]:
    """Install what differs; returns the paths written (empty when all were in place).
    Every bundle is checked (walked and hashed) before anything is written."""
    entries = source_entries(cfg)
    for entry in entries:
        if entry.bundle:
            try:
                bundle_digest(entry.path)
            except OSError as exc:
                raise BinariesError(f"cannot read the bundle {entry.path}: "
                                    f"{exc.strerror or exc}") from exc
    written: list[Path] = []
    for target in cfg.cni_bin_target_dirs:
        if not target.is_dir():
            raise BinariesError(f"CNI bin dir {target} does not exist (is the host's "
                                "/opt/cni/bin mounted there? see CNI_BIN_TARGET_DIRS)")
        try:
            for stale in remove_stale_temps(target):
                log.info("removed a temp left by an interrupted install: %s", target / stale)
        except OSError as exc:
            raise _fail(target, exc) from exc
        for entry in entries:
            dst = target / entry.name
            # exists() follows the link: a dangling one counts as missing and is repaired
            if not (dst.exists() and not cfg.update_cni_binaries):
                try:
                    done = (_install_bundle if entry.bundle else _install_file)(entry, target)
                except OSError as exc:
                    raise _fail(dst, exc) from exc
                for path in done:
                    log.info("installed %s", path)
                written += done
            try:
                for old in remove_old_versions(target, entry.name):
                    log.info("removed the previous version %s", target / old)
            except OSError as exc:
                raise _fail(target, exc) from exc
    return written


def installed_names(cfg: InstallerConfig) -> list[str]:
    """What uninstall removes: the source's names when readable, and always the plugin."""
    try:
        names = source_binaries(cfg)
    except BinariesError:
        names = []
    return sorted(set(names) | {PLUGIN_NAME})


def remove_binaries(cfg: InstallerConfig) -> None:
    """Remove our binaries/links, then our version dirs and temps, and nothing else. The link
    goes first, so a kill in between leaves unreferenced version dirs (removed next time),
    never a dangling `istio-cni`."""
    names = installed_names(cfg)
    for target in cfg.cni_bin_target_dirs:
        if not target.is_dir():
            continue  # the target dir itself is gone
        for name in names:
            path = target / name
            try:
                if not os.path.isdir(path) or os.path.islink(path):
                    if atomic.remove_file(path):
                        log.info("removed %s", path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _fail(path, exc) from exc
        try:
            remove_stale_temps(target)
            for name in names:
                for old in remove_old_versions(target, name):
                    log.info("removed %s", target / old)
        except OSError as exc:
            raise _fail(target, exc) from exc
