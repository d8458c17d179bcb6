"""Pure edits of CNI network config text: insert our plugin entry, remove it, build our own file.

No I/O here. The functions take and return *text* and splice it: another vendor's content is
never decoded and re-encoded, only copied. That is how we keep its key order, whitespace,
escapes and numbers exactly as written (`1.0` stays `1.0`, 2**64 stays exact; upstream's Go map
round-trip sorts keys, rounds numbers through float64 and escapes `<>&`). The JSON is still
fully parsed first (with Go's rules, `installer.gojson`), to validate it and to find the spans:
`gojson.value_end` gives the end of each value, so we know where every member and array element
starts and ends.

- conflist (`plugins` present): every `type: "istio-cni"` element is dropped (upstream drops
  only the first) and our entry is appended last, indented like its neighbours.
- single-plugin conf (`type` present): wrapped as `{"cniVersion", "name", "plugins": [orig,
  ours]}` with the original's own `cniVersion` and `name` (upstream forces 0.3.1 and
  `k8s-pod-network`); the original object is embedded verbatim, re-indented.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from installer import gojson
from installer.config import InstallerConfig

ISTIO_TYPE = "istio-cni"
ENTRY_CNI_VERSION = "0.3.1"
FALLBACK_NETWORK_NAME = "k8s-pod-network"
_WS = " \t\n\r"


class ConfigFormatError(ValueError):
    """The text is not a network config we can edit (not JSON, not an object, no plugins...)."""


def plugin_entry(cfg: InstallerConfig) -> dict[str, Any]:
    """Our plugin entry, as the plugin (cni/config.py) reads it, with upstream's field names.

    Ambient fields and upstream's empty `ipam`/`dns` are left out: this agent has no ambient
    mode and the plugin ignores them. `iptables_backend` and `nftables_backend` are ours and
    only written when not `auto`; `agent_serve` (ours) only when off.
    """
    entry: dict[str, Any] = {
        "cniVersion": ENTRY_CNI_VERSION,
        "name": "istio-cni",
        "type": ISTIO_TYPE,
        "plugin_log_level": cfg.plugin_log_level,
        "cni_agent_run_dir": str(cfg.cni_agent_run_dir),
        "exclude_namespaces": list(cfg.exclude_namespaces),
        "pod_namespace": cfg.pod_namespace,
        "native_nftables": cfg.native_nftables,
    }
    if cfg.force_iptables_binary:
        entry["iptables_backend"] = cfg.force_iptables_binary
    if cfg.nftables_backend != "auto":
        entry["nftables_backend"] = cfg.nftables_backend
    if not cfg.agent_serve:
        entry["agent_serve"] = False
    return entry


def chained_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as it goes into a list: no cniVersion (the list's applies), like upstream."""
    return {k: v for k, v in entry.items() if k != "cniVersion"}


def render_standalone(entry: dict[str, Any]) -> str:
    """Our own config file (CHAINED_CNI_PLUGIN=false), formatted like upstream's."""
    return json.dumps(entry, indent=2) + "\n"


def parse(text: str) -> Any:
    """Decode as libcni does (Go's encoding/json, see installer.gojson); numbers kept exact."""
    try:
        return gojson.loads(text)
    except gojson.GoJSONError as exc:
        raise ConfigFormatError(f"not valid JSON: {exc}") from exc


def parse_object(text: str) -> dict[str, Any]:
    doc = parse(text)
    if not isinstance(doc, dict):
        raise ConfigFormatError(f"not a JSON object but a {type(doc).__name__}")
    return doc


def is_list(doc: dict[str, Any]) -> bool:
    """A conflist (has `plugins`) rather than a single-plugin conf (has `type`)."""
    if "plugins" in doc:
        return True
    if "type" in doc:
        return False
    raise ConfigFormatError("neither a 'plugins' list nor a plugin 'type'")


def _plugins(doc: dict[str, Any]) -> list[Any]:
    plugins = doc["plugins"]
    if not isinstance(plugins, list):
        raise ConfigFormatError("'plugins' is not a list")
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise ConfigFormatError(f"plugins[{i}] is not an object")
    return plugins


def istio_entries(text: str) -> list[dict[str, Any]]:
    """Every istio-cni plugin in the config (a standalone istio conf counts as one)."""
    doc = parse_object(text)
    if is_list(doc):
        return [p for p in _plugins(doc) if p.get("type") == ISTIO_TYPE]
    return [doc] if doc.get("type") == ISTIO_TYPE else []


# ---- spans -------------------------------------------------------------------------------


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _value_end(text: str, i: int) -> int:
    return gojson.value_end(text, i)


def _members(text: str, open_at: int) -> dict[str, tuple[int, int]]:
    """key -> (value start, value end) of the object whose '{' is at `open_at`; last wins,
    as in Go and Python for duplicate keys."""
    out: dict[str, tuple[int, int]] = {}
    i = _skip_ws(text, open_at + 1)
    if text[i] == "}":
        return out
    while True:
        key, i = json.decoder.scanstring(text, i + 1)
        i = _skip_ws(text, _skip_ws(text, i) + 1)  # past ':'
        end = _value_end(text, i)
        out[key] = (i, end)
        i = _skip_ws(text, end)
        if text[i] == "}":
            return out
        i = _skip_ws(text, i + 1)  # past ','


@dataclass
class _Item:
    lead: str  # whitespace between '[' or ',' and the element
    body: str
    trail: str  # whitespace between the element and the next ','


def _elements(text: str, open_at: int) -> tuple[list[_Item], str, int]:
    """The elements of the array at `open_at`, the whitespace before ']', and the ']' index."""
    items: list[_Item] = []
    i = open_at + 1
    j = _skip_ws(text, i)
    if text[j] == "]":
        return items, text[i:j], j
    while True:
        start = j
        end = _value_end(text, start)
        k = _skip_ws(text, end)
        items.append(_Item(text[i:start], text[start:end], text[end:k]))
        if text[k] == "]":
            closing = items[-1].trail
            items[-1].trail = ""
            return items, closing, k
        i = k + 1
        j = _skip_ws(text, i)


def _top(text: str) -> tuple[dict[str, Any], int]:
    doc = parse_object(text)
    return doc, _skip_ws(text, 0)


def _indent_of(ws: str) -> str | None:
    """The indentation after the last newline of `ws`, or None when `ws` has no newline."""
    return ws.rsplit("\n", 1)[1] if "\n" in ws else None


def _render_entry(entry: dict[str, Any], lead: str, closing: str) -> str:
    indent = _indent_of(lead)
    if indent is None:
        return json.dumps(entry)
    outer = _indent_of(closing) or ""
    unit = indent[len(outer):] if indent.startswith(outer) and len(indent) > len(outer) else "  "
    lines = json.dumps(entry, indent=unit).split("\n")
    return "\n".join([lines[0], *(indent + line for line in lines[1:])])


def _is_istio(body: str) -> bool:
    value = gojson.loads(body)
    return isinstance(value, dict) and value.get("type") == ISTIO_TYPE


def _rebuild_list(text: str, entry: dict[str, Any] | None) -> str:
    doc, open_at = _top(text)
    _plugins(doc)
    start, end = _members(text, open_at)["plugins"]
    items, closing, _ = _elements(text, start)
    kept = [item for item in items if not _is_istio(item.body)]
    if entry is None and len(kept) == len(items):
        return text
    if entry is not None:
        model = kept[-1] if kept else (items[0] if items else None)
        lead = model.lead if model else ("\n" + (_indent_of(closing) or "") + "  "
                                         if "\n" in closing else "")
        kept.append(_Item(lead, _render_entry(entry, lead, closing), ""))
    array = "[" + ",".join(i.lead + i.body + i.trail for i in kept) + closing + "]"
    return text[:start] + array + text[end:]


def _wrap_single(text: str, doc: dict[str, Any], entry: dict[str, Any]) -> str:
    _, open_at = _top(text)
    end = _value_end(text, open_at)
    spans = _members(text, open_at)
    header = []
    if "cniVersion" in spans:
        s, e = spans["cniVersion"]
        header.append(f'  "cniVersion": {text[s:e]},\n')
    if isinstance(doc.get("name"), str):
        s, e = spans["name"]
        header.append(f'  "name": {text[s:e]},\n')
    else:
        header.append(f'  "name": {json.dumps(FALLBACK_NETWORK_NAME)},\n')
    original = text[open_at:end].replace("\n", "\n    ")
    ours = _render_entry(entry, "\n    ", "\n  ")
    tail = text[end:] or "\n"
    return ("{\n" + "".join(header) + '  "plugins": [\n    ' + original + ",\n    " + ours
            + "\n  ]\n}" + tail)


def insert_plugin(existing_text: str, entry: dict[str, Any]) -> str:
    """`existing_text` with `entry` as the last plugin and no other istio-cni entry.

    Raises ConfigFormatError when the text is not an editable network config.
    """
    doc = parse_object(existing_text)
    if is_list(doc):
        return _rebuild_list(existing_text, entry)
    if doc.get("type") == ISTIO_TYPE:
        raise ConfigFormatError("it is an istio-cni config itself, not a primary network")
    return _wrap_single(existing_text, doc, entry)


def remove_plugin(text: str) -> str:
    """`text` without any istio-cni plugin entry; unchanged (same object) when it has none."""
    doc = parse_object(text)
    if not is_list(doc):
        return text
    return _rebuild_list(text, None)


def converted_name(name: str, text: str) -> str:
    """The file name our edit of `name` must be written under.

    A single-plugin `.conf`/`.json` becomes a list, which libcni only loads from `.conflist`;
    any other name is kept (a list under an explicit CNI_CONF_NAME stays where it is).
    """
    doc = parse_object(text)
    if is_list(doc):
        return name
    for ext in (".conf", ".json"):
        if name.endswith(ext):
            return name[: -len(ext)] + ".conflist"
    return name
