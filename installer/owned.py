"""Our own conflist (ISTIO_OWNED_CNI_CONFIG): the primary's network with our entry appended, in a
file of ours that sorts before the primary's, so the vendor's file is never edited.

Why: a primary CNI that rewrites its config (Cilium, Calico, the AWS VPC CNI on restart) wipes
an entry inserted into *its* file, and every pod created before the watch loop puts it back
starts without redirection. A file of ours is not rewritten by the vendor; the runtime loads it
because libcni takes the first valid file in byte order, and ours sorts first.

The file's text is `conflist.insert_plugin(primary text, entry)`: the vendor's bytes copied
(a single-plugin `.conf` wrapped as a list with its own `name` and `cniVersion`), any istio-cni
entry dropped, ours appended. Each write is atomic (`atomic.atomic_write`), so a runtime reading
it sees the old network or the new one, never a torn file. A file under our name that holds no
istio-cni entry is someone else's: never overwritten, never removed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from installer import atomic, conflist, gojson
from installer.primary import PrimaryConfigError

log = logging.getLogger(__name__)


def read(path: Path) -> str | None:
    """The file's text (every byte kept), None when it does not exist."""
    try:
        data = atomic.read_bytes(path)
    except OSError as exc:
        raise PrimaryConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return None if data is None else gojson.text_of(data)


def is_ours(text: str) -> bool:
    """A conflist holding an istio-cni entry: what we write under our name."""
    try:
        doc = conflist.parse_object(text)
        return conflist.is_list(doc) and bool(conflist.istio_entries(text))
    except ValueError:
        return False


def desired(primary_path: Path, entry: dict[str, Any]) -> str:
    """Our file's text for the primary config at `primary_path` (read through a symlink)."""
    text = read(primary_path)
    if text is None:
        raise PrimaryConfigError(f"primary CNI config {primary_path} disappeared")
    try:
        return conflist.insert_plugin(text, entry)
    except conflist.ConfigFormatError as exc:
        raise PrimaryConfigError(f"primary CNI config {primary_path} cannot be copied into "
                                 f"ours: {exc}") from exc


def write(path: Path, text: str, current: str | None, mode: int) -> None:
    """Replace our file with `text` atomically; refuses a file under our name that is not ours."""
    if current is not None and not is_ours(current):
        raise PrimaryConfigError(
            f"{path} exists and is not an istio-cni conflist: refusing to overwrite it (choose "
            "another ISTIO_OWNED_CNI_CONF_FILENAME)")
    try:
        atomic.atomic_write(path, gojson.bytes_of(text), atomic.file_mode(path, mode))
    except OSError as exc:
        raise PrimaryConfigError(f"cannot write {path}: {exc.strerror or exc}") from exc


def remove(path: Path) -> bool:
    """Delete our file (only if it is ours); False when there was none."""
    text = read(path)
    if text is None:
        return False
    if not is_ours(text):
        log.warning("%s is not an istio-cni conflist: leaving it alone", path)
        return False
    try:
        atomic.remove_file(path)
    except OSError as exc:
        raise PrimaryConfigError(f"cannot remove {path}: {exc.strerror or exc}") from exc
    log.info("removed our CNI config %s", path)
    return True
