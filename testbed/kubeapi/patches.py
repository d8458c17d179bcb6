"""PATCH bodies for the test API server: JSON merge patch (RFC 7386), JSON patch (RFC 6902)
and strategic merge patch.

A strategic merge patch is a merge patch except for the lists the API's schema gives a merge
key: their items are merged by that key (a node's or a pod's `status.conditions` by `type`, so
a patch of one condition keeps the kubelet's), and an item `{"$patch": "delete", <key>: ...}`
removes one. Every other list is replaced, as the API does for lists without a patch strategy
(a node's `spec.taints`). Pure functions on copies; no I/O.
"""

from __future__ import annotations

import copy
from typing import Any

MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
}
"""The merge key of each list a strategic merge patch merges (by path from the object's root;
the `patchMergeKey` of the Node and Pod schemas); the other lists are replaced."""

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class PatchError(ValueError):
    """The patch cannot be applied; `code` is the HTTP status the API server would answer."""

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(message)
        self.code = code


def apply_patch(content_type: str, target: dict[str, Any], patch: Any) -> dict[str, Any]:
    """A patched copy of `target`, by the patch type the Content-Type names."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in (MERGE, STRATEGIC):
        if not isinstance(patch, dict):
            raise PatchError("a merge patch must be a JSON object", 400)
        return merge_patch(target, patch) if kind == MERGE else strategic_merge(target, patch)
    if kind == JSON_PATCH:
        if not isinstance(patch, list):
            raise PatchError("a JSON patch must be a JSON array", 400)
        return json_patch(target, patch)
    raise PatchError(f"the body of the request was in an unknown format - {kind!r}", 415)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, `null` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge(target: Any, patch: Any, at: tuple[str, ...] = ()) -> Any:
    """A merge patch that merges the lists of `MERGE_KEYS` by key (see the module docstring)."""
    if not isinstance(patch, dict):
        key = MERGE_KEYS.get(at)
        if key is not None and isinstance(patch, list):
            return _merge_list(target if isinstance(target, list) else [], patch, key, at)
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = strategic_merge(result.get(name), value, (*at, name))
    return result


def _merge_list(items: list[Any], patch: list[Any], key: str, at: tuple[str, ...]) -> list[Any]:
    merged = copy.deepcopy(items)
    for entry in patch:
        if not isinstance(entry, dict) or key not in entry:
            raise PatchError(f"{'.'.join(at)}: every item needs its merge key {key!r}", 400)
        index = next((i for i, item in enumerate(merged)
                      if isinstance(item, dict) and item.get(key) == entry[key]), None)
        if entry.get("$patch") == "delete":
            if index is not None:
                del merged[index]
        elif index is None:
            merged.append(strategic_merge(None, entry, at))
        else:
            merged[index] = strategic_merge(merged[index], entry, at)
    return merged


def json_patch(target: dict[str, Any], ops: list[Any]) -> dict[str, Any]:
    """RFC 6902 over a copy: add, remove, replace, move, copy, test."""
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid JSON patch operation: {op!r}", 400)
        doc = _apply_op(doc, op)
    return doc


def _apply_op(doc: Any, op: dict[str, Any]) -> Any:
    name, path = op["op"], op["path"]
    if name == "test":
        if _get(doc, path) != op.get("value"):
            raise PatchError(f"testing value {path} failed")
        return doc
    if name == "remove":
        return _remove(doc, path)
    if name == "add":
        return _add(doc, path, copy.deepcopy(op.get("value")))
    if name == "replace":
        return _replace(doc, path, copy.deepcopy(op.get("value")))
    if name in ("move", "copy"):
        value = copy.deepcopy(_get(doc, op.get("from", "")))
        if name == "move":
            doc = _remove(doc, op["from"])
        return _add(doc, path, value)
    raise PatchError(f"unknown JSON patch operation {name!r}", 400)


def _tokens(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}", 400)
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _child(node: Any, token: str, path: str) -> Any:
    try:
        return node[int(token)] if isinstance(node, list) else node[token]
    except (KeyError, IndexError, ValueError, TypeError):
        raise PatchError(f"path {path} does not exist") from None


def _get(doc: Any, path: str) -> Any:
    node = doc
    for token in _tokens(path):
        node = _child(node, token, path)
    return node


def _parent(doc: Any, path: str) -> tuple[Any, str]:
    tokens = _tokens(path)
    if not tokens:
        raise PatchError("cannot address the whole document here", 422)
    node = doc
    for token in tokens[:-1]:
        node = _child(node, token, path)
    return node, tokens[-1]


def _add(doc: Any, path: str, value: Any) -> Any:
    if path == "":
        return value
    parent, last = _parent(doc, path)
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if not 0 <= index <= len(parent):
            raise PatchError(f"index out of range in {path}")
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise PatchError(f"cannot add under a scalar at {path}")
    return doc


def _replace(doc: Any, path: str, value: Any) -> Any:
    if path == "":
        return value
    parent, last = _parent(doc, path)
    _child(parent, last, path)  # must exist
    parent[int(last) if isinstance(parent, list) else last] = value
    return doc


def _remove(doc: Any, path: str) -> Any:
    parent, last = _parent(doc, path)
    _child(parent, last, path)  # must exist
    if isinstance(parent, list):
        del parent[int(last)]
    else:
        del parent[last]
    return doc
