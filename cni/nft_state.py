"""Read our tables out of an `nft list ruleset inet` listing, and compare two such readings.

Pure: no I/O. Why compare listings rather than our transaction text: the kernel stores rules
in its own form and `nft` prints that canonical form back (`ip daddr != 127.0.0.1/32` comes
back as `ip daddr != 127.0.0.1`, `mark 1337` as `meta mark 0x00000539`, group names as
numbers, a `meta l4proto tcp` made redundant by `tcp dport` disappears, ...). Rather than
re-implement that canonicalisation, `cni.backends.nftables` lets the kernel do it (the wanted tables
are applied in a throwaway netns and listed the same way), so both sides of a comparison are
listings and compare as text. Counter values are the only live data and are dropped.

Ownership: only the `inet` tables named in `cni.nft_ruleset.TABLES` are ours; everything
else in the listing is skipped unread.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from cni.live_state import StateDiff
from cni.nft_ruleset import FAMILY, TABLES

_COUNTER = re.compile(r"\bcounter packets \d+ bytes \d+")
_TABLE = re.compile(r"^table (\S+) (\S+) \{$")
_CHAIN = re.compile(r"^chain (\S+) \{$")
_HEADER = re.compile(r"^type \S+ hook \S+ .*;$")


@dataclass
class LiveChain:
    header: str = ""
    """`type ... hook ... priority ...; policy ...;` for a base chain, "" otherwise."""
    rules: list[str] = field(default_factory=list)


@dataclass
class LiveTable:
    chains: dict[str, LiveChain] = field(default_factory=dict)
    other: list[str] = field(default_factory=list)
    """First lines of anything that is not a chain (sets, maps, flags): never ours."""


def parse_listing(text: str) -> dict[str, LiveTable]:
    """Our tables in a `list ruleset` listing, by name, chains and rules in listed order."""
    tables: dict[str, LiveTable] = {}
    table: LiveTable | None = None
    chain: LiveChain | None = None
    depth = 0
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if depth == 0:
            m = _TABLE.match(line)
            if m and m.group(1) == FAMILY and m.group(2) in TABLES:
                table = tables.setdefault(m.group(2), LiveTable())
        elif depth == 1 and table is not None:
            m = _CHAIN.match(line)
            if m:
                chain = table.chains.setdefault(m.group(1), LiveChain())
            elif line != "}":
                table.other.append(line)
        elif depth == 2 and chain is not None and line != "}":
            if not chain.rules and not chain.header and _HEADER.match(line):
                chain.header = line
            else:
                chain.rules.append(_COUNTER.sub("counter", line))
        depth += line.count("{") - line.count("}")
        if depth <= 1:
            chain = None
        if depth == 0:
            table = None
    return tables


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
        extra += [f"{FAMILY} {name}: {line}" for line in have.other if line not in want.other]
        for chain in [*want.chains, *(c for c in have.chains if c not in want.chains)]:
            _diff_chain(name, chain, have.chains.get(chain), want.chains.get(chain),
                        missing, extra)
    return StateDiff(tuple(missing), tuple(extra), clean=not live)


def _chain_line(table: str, name: str, chain: LiveChain) -> str:
    head = f"chain {FAMILY} {table} {name}"
    return f"{head} {{ {chain.header} }}" if chain.header else head


def _whole_table(name: str, table: LiveTable, out: list[str]) -> None:
    out.append(f"table {FAMILY} {name}")
    for chain_name, chain in table.chains.items():
        out.append(_chain_line(name, chain_name, chain))
        out += [f"{FAMILY} {name} {chain_name}: {rule}" for rule in chain.rules]


def _diff_chain(
    table: str, name: str, have: LiveChain | None, want: LiveChain | None,
    missing: list[str], extra: list[str],
) -> None:
    if have is None or want is None:
        chain = want or have
        assert chain is not None
        out = missing if have is None else extra
        out.append(_chain_line(table, name, chain))
        out += [f"{FAMILY} {table} {name}: {rule}" for rule in chain.rules]
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
    missing += [f"{FAMILY} {table} {name}: {rule}" for rule in lacking.elements()]
    extra += [f"{FAMILY} {table} {name}: {rule}" for rule in surplus.elements()]
