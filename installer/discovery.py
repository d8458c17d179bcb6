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
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from installer import atomic, conflist, gojson
from installer.fswatch import NET_DIR_EVENTS, FsWatch

log = logging.getLogger(__name__)

CONF_EXTENSIONS = (".conf", ".conflist", ".json")


_STRING, _BOOL, _OBJECT = "string", "bool", "object"
_IPAM = {"type": _STRING}
_DNS = {"nameservers": [_STRING], "domain": _STRING, "search": [_STRING], "options": [_STRING]}
_ATTACHMENT = {"containerID": _STRING, "ifname": _STRING}
PLUGIN_CONF: dict[str, Any] = {
    "cniVersion": _STRING, "name": _STRING, "type": _STRING, "capabilities": {"": _BOOL},
    "ipam": _IPAM, "dns": _DNS, "prevResult": _OBJECT, "cni.dev/valid-attachments": [_ATTACHMENT],
}
"""libcni's types.PluginConf as Go decodes into it: field -> kind (a string kind, a nested
struct as a dict, `{"": kind}` for a map of that kind, `[kind]` for a slice)."""


def _fold(key: str) -> str:
    """Go's case-insensitive field match (simple folding: also K->k, \u017f->s)."""
    return "".join(c.upper().lower() if len(c.upper().lower()) == 1 else c for c in key)


def _go_field(schema: dict[str, Any], key: str) -> str | None:
    """The struct field a JSON key sets: the exact name, else a case-insensitive match."""
    if key in schema:
        return key
    folded = _fold(key)
    return next((f for f in schema if _fold(f) == folded), None)


def _type_error(value: Any, kind: Any, where: str) -> str | None:
    """Why Go cannot decode `value` into a field of `kind` (UnmarshalTypeError), or None.
    JSON null decodes into anything (it leaves the zero value)."""
    if value is None:
        return None
    if kind == _STRING:
        return None if isinstance(value, str) else f"{where} is not a string"
    if kind == _BOOL:
        return None if isinstance(value, bool) else f"{where} is not a boolean"
    if kind == _OBJECT or isinstance(kind, dict):
        if not isinstance(value, dict):
            return f"{where} is not an object"
        if kind == _OBJECT:
            return None
        if "" in kind:  # a map
            return next((r for k, v in value.items()
                         if (r := _type_error(v, kind[""], f"{where}.{k}"))), None)
        return _struct_error(value, kind, where)
    if not isinstance(value, list):
        return f"{where} is not a list"
    return next((r for i, v in enumerate(value)
                 if (r := _type_error(v, kind[0], f"{where}[{i}]"))), None)


def _struct_error(obj: dict[str, Any], schema: dict[str, Any], where: str) -> str | None:
    pairs = obj.pairs if isinstance(obj, gojson.Object) else list(obj.items())
    for key, value in pairs:
        field = _go_field(schema, key)
        if field is not None and (reason := _type_error(value, schema[field], f"{where}.{key}")):
            return reason
    return None


def plugin_type(pairs: list[tuple[str, Any]]) -> str:
    """The `type` Go's struct decoding ends with: the last key matching it wins."""
    ptype = ""
    for key, value in pairs:
        if _go_field(PLUGIN_CONF, key) == "type" and isinstance(value, str):
            ptype = value
    return ptype


MARSHALLED, FILE, BOTH = "marshalled", "file", "both"


def _check_plugin(plugin: Any, where: str, decoded_from: str = MARSHALLED) -> str | None:
    """libcni NetworkPluginConfFromBytes: the bytes decode into types.PluginConf (every known
    field, matched case-insensitively, of the right type) and `type` is not empty.

    What it decodes: a list's plugins re-marshalled from a map (keys unique and sorted); an
    inlined `<name>/*.conf` its own bytes (every pair, in file order); a `.conf` file both its
    own bytes and then, in ConfListFromConf, the re-marshalled map."""
    if not isinstance(plugin, dict):
        return f"{where} is not an object"
    pairs_in_file = plugin.pairs if isinstance(plugin, gojson.Object) else list(plugin.items())
    orders = {MARSHALLED: [sorted(plugin.items())], FILE: [pairs_in_file],
              BOTH: [pairs_in_file, sorted(plugin.items())]}[decoded_from]
    for pairs in orders:
        for key, value in pairs:
            field = _go_field(PLUGIN_CONF, key)
            if field is not None and (reason := _type_error(value, PLUGIN_CONF[field],
                                                            f"{where}: '{key}'")):
                return reason
        if not plugin_type(pairs):
            return f"{where} has no plugin 'type'"
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
    for entry_name in config_files(sub, (".conf",)):
        entry = sub / entry_name
        try:
            reason = _check_plugin(conflist.parse(_read(entry)), str(entry), FILE)
        except (OSError, conflist.ConfigFormatError) as exc:
            reason = f"{entry}: {exc}"
        if reason:
            return count, reason
        count += 1
    return count, None


_ATOI = re.compile(r"[+-]?[0-9]+")


def _parses_as_version(version: str) -> bool:
    """libcni version.ParseVersion: "" or up to three dot-separated strconv.Atoi integers."""
    if version == "":
        return True
    parts = version.split(".")
    return len(parts) <= 3 and all(_ATOI.fullmatch(p) and -2**63 <= int(p) < 2**63
                                   for p in parts)


def check_list(doc: Any, directory: Path) -> str | None:
    """libcni NetworkConfFromBytes + NetworkConfFromFile for a `.conflist`."""
    if not isinstance(doc, dict):
        return "not a JSON object"
    if not isinstance(doc.get("name"), str):
        return "no network 'name'"
    if "cniVersion" in doc and not isinstance(doc["cniVersion"], str):
        return "'cniVersion' is not a string"
    if "cniVersions" in doc:
        versions = doc["cniVersions"]
        if not (isinstance(versions, list) and all(isinstance(v, str) for v in versions)):
            return "'cniVersions' is not a list of strings"
        # libcni compares each (and then cniVersion) with its own: each must parse
        for version in [*versions, doc.get("cniVersion") or ""]:
            if not _parses_as_version(version):
                return f"CNI version {version!r} is not a version"
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


def _read(path: Path) -> str:
    """A config's text: bounded, never blocking on a FIFO or device (atomic.read_bytes), every
    byte kept (gojson.text_of). Raises OSError; FileNotFoundError when it is gone."""
    data = atomic.read_bytes(path)
    if data is None:
        raise FileNotFoundError(f"{path} does not exist")
    return gojson.text_of(data)


def check_config(path: Path) -> str | None:
    """None when the runtime would load `path`, else why it would not."""
    try:
        text = _read(path)
    except FileNotFoundError:
        return "file does not exist"
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    return check_text(path, text)


def check_text(path: Path, text: str) -> str | None:
    """None when the runtime would load `text` read from `path`, else why not (libcni
    validates the very bytes it then uses: a caller that read them once checks them here)."""
    try:
        doc = conflist.parse(text)
    except conflist.ConfigFormatError as exc:
        return str(exc)
    if path.name.endswith(".conflist"):
        return check_list(doc, path.parent)
    # .conf/.json: ConfFromFile needs a plugin `type`; a list saved as .conf is invalid
    return _check_plugin(doc, "the config", BOTH)


def go_ext(name: str) -> str:
    """Go's filepath.Ext: from the last dot on (".conf" is the extension of ".conf" too,
    where Python's splitext sees none)."""
    dot = name.rfind(".")
    return name[dot:] if dot >= 0 else ""


def config_files(directory: Path, extensions: tuple[str, ...] = CONF_EXTENSIONS) -> list[str]:
    """Names libcni ConfFiles lists, in sort.Strings order: an extension match and not a
    directory by the directory entry's own type (a symlink to a directory is listed, and then
    fails to load). Sorted by bytes, as Go compares strings."""
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = [e.name for e in entries
             if go_ext(e.name) in extensions and not e.is_dir(follow_symlinks=False)]
    return sorted(names, key=os.fsencode)


def _is_ours(path: Path) -> bool:
    """Our own standalone file is never a primary network to chain into."""
    try:
        doc = conflist.parse_object(_read(path))
    except (OSError, ValueError):
        return False
    return doc.get("type") == conflist.ISTIO_TYPE and "plugins" not in doc


def loaded_config(directory: Path) -> str | None:
    """The file the runtime loads now: the first valid one, ours included."""
    return next((name for name in config_files(directory)
                 if check_config(directory / name) is None), None)


def names_istio(path: Path) -> bool:
    """Whether the config at `path` runs istio-cni (an entry in its list, or ours alone)."""
    try:
        return bool(conflist.istio_entries(_read(path)))
    except (OSError, ValueError):
        return False


def first_valid(directory: Path, exclude: str = "") -> str | None:
    """The file the runtime uses: the first valid one; invalid ones are logged and skipped.
    `exclude` is our own conflist's name (ISTIO_OWNED_CNI_CONF_FILENAME): while it holds our
    entry it is ours, never a primary (a vendor's file of that name still is one)."""
    for name in config_files(directory):
        path = directory / name
        if name == exclude and names_istio(path):
            continue
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


def find_primary(directory: Path, name: str = "", exclude: str = "") -> str | None:
    """The primary config's file name now, or None if there is none yet (no waiting)."""
    return named(directory, name) if name else first_valid(directory, exclude)


def wait_for_primary(directory: Path, name: str, stop: threading.Event,
                     timeout: float | None = None, exclude: str = "",
                     watch: Callable[[], FsWatch] | None = None) -> str | None:
    """Block until `find_primary` finds a config; None if `stop` is set or `timeout` passes.

    A config already there is returned without touching inotify. Otherwise the watch (`watch()`,
    the caller's long-lived one, else one of our own, closed on return) is set up before the
    next look, so a file created in between wakes us; without inotify it polls.
    """
    if not directory.is_dir():
        raise FileNotFoundError(f"CNI config dir {directory} does not exist (is the host's "
                                "net.d mounted at MOUNTED_CNI_NET_DIR?)")
    found = find_primary(directory, name, exclude)
    if found:
        return found
    deadline = None if timeout is None else time.monotonic() + timeout
    fs = watch() if watch is not None else FsWatch()
    try:
        logged = False
        while not stop.is_set():
            fs.begin()
            fs.add(directory, NET_DIR_EVENTS)
            fs.commit()
            found = find_primary(directory, name, exclude)
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
    finally:
        if watch is None:
            fs.close()
    return None
