"""Edit the primary CNI config on disk, remembering the original so uninstall restores it.

The state: before we first change a vendor's config file `F`, its exact bytes and mode are saved
as `F.istio-cni-backup` *in net.d itself*. Why there: net.d survives a node reboot (the run dir
is usually tmpfs), it is the same filesystem (so the backup is written with the same atomic
rename), and libcni ignores the name (no .conf/.conflist/.json suffix). A backup is valid for a
target file while the target is byte-for-byte what `insert_plugin(backup, entry)` gives; if the
vendor has rewritten the file since, the backup is stale and is replaced by the vendor's new
content (minus any istio-cni entry) the next time we insert.

Write order, chosen so a SIGKILL at any instant leaves a complete, loadable primary config:
install = backup (atomic) -> our edit (atomic) -> unlink the `.conf` we converted -> drop
superseded backups; uninstall = original (atomic, from the backup) -> unlink our `.conflist` ->
drop the backup. At every point the original or our edit exists in full, and rerunning either
operation converges.

A primary config that is a symlink stays one: edits and the restore are written to the file it
resolves to (`_write_config`), never over the link. A symlinked single-plugin `.conf`, which
would have to become a `.conflist` under another name, is refused.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from installer import atomic, conflist, gojson

log = logging.getLogger(__name__)

BACKUP_SUFFIX = ".istio-cni-backup"


class PrimaryConfigError(Exception):
    """The primary config cannot be edited; the message names the file and the reason."""


@dataclass(frozen=True)
class Backup:
    directory: Path
    original_name: str
    data: bytes
    mode: int

    @property
    def path(self) -> Path:
        return self.directory / (self.original_name + BACKUP_SUFFIX)

    @property
    def text(self) -> str:
        return gojson.text_of(self.data)

    @property
    def target(self) -> str:
        """The file our edit of the original lives in."""
        try:
            return conflist.converted_name(self.original_name, self.text)
        except ValueError:
            return self.original_name


def load_backups(directory: Path) -> list[Backup]:
    out = []
    for path in sorted(directory.glob("*" + BACKUP_SUFFIX)):
        try:
            data = atomic.read_bytes(path)
        except OSError as exc:
            raise PrimaryConfigError(f"cannot read the backup {path}: {exc.strerror or exc}") \
                from exc
        if data is not None and not atomic.is_temp(path.name):
            out.append(Backup(directory, path.name[: -len(BACKUP_SUFFIX)], data,
                              atomic.file_mode(path, 0o600)))
    return out


def _read_text(path: Path) -> str | None:
    """The file's text with every byte kept (invalid UTF-8 included, as libcni accepts it);
    None when it does not exist."""
    try:
        data = atomic.read_bytes(path)
    except OSError as exc:
        raise PrimaryConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return None if data is None else gojson.text_of(data)


def derived_from(backup: Backup, text: str) -> bool:
    """`text` is exactly what we wrote from `backup` (one istio entry, nothing else changed)."""
    try:
        entries = conflist.istio_entries(text)
        return len(entries) == 1 and conflist.insert_plugin(backup.text, entries[0]) == text
    except ValueError:
        return False


def _write(path: Path, text: str, mode: int) -> None:
    try:
        atomic.atomic_write(path, gojson.bytes_of(text), mode)
    except OSError as exc:
        raise PrimaryConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc


def real_path(path: Path) -> Path:
    """Where a config's bytes live: `path`, or for a symlink the file it resolves to (in this
    process's view: a link into the mounted net.d resolves; see docs/installer.md)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _write_config(path: Path, text: str, mode: int) -> None:
    """Replace a vendor's config file's content, writing *through* a symlink: the link stays a
    link with its target (what uninstall must give back), the runtime reads our edit through it,
    and whatever the vendor later writes to the target still reaches the runtime (and wakes the
    watch loop, which watches the target too)."""
    real = real_path(path)
    if real != path:
        atomic.remove_stale_temps(real.parent)
        log.info("%s is a symlink: writing its target %s", path, real)
    _write(real, text, mode)


def _unlink(path: Path) -> bool:
    try:
        return atomic.remove_file(path)
    except OSError as exc:
        raise PrimaryConfigError(f"cannot remove {path}: {exc.strerror or exc}") from exc


def install_chained(directory: Path, name: str, entry: dict[str, Any]) -> tuple[bool, str]:
    """Put `entry` last in the primary config `name`; returns (changed, file written)."""
    path = directory / name
    text = _read_text(path)
    if text is None:
        raise PrimaryConfigError(f"primary CNI config {path} disappeared")
    mode = atomic.file_mode(path, 0o600)
    try:
        target = conflist.converted_name(name, text)
        current = conflist.istio_entries(text)
        insert_plugin = conflist.insert_plugin
        candidates = [b for b in load_backups(directory)
                      if b.original_name == name or b.target == target]
        base = next((b for b in candidates if current and derived_from(b, text)), None)
        if base is not None:
            desired, original = insert_plugin(base.text, entry), None
        else:
            desired = insert_plugin(text, entry)
            original = gojson.bytes_of(conflist.remove_plugin(text) if current else text)
    except conflist.ConfigFormatError as exc:
        raise PrimaryConfigError(f"primary CNI config {path} left untouched: {exc}") from exc
    target_path = directory / target
    if target != name and path.is_symlink():
        raise PrimaryConfigError(
            f"{path} is a symlink to a single-plugin config ({real_path(path)}): istio-cni "
            f"would have to replace the link by a plugin list {target_path}, which the link's "
            "owner would not see: refusing (make the vendor's config a .conflist)")
    if target != name:
        twin = _read_text(target_path)
        if twin is not None and not _has_istio(twin):
            raise PrimaryConfigError(
                f"{path} must become {target_path} to hold a plugin list, but that file "
                "exists and is not ours: refusing to overwrite it")
    changed = False
    if original is not None:
        backup = Backup(directory, name, original, mode)
        if _read_text(backup.path) != gojson.text_of(original):
            _write(backup.path, gojson.text_of(original), mode)
    if _read_text(target_path) != desired:
        _write_config(target_path, desired, mode)
        changed = True
        log.info("inserted istio-cni into %s%s", target_path,
                 f" (converted from {name})" if target != name else "")
    if target != name:
        changed = _unlink(path) or changed
    if original is not None:
        for old in candidates:
            if old.original_name != name:
                _unlink(old.path)
    return changed, target


def _has_istio(text: str) -> bool:
    try:
        return bool(conflist.istio_entries(text))
    except ValueError:
        return False


def restore(directory: Path, keep_target: str | None = None) -> list[str]:
    """Undo our edits of every file we hold a backup for, except `keep_target`.

    Returns the files restored or stripped. A target the vendor has since changed keeps the
    vendor's content, minus our entry; a target that is gone stays gone.
    """
    groups: dict[str, list[Backup]] = {}
    for b in load_backups(directory):
        groups.setdefault(b.target, []).append(b)
    touched = []
    for target, backups in groups.items():
        if target == keep_target:
            continue
        if _restore_one(directory, target, backups):
            touched.append(target)
        for b in backups:
            _unlink(b.path)
    return touched


def _restore_one(directory: Path, target: str, backups: list[Backup]) -> bool:
    target_path = directory / target
    try:
        text = _read_text(target_path)
    except PrimaryConfigError as exc:
        log.error("not restoring %s: %s", target_path, exc)
        return False
    if text is None:
        return False
    base = next((b for b in backups if derived_from(b, text)), None)
    if base is not None:
        original_path = directory / base.original_name
        existing = _read_text(original_path) if original_path != target_path else None
        if existing is None or existing == base.text:
            _write_config(original_path, base.text, base.mode)
        else:
            log.warning("%s was rewritten by its owner: keeping it, dropping our %s",
                        original_path, target_path)
        if original_path != target_path:
            _unlink(target_path)
        log.info("restored %s exactly as it was before istio-cni", original_path)
        return True
    return strip(target_path)


def strip(path: Path) -> bool:
    """Remove every istio-cni entry from `path` in place; False when it had none."""
    text = _read_text(path)
    if text is None:
        return False
    try:
        if not conflist.istio_entries(text):
            return False
        stripped = conflist.remove_plugin(text)
    except conflist.ConfigFormatError as exc:
        log.error("not touching %s: %s", path, exc)
        return False
    if stripped == text:
        return False
    _write_config(path, stripped, atomic.file_mode(path, 0o600))
    log.info("removed the istio-cni entry from %s (its owner changed it since we inserted it)",
             path)
    return True


def install_standalone(path: Path, entry: dict[str, Any], mode: int) -> bool:
    """Write our own config file; never over a file that is not ours."""
    desired = conflist.render_standalone(entry)
    text = _read_text(path)
    if text == desired:
        return False
    if text is not None and not _is_standalone_ours(text):
        raise PrimaryConfigError(f"{path} exists and is not an istio-cni config: refusing to "
                                 "overwrite it (choose another CNI_CONF_NAME)")
    _write(path, desired, atomic.file_mode(path, mode))
    log.info("wrote standalone istio-cni config %s", path)
    return True


def _is_standalone_ours(text: str) -> bool:
    try:
        return conflist.parse_object(text).get("type") == conflist.ISTIO_TYPE
    except ValueError:
        return False


def remove_standalone(path: Path) -> bool:
    text = _read_text(path)
    if text is None or not _is_standalone_ours(text):
        return False
    _unlink(path)
    log.info("removed standalone istio-cni config %s", path)
    return True
