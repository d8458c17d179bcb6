"""`json.loads` for stdin's network config, without importing `json` when the document is good.

The `json` package imports `re` (and with it `enum`, `functools`, `collections`): several
milliseconds on every DEL and every agent-served call, which otherwise need none of it. A valid
UTF-8 document is decoded here by CPython's own C scanner (`_json.make_scanner`, what
`json.loads` itself runs), configured exactly as `json`'s default decoder is; anything else (a
byte-order mark, UTF-16/32, invalid UTF-8, a syntax error, trailing data) is handed to
`json.loads`, so errors and their messages are `json`'s own. `tests/cni/test_jsonread.py`
holds the two to the same answers.
"""

import _json

_WHITESPACE = " \t\n\r"  # json's WHITESPACE
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Context:
    """What `_json.make_scanner` reads from a decoder: json.JSONDecoder()'s defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan = _json.make_scanner(_Context())


def _utf8_only(data: bytes) -> bool:
    """Would `json.detect_encoding` call these bytes UTF-8 (no BOM, no NUL among the first)?"""
    if data[:3] == b"\xef\xbb\xbf" or data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return False
    if len(data) == 2 or len(data) >= 4:
        return data[0] != 0 and data[1] != 0
    return True


def loads(data: bytes):  # type: ignore[no-untyped-def]  # any JSON value, like json.loads
    """The value `json.loads(data)` returns, or the exception it raises."""
    if _utf8_only(data):
        try:
            text = data.decode("utf-8")
            start = len(text) - len(text.lstrip(_WHITESPACE))
            value, end = _scan(text, start)
        except Exception:  # noqa: BLE001 - json.loads below gives the exact error
            pass
        else:
            if len(text.rstrip(_WHITESPACE)) == end:
                return value
    import json

    return json.loads(data)
