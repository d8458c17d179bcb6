"""Our nftables tables read from nftables' JSON form, and two such readings compared exactly.

Pure: no I/O (`cni.backends.nftables` runs the `list` commands). Why JSON: the text listing is
meant for people. A table's or rule's comment may hold braces, quotes and newlines (up to 128
bytes), so any reader that finds blocks and lines in that text can be steered by what another
table says about itself: it can hide our intact tables or spell back a rule that is gone. The
JSON form has one object per table, chain, rule and set, with its name and its owner in fields,
so what a comment says stays inside a string.

What is read: only our own tables (`cni.nft_ruleset.TABLES`, family `inet`), each listed by
name after `list tables` said it exists (`table_names`); nothing of another table is parsed
beyond its name and family.

How "exactly" is decided: the kernel stores rules in its own form (`ip daddr != 127.0.0.1/32`
comes back as `!= 127.0.0.1`, `meta l4proto tcp` made redundant by `tcp dport` disappears,
group names become numbers, ...), so the wanted tables are applied in a throwaway netns and
read back the same way (`cni.backends.nftables`), and both sides compare as the kernel's own
JSON: every field of a table, chain and rule except its handle, with counter values (the only
live data) set aside. Nothing is re-implemented and nothing is approximated; a field we never
set (a comment, table flags such as `dormant`, a chain's policy) is a difference.

The readable lines in a `StateDiff` are for people and are never parsed back: a rule is shown
in nft-like words (`describe`), and anything outside our vocabulary as its JSON.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cni.live_state import StateDiff
from cni.nft_ruleset import FAMILY, TABLES

IDENTITY = frozenset({"family", "table", "name", "handle"})
"""Fields that name an object (or number it) rather than say what it does."""
RULE_IDENTITY = frozenset({"family", "table", "chain", "handle"})
COUNTED = "counter"


class StateUnreadable(ValueError):
    """The output is not the JSON shape nftables gives for a listing (never read past)."""


def _canonical(value: Any) -> str:
    import json  # here, not at import: the module is imported on the plugin's hot path

    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass
class LiveChain:
    header: str = ""
    """The chain's own fields (type, hook, prio, policy, ...) in canonical JSON; "{}" for a
    regular chain."""
    rules: list[str] = field(default_factory=list)
    """Each rule's canonical JSON (its expression and any comment; counters zeroed), in order."""
    shown: dict[str, str] = field(default_factory=dict)
    """Canonical rule -> how messages show it."""


@dataclass
class LiveTable:
    attrs: str = "{}"
    """The table's own fields (flags, comment, ...) in canonical JSON."""
    chains: dict[str, LiveChain] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)
    """Anything in the table that is not a chain or a rule (sets, maps, ...): never ours."""


def _objects(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The (kind, fields) pairs of one `nft -j` output, its shape checked."""
    import json

    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise StateUnreadable(f"not JSON: {exc}") from exc
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise StateUnreadable("no `nftables` array")
    out = []
    for item in items:
        if not isinstance(item, dict) or len(item) != 1:
            raise StateUnreadable(f"not a single-key object: {_canonical(item)[:200]}")
        [(kind, fields)] = item.items()
        if not isinstance(fields, dict):
            raise StateUnreadable(f"{kind}: not an object")
        out.append((kind, fields))
    return out


def table_names(text: str) -> set[str]:
    """Our tables (family `inet`, one of TABLES) in a `list tables` JSON output."""
    return {f["name"] for kind, f in _objects(text)
            if kind == "table" and f.get("family") == FAMILY and f.get("name") in TABLES}


def parse_table(text: str, name: str) -> LiveTable:
    """One of our tables from its `list table inet NAME` JSON output; only objects that say
    they belong to it are read (the listing holds nothing else)."""
    table = LiveTable()
    found = False
    for kind, f in _objects(text):
        if kind == "metainfo":
            continue
        owner = f.get("name") if kind == "table" else f.get("table")
        if f.get("family") != FAMILY or owner != name:
            raise StateUnreadable(f"{kind} of another table in the listing of {name}")
        if kind == "table":
            found = True
            table.attrs = _canonical({k: v for k, v in f.items() if k not in IDENTITY})
        elif kind == "chain":
            header = _canonical({k: v for k, v in f.items() if k not in IDENTITY})
            table.chains.setdefault(str(f.get("name")), LiveChain()).header = header
        elif kind == "rule":
            chain = table.chains.setdefault(str(f.get("chain")), LiveChain())
            rule = {k: _zero_counters(v) for k, v in f.items() if k not in RULE_IDENTITY}
            key = _canonical(rule)
            chain.rules.append(key)
            chain.shown.setdefault(key, describe(rule))
        else:
            table.other.append(f"{kind} {f.get('name', '')}".rstrip())
    if not found:
        raise StateUnreadable(f"no table object in the listing of {name}")
    return table


def _zero_counters(value: Any) -> Any:
    """The rule with each counter statement's packets and bytes set aside."""
    if isinstance(value, list):
        return [{COUNTED: None} if isinstance(s, dict) and COUNTED in s else s for s in value]
    return value


def describe(rule: dict[str, Any]) -> str:
    """A rule in nft-like words, for messages only; what is outside our vocabulary stays JSON."""
    words = [_statement(s) for s in rule.get("expr", [])]
    extra = {k: v for k, v in rule.items() if k != "expr"}
    if extra:
        words.append(_canonical(extra))
    return " ".join(words)


def _statement(stmt: Any) -> str:
    if not isinstance(stmt, dict) or len(stmt) != 1:
        return _canonical(stmt)
    [(kind, arg)] = stmt.items()
    if arg is None:
        return kind
    if kind == "match" and isinstance(arg, dict):
        op = arg.get("op")
        left, right = _operand(arg.get("left")), _operand(arg.get("right"))
        return f"{left} {right}" if op in ("==", "in") else f"{left} {op} {right}"
    if kind in ("jump", "goto") and isinstance(arg, dict) and "target" in arg:
        return f"{kind} {arg['target']}"
    if kind == "redirect" and isinstance(arg, dict) and set(arg) == {"port"}:
        return f"redirect to :{arg['port']}"
    if kind == "mangle" and isinstance(arg, dict) and {"key", "value"} <= set(arg):
        return f"{_operand(arg['key'])} set {_operand(arg['value'])}"
    return _canonical(stmt)


def _operand(value: Any) -> str:
    if isinstance(value, str | int):
        return str(value)
    if isinstance(value, dict) and len(value) == 1:
        [(kind, arg)] = value.items()
        if kind in ("meta", "ct") and isinstance(arg, dict) and set(arg) == {"key"}:
            return f"{kind} {arg['key']}"
        if kind == "payload" and isinstance(arg, dict) and set(arg) == {"protocol", "field"}:
            return f"{arg['protocol']} {arg['field']}"
        if kind == "prefix" and isinstance(arg, dict) and set(arg) == {"addr", "len"}:
            return f"{arg['addr']}/{arg['len']}"
        if kind == "set" and isinstance(arg, list):
            return "{ " + ", ".join(_operand(v) for v in arg) + " }"
    return _canonical(value)


def diff_tables(live: dict[str, LiveTable], wanted: dict[str, LiveTable]) -> StateDiff:
    """What `live` lacks (`missing`) or has beyond (`extra`) `wanted`, as readable lines.

    `clean` is True when the netns has none of our tables at all."""
    missing: list[str] = []
    extra: list[str] = []
    for name in [*wanted, *(n for n in live if n not in wanted)]:
        have, want = live.get(name), wanted.get(name)
        if have is None or want is None:
            _whole_table(name, want or have, missing if have is None else extra)  # type: ignore[arg-type]
            continue
        if have.attrs != want.attrs:
            missing.append(_table_line(name, want))
            extra.append(_table_line(name, have))
        extra += [f"{FAMILY} {name}: {line}" for line in have.other if line not in want.other]
        for chain in [*want.chains, *(c for c in have.chains if c not in want.chains)]:
            _diff_chain(name, chain, have.chains.get(chain), want.chains.get(chain),
                        missing, extra)
    return StateDiff(tuple(missing), tuple(extra), clean=not live)


def _table_line(name: str, table: LiveTable) -> str:
    head = f"table {FAMILY} {name}"
    return head if table.attrs == "{}" else f"{head} {table.attrs}"


def _chain_line(table: str, name: str, chain: LiveChain) -> str:
    import json

    head = f"chain {FAMILY} {table} {name}"
    if chain.header == "{}":
        return head
    fields = json.loads(chain.header)
    words = [f"type {fields.pop('type', '?')} hook {fields.pop('hook', '?')} "
             f"priority {fields.pop('prio', '?')};"]
    if "policy" in fields:
        words.append(f"policy {fields.pop('policy')};")
    if fields:
        words.append(_canonical(fields))
    return f"{head} {{ {' '.join(words)} }}"


def _rule_lines(table: str, name: str, chain: LiveChain, rules: list[str]) -> list[str]:
    return [f"{FAMILY} {table} {name}: {chain.shown.get(r, r)}" for r in rules]


def _whole_table(name: str, table: LiveTable, out: list[str]) -> None:
    out.append(_table_line(name, table))
    for chain_name, chain in table.chains.items():
        out.append(_chain_line(name, chain_name, chain))
        out += _rule_lines(name, chain_name, chain, chain.rules)
    out += [f"{FAMILY} {name}: {line}" for line in table.other]


def _diff_chain(
    table: str, name: str, have: LiveChain | None, want: LiveChain | None,
    missing: list[str], extra: list[str],
) -> None:
    if have is None or want is None:
        chain = want or have
        assert chain is not None
        out = missing if have is None else extra
        out.append(_chain_line(table, name, chain))
        out += _rule_lines(table, name, chain, chain.rules)
        return
    if have.header != want.header:
        missing.append(_chain_line(table, name, want))
        extra.append(_chain_line(table, name, have))
    if have.rules == want.rules:
        return
    lacking, surplus = Counter(want.rules) - Counter(have.rules), Counter(have.rules) - Counter(
        want.rules)
    if not lacking and not surplus:  # same rules in another order: the whole chain differs
        lacking, surplus = Counter(want.rules), Counter(have.rules)
    missing += _rule_lines(table, name, want, list(lacking.elements()))
    extra += _rule_lines(table, name, have, list(surplus.elements()))
