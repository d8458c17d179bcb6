"""JSON as Go's `encoding/json` reads it: the acceptance rules libcni applies to net.d.

The runtime picks its network config with libcni, which is Go; a file Go accepts and Python's
`json` rejects (or the reverse) would make us edit a different file than the one the kubelet
loads. So the rules here are Go's, not Python's:

- **invalid UTF-8 inside a string is accepted** (Go replaces each bad byte with U+FFFD).
  Files are decoded with `surrogateescape` (`text_of`), so every byte survives the round trip
  back to disk (`bytes_of`) and a bad byte outside a string is still a syntax error;
- **numbers must fit a float64**: libcni decodes configs into `interface{}`, and `1e400` fails
  there (`strconv.ParseFloat` range error). `1e-400` is 0 for Go and accepted;
- **nesting up to 10000** containers (Go's scanner limit), parsed without recursion, so a file of
  100,000 `[` is a clear error and 3,000 levels parse;
- **duplicate keys**: the last one wins; objects also keep every pair in order (`Object.pairs`)
  for the struct rules of `installer.discovery`;
- **a UTF-8 BOM, trailing data, NaN/Infinity, leading zeros** are syntax errors.

Numbers come back exact (`int`, or `Decimal` with a fraction or exponent) because the installer
never re-encodes another vendor's values, it only copies their text.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any

MAX_DEPTH = 10000
"""Go's encoding/json maxNestingDepth: deeper input is a syntax error for libcni."""

_WS = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]+|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_SURROGATE = re.compile("[\ud800-\udfff]")
_LITERALS = (("true", True), ("false", False), ("null", None))


class GoJSONError(ValueError):
    """The text is not JSON that Go's encoding/json would decode into an interface{}."""


class Object(dict[str, Any]):
    """A decoded JSON object (last duplicate key wins) that remembers every pair in order."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[str, Any]] = []

    def add(self, key: str, value: Any) -> None:
        self[key] = value
        self.pairs.append((key, value))


def text_of(data: bytes) -> str:
    """File bytes as text in which every invalid UTF-8 byte survives (as a lone surrogate)."""
    return data.decode("utf-8", "surrogateescape")


def bytes_of(text: str) -> bytes:
    """The inverse of `text_of`: the exact bytes back."""
    return text.encode("utf-8", "surrogateescape")


def _error(text: str, pos: int, what: str) -> GoJSONError:
    line = text.count("\n", 0, pos) + 1
    return GoJSONError(f"{what} (line {line}, offset {pos})")


def _string(text: str, pos: int, build: bool) -> tuple[str | None, int]:
    match = _STRING.match(text, pos)
    if match is None:
        raise _error(text, pos, "invalid string (unescaped control character, bad escape or "
                                "no closing quote)")
    if not build:
        return None, match.end()
    value = json.decoder.scanstring(text, pos + 1, True)[0]  # type: ignore[attr-defined]
    # Go turns each invalid byte, and each unpaired \\uD800-\\uDFFF escape, into U+FFFD
    return _SURROGATE.sub("\ufffd", value), match.end()


def _number(text: str, pos: int, build: bool) -> tuple[Any, int]:
    match = _NUMBER.match(text, pos)
    if match is None:
        raise _error(text, pos, f"invalid character {text[pos]!r} in numeric literal")
    literal = match.group()
    if math.isinf(float(literal)):
        raise _error(text, pos, f"number {literal[:40]} is out of range of a float64")
    if not build:
        return None, match.end()
    exact = Decimal(literal) if match.group(1) or match.group(2) else int(literal)
    return exact, match.end()


def _scalar(text: str, pos: int, build: bool) -> tuple[Any, int]:
    char = text[pos]
    if char == '"':
        return _string(text, pos, build)
    if char == "-" or "0" <= char <= "9":
        return _number(text, pos, build)
    for word, value in _LITERALS:
        if text.startswith(word, pos):
            return value, pos + len(word)
    raise _error(text, pos, f"invalid character {char!r} looking for beginning of value")


def _key(text: str, pos: int) -> tuple[str, int]:
    pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
    if pos >= len(text) or text[pos] != '"':
        raise _error(text, pos, "expected a string object key")
    key, pos = _string(text, pos, True)
    pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
    if pos >= len(text) or text[pos] != ":":
        raise _error(text, pos, "expected ':' after object key")
    return key or "", pos + 1


def _parse(text: str, pos: int, build: bool) -> tuple[Any, int]:
    """One value starting at `pos` (after optional whitespace): (value, end). Iterative: the
    open containers live in `stack` as [closing char, container, pending key]."""
    end = len(text)
    stack: list[list[Any]] = []
    while True:
        pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= end:
            raise _error(text, pos, "unexpected end of JSON input")
        char = text[pos]
        value: Any
        if char in "{[":
            if len(stack) >= MAX_DEPTH:
                raise _error(text, pos, f"exceeded max depth ({MAX_DEPTH} nested containers)")
            close = "}" if char == "{" else "]"
            container: Any = (Object() if char == "{" else []) if build else None
            pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
            if pos < end and text[pos] == close:
                value, pos = container, pos + 1
            else:
                frame = [close, container, None]
                stack.append(frame)
                if close == "}":
                    frame[2], pos = _key(text, pos)
                continue
        else:
            value, pos = _scalar(text, pos, build)
        while True:  # a value is complete: hand it to its container
            if not stack:
                return value, pos
            frame = stack[-1]
            if build:
                if frame[0] == "}":
                    frame[1].add(frame[2], value)
                else:
                    frame[1].append(value)
            pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
            if pos >= end:
                raise _error(text, pos, "unexpected end of JSON input")
            char = text[pos]
            if char == ",":
                pos += 1
                if frame[0] == "}":
                    frame[2], pos = _key(text, pos)
                break
            if char != frame[0]:
                where = "object key:value pair" if frame[0] == "}" else "array element"
                raise _error(text, pos, f"invalid character {char!r} after {where}")
            stack.pop()
            value, pos = frame[1], pos + 1


def loads(text: str) -> Any:
    """Decode a whole document the way Go decodes it into an interface{} (module docstring)."""
    value, pos = _parse(text, 0, True)
    pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
    if pos != len(text):
        raise _error(text, pos, f"invalid character {text[pos]!r} after top-level value")
    return value


def value_end(text: str, pos: int) -> int:
    """Where the JSON value starting at `pos` ends (for splicing); nothing is built."""
    return _parse(text, pos, False)[1]
