"""Finding the primary CNI config the way the kubelet and containerd do.

The runtime loads the lexicographically first *valid* file with a `.conf`, `.conflist` or
`.json` suffix in net.d (libcni `ConfFiles` + sort; `.conflist` through `ConfListFromFile`,
anything else through `ConfFromFile` + `ConfListFromConf`), so that is the file our entry must be
in. Upstream looks at `.conf`/`.conflist` only; we include `.json`, which runtimes do load.
Validity follows libcni's loader (`libcni/conf.go`), explained per check below. Reads only; the
blocking wait for a config to appear is `wait_for_primary`, driven by inotify.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from installer import conflist
from installer.fswatch import NET_DIR_EVENTS, FsWatch

log = logging.getLogger(__name__)

CONF_EXTENSIONS = (".conf", ".conflist", ".json")


def _check_plugin(plugin: Any, where: str) -> str | None:
    """libcni NetworkPluginConfFromBytes: an object decoding into types.PluginConf with a
    non-empty string `type` (and string `name`/`cniVersion`, object `ipam`/`dns` if present)."""
    if not isinstance(plugin, dict):
        return f"{where} is not an object"
    ptype = plugin.get("type")
    if not isinstance(ptype, str) or not ptype:
        return f"{where} has no plugin 'type'"
    for key in ("name", "cniVersion"):
        if key in plugin and plugin[key] is not None and not isinstance(plugin[key], str):
            return f"{where}: '{key}' is not a string"
    for key in ("ipam", "dns"):
        if key in plugin and plugin[key] is not None and not isinstance(plugin[key], dict):
            return f"{where}: '{key}' is not an object"
    return None


def _check_bool(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key, False)
    if isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false")):
        return None
    return f"'{key}' is not a boolean"


def _inlined_plugins(directory: Path, name: str) -> tuple[int, str | None]:
    """libcni NetworkPluginConfsFromFiles: `<dir>/<network name>/*.conf`, each a plugin."""
    sub = directory / name
    if not name or not sub.is_dir():
        return 0, None
    count = 0
    for entry in sorted(sub.iterdir()):
        if entry.suffix != ".conf" or entry.is_dir():
            continue
        try:
            reason = _check_plugin(conflist.parse(entry.read_text()), str(entry))
        except (OSError, UnicodeDecodeError, conflist.ConfigFormatError) as exc:
            reason = f"{entry}: {exc}"
        if reason:
            return count, reason
        count += 1
    return count, None


def check_list(doc: Any, directory: Path) -> str | None:
    """libcni NetworkConfFromBytes + NetworkConfFromFile for a `.conflist`."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    if not isinstance(doc.get("name"), str):
        return "no network 'name'"
    if "cniVersion" in doc and not isinstance(doc["cniVersion"], str):
        return "'cniVersion' is not a string"
    versions = doc.get("cniVersions")
    if versions is not None and not (isinstance(versions, list)
                                     and all(isinstance(v, str) for v in versions)):
        return "'cniVersions' is not a list of strings"
    for key in ("disableCheck", "disableGC", "loadOnlyInlinedPlugins"):
        if reason := _check_bool(doc, key):
            return reason
    inline_only = str(doc.get("loadOnlyInlinedPlugins", False)).lower() == "true"
    count = 0
    if "plugins" in doc:
        plugins = doc["plugins"]
        if not isinstance(plugins, list):
            return "'plugins' is not a list"
        if not plugins:
            return "no plugins in list"
        for i, plugin in enumerate(plugins):
            if reason := _check_plugin(plugin, f"plugins[{i}]"):
                return reason
        count = len(plugins)
    elif inline_only:
        return "loadOnlyInlinedPlugins is true and there is no 'plugins' key"
    if not inline_only:
        inlined, reason = _inlined_plugins(directory, doc["name"])
        if reason:
            return reason
        count += inlined
    return None if count else "no plugin configs found"


def check_config(path: Path) -> str | None:
    """None when the runtime would load `path`, else why it would not."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "file does not exist"
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read: {exc}"
    try:
        doc = conflist.parse(text)
    except conflist.ConfigFormatError as exc:
        return str(exc)
    if path.name.endswith(".conflist"):
        return check_list(doc, path.parent)
    # .conf/.json: ConfFromFile needs a plugin `type`; a list saved as .conf is invalid
    return _check_plugin(doc, "the config")


def config_files(directory: Path) -> list[str]:
    """Names libcni ConfFiles would list (suffix match, not a directory), sorted."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    return sorted(e.name for e in entries
                  if os.path.splitext(e.name)[1] in CONF_EXTENSIONS and not e.is_dir())


def _is_ours(path: Path) -> bool:
    """Our own standalone file is never a primary network to chain into."""
    try:
        doc = conflist.parse_object(path.read_text())
    except (OSError, ValueError):
        return False
    return doc.get("type") == conflist.ISTIO_TYPE and "plugins" not in doc


def first_valid(directory: Path) -> str | None:
    """The file the runtime uses: the first valid one; invalid ones are logged and skipped."""
    for name in config_files(directory):
        path = directory / name
        reason = check_config(path)
        if reason is None and not _is_ours(path):
            return name
        if reason is not None:
            log.warning("skipping CNI config %s: %s", path, reason)
    return None


def named(directory: Path, name: str) -> str | None:
    """CNI_CONF_NAME, accepting its `.conf` <-> `.conflist` twin (upstream's fallback)."""
    if (directory / name).is_file():
        return name
    if name.endswith(".conf"):
        twin = name + "list"
    elif name.endswith(".conflist"):
        twin = name[: -len("list")]
    else:
        return None
    return twin if (directory / twin).is_file() else None


def find_primary(directory: Path, name: str = "") -> str | None:
    """The primary config's file name now, or None if there is none yet (no waiting)."""
    return named(directory, name) if name else first_valid(directory)


def wait_for_primary(directory: Path, name: str, stop: threading.Event,
                     timeout: float | None = None) -> str | None:
    """Block until `find_primary` finds a config; None if `stop` is set or `timeout` passes.

    The inotify watch is set up before the first look, so a file created in between wakes us.
    """
    if not directory.is_dir():
        raise FileNotFoundError(f"CNI config dir {directory} does not exist (is the host's "
                                "net.d mounted at MOUNTED_CNI_NET_DIR?)")
    deadline = None if timeout is None else time.monotonic() + timeout
    with FsWatch() as fs:
        fs.add(directory, NET_DIR_EVENTS)
        logged = False
        while not stop.is_set():
            found = find_primary(directory, name)
            if found:
                return found
            if not logged:
                log.info("waiting for a CNI config %sin %s",
                         f"named {name!r} " if name else "", directory)
                logged = True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            fs.wait(stop, remaining)
    return None
