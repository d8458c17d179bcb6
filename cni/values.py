"""One parser per value type, shared by the plugin, the installer and the agent.

Upstream reads the same kinds of text in many places (environment variables through viper,
annotations, istio-proxy's environment) with Go's parsers; these are their Python equivalents,
written once. Each takes already-trimmed text and returns the typed value or raises `BadValue`
with a short reason that quotes the value; callers add the name of what they were reading
(an environment variable, an annotation, a config key). Pure, and cheap to import: the plugin
loads this module on every call, so `ipaddress` is imported only when a CIDR is parsed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from pathlib import Path

_TRUE = frozenset(("1", "t", "T", "TRUE", "true", "True"))
_FALSE = frozenset(("0", "f", "F", "FALSE", "false", "False"))
_PORT_RE = re.compile(r"[0-9]{1,5}")
_PREFIX_LEN_RE = re.compile(r"[0-9]{1,3}")


class BadValue(ValueError):
    """A text that does not parse as the expected type; the message says why."""


def parse_go_bool(text: str) -> bool | None:
    """Go's strconv.ParseBool: True or False, or None when the text is not a boolean."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def go_bool(text: str) -> bool:
    """Go's strconv.ParseBool (what viper uses for upstream's boolean settings)."""
    value = parse_go_bool(text)
    if value is None:
        raise BadValue(f"{text!r} is not a boolean (true/false, 1/0, t/f)")
    return value


def port(text: str) -> int:
    """A TCP/UDP port, like upstream's parsePort: trimmed, then decimal 0-65535 (Go's
    strconv.ParseUint(text, 10, 16))."""
    text = text.strip()
    if not _PORT_RE.fullmatch(text) or int(text) > 65535:
        raise BadValue(f"{text!r} is not a port number (0-65535)")
    return int(text)


def integer(text: str) -> int:
    """An integer the way viper reads one (Go's ParseInt with base 0: 42, 0x2a, 0o52)."""
    try:
        return int(text, 0)
    except ValueError:
        raise BadValue(f"{text!r} is not an integer") from None


def non_negative_integer(text: str) -> int:
    value = integer(text)
    if value < 0:
        raise BadValue(f"{text!r} is negative")
    return value


def seconds(text: str) -> float:
    """A duration in seconds: a finite number >= 0 ("nan" or "-1" would stall a timer)."""
    try:
        value = float(text)
    except ValueError:
        raise BadValue(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise BadValue(f"{text!r} is not a number of seconds >= 0")
    return value


def octal_mode(text: str) -> int:
    """A file mode, always octal: `0600`, `600` and `0o600` all mean rw-------.

    Upstream parses with Go's base-0 rules, where `600` silently means decimal 600 (mode
    01130); nobody means that, so the digits are read as octal and anything else is refused.
    """
    digits = text[2:] if text.lower().startswith("0o") else text
    try:
        mode = int(digits, 8)
    except ValueError:
        raise BadValue(f"{text!r} is not an octal file mode such as 0600") from None
    if not 0 <= mode <= 0o7777:
        raise BadValue(f"{text!r} is not a file mode (0-7777 octal)")
    return mode


def text(value: str) -> str:
    """Free text, taken as given."""
    return value


def encodable_text(value: str) -> str:
    """`value` if it can become the bytes it must: UTF-8 text with no NUL; else `BadValue`
    naming the first character that cannot.

    Every setting, config string and name ends up somewhere that needs bytes: a path, a JSON
    config file, a log line, an HTTP request, an argv. Three kinds of character cannot get
    there: a byte of the process's argv or environment that is not UTF-8 (Python holds it as a
    lone surrogate U+DC80-U+DCFF: a valid path byte, but no UTF-8 file or JSON string can carry
    it: Go's decoder turns it into U+FFFD, so the plugin would see another value), any other
    lone surrogate (from a JSON escape such as "\\ud800", or a caller in this process: it has no
    bytes at all), and NUL (where a path, an argv or a C string ends)."""
    nul = value.find("\x00")
    if nul >= 0:
        raise BadValue(f"{value!r} holds a NUL byte (character {nul}), which no path or name "
                       "can")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        what = (f"the byte 0x{code - 0xDC00:02x}, which is not UTF-8" if 0xDC80 <= code <= 0xDCFF
                else f"a lone surrogate U+{code:04X}, which no text can hold")
        raise BadValue(f"{value!r} has {what} (character {exc.start})") from None
    return value


def path(value: str) -> Path:
    from pathlib import Path  # not at import: the plugin's hot path never needs it

    return Path(value)


def paths(value: str) -> tuple[Path, ...]:
    """Comma-separated paths (see `names`)."""
    from pathlib import Path

    return tuple(Path(item) for item in names(value))


def names(text: str) -> tuple[str, ...]:
    """A comma-separated list; items are trimmed and empty items dropped ("a, b," is a, b)."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def one_of(choices: tuple[str, ...], fold_case: bool = False,
           aliases: Mapping[str, str] | None = None) -> Callable[[str], str]:
    """A parser for a closed set of names (modes, backends, log levels).

    `fold_case` accepts any case and returns the lower-case name; `aliases` maps accepted
    synonyms to their canonical name ("warning" -> "warn")."""
    table = dict(aliases or {})

    def parse(text: str) -> str:
        key = text.lower() if fold_case else text
        key = table.get(key, key)
        if key not in choices:
            allowed = ", ".join(c or '""' for c in choices)
            raise BadValue(f"{text!r} is not one of {allowed}")
        return key

    return parse


class Cidr(NamedTuple):
    """A parsed CIDR: the address as written (host bits kept), canonically printed."""

    address: str
    bits: int
    version: int
    loopback: bool

    def __str__(self) -> str:
        return f"{self.address}/{self.bits}"


def cidr(text: str) -> Cidr:
    """`ADDRESS/BITS`, decided the way Go's net.ParseCIDR decides it.

    The address is an IPv4 or IPv6 address with no zone; the prefix length is decimal and at
    most the address's bit length. Leading zeros in the length are accepted (`10.0.0.0/08` is
    `/8`), as net.ParseCIDR's decimal parse does, but at most three digits are read: no prefix
    length needs more. A netmask (`/255.0.0.0`) and a missing `/` are refused. The address keeps
    its host bits, as upstream's rules print it (`10.0.0.1/8` stays `10.0.0.1/8`), and IPv6 is
    printed canonically (`2001:DB8:0::/32` is `2001:db8::/32`).
    """
    import ipaddress  # lazy: most pods have no CIDR to parse

    addr, sep, bits = text.partition("/")
    if not sep or not _PREFIX_LEN_RE.fullmatch(bits) or "%" in addr:
        raise BadValue(f"{text!r} is not a CIDR (ADDRESS/PREFIXLEN)")
    try:
        iface = ipaddress.ip_interface(f"{addr}/{int(bits)}")
    except ValueError as exc:
        raise BadValue(f"{text!r} is not a CIDR: {exc}") from None
    return Cidr(str(iface.ip), iface.network.prefixlen, iface.version, iface.ip.is_loopback)
