"""Compare the live state of ours in a netns (`*-save` text) with a wanted `FamilyRules`.

Pure: no I/O. `iptables-save` prints rules in its own canonical form (`-s/-d/-i/-o/-p` first,
implicit `-m tcp`, marks in hex, `MARK --set-xmark`, `CONNMARK ... --nfmask/--ctmask`, TPROXY's
`--on-ip`), so instead of running the kernel round trip on every CHECK we translate our payload
params into that form (`save_form`) and compare text: one `*-save` per family.
The translation covers the vocabulary of `cni.rules` (tests prove it against real nft and legacy
output for every golden rule set); `parse_rule` is also what the libiptc backend builds from.

Ownership: only our tables (`OWN_TABLES`: nat, mangle, raw) are read, and in them only the
built-in chains and ours (`OWN_CHAINS`, upstream's exact names: `ISTIO_CUSTOM` or an
`ISTIO_OUTPUT` in `filter` is someone else's). In built-in chains, a rule is ours when it jumps
to one of our chains or equals one we want there (`is_ours`); anything else there is foreign:
ignored by the diff, kept by `reset_plan` and `replace_payload`.

Reading (`parse_save`): iptables-save's text is line-structured with xtables' quoting, and is
parsed as such (`statements`), never searched: a comment may hold quotes, escapes and
newlines, and a reader that counts lines can be made to see a rule that a comment spells. One
thing text cannot settle: some extensions print a name raw (`-m recent --name`), newlines
included, so another rule can spell a line of ours. So whatever the text shows of the rules
we want is confirmed by the kernel (`claimed`, `check_payload`: one `iptables-restore` of
`-C` lines) before a backend believes it.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from cni.ruleset import BUILTIN_CHAINS, OWN_CHAINS, OWN_TABLES, FamilyRules, Rule

IP_OPTS = {
    "-s": "-s", "--source": "-s", "-d": "-d", "--destination": "-d",
    "-i": "-i", "--in-interface": "-i", "-o": "-o", "--out-interface": "-o",
    "-p": "-p", "--protocol": "-p",
}
IP_ORDER = ("-s", "-d", "-i", "-o", "-p")
ALIASES = {
    "--destination-port": "--dport", "--source-port": "--sport",
    "--destination-ports": "--dports", "--source-ports": "--sports",
}
# Options each match takes, in the order `iptables-save` prints them.
MATCH_OPTS: dict[str, tuple[str, ...]] = {
    "tcp": ("--sport", "--dport"),
    "udp": ("--sport", "--dport"),
    "multiport": ("--sports", "--dports", "--ports"),
    "owner": ("--uid-owner", "--gid-owner"),
    "conntrack": ("--ctstate",),
    "mark": ("--mark",),
    "connmark": ("--mark",),
}
# Options each target takes; REDIRECT's `--to-port` is getopt's prefix match of `--to-ports`.
TARGET_OPTS: dict[str, tuple[str, ...]] = {
    "REDIRECT": ("--to-ports",),
    "TPROXY": ("--on-port", "--on-ip", "--tproxy-mark"),
    "MARK": ("--set-mark", "--set-xmark"),
    "CONNMARK": ("--save-mark", "--restore-mark"),
    "CT": ("--zone",),
}
FLAG_OPTS = frozenset({"--save-mark", "--restore-mark"})
TARGET_ALIASES = {"--to-port": "--to-ports"}
CTSTATE_ORDER = ("INVALID", "NEW", "RELATED", "ESTABLISHED", "UNTRACKED", "SNAT", "DNAT")
FULL_MASK = 0xFFFFFFFF
SAVE_FORM_CACHE = 2048
"""Rules whose `save_form` is kept: a few rule sets' worth (~40 rules each)."""


class UnsupportedRule(ValueError):
    """A rule uses an option outside the vocabulary this module can translate."""


@dataclass(frozen=True)
class Opt:
    name: str
    value: str = ""
    neg: bool = False


@dataclass(frozen=True)
class ParsedRule:
    """A rule's spec split the way iptables stores it: ip header fields, matches, target."""

    ip: tuple[Opt, ...]
    matches: tuple[tuple[str, tuple[Opt, ...]], ...]
    target: str
    target_opts: tuple[Opt, ...] = ()

    def ip_opt(self, name: str) -> Opt | None:
        return next((o for o in self.ip if o.name == name), None)


def parse_rule(spec: tuple[str, ...]) -> ParsedRule:
    """Parse a rule spec (no `-A CHAIN`) like iptables does, including implicit proto matches."""
    ip: list[Opt] = []
    matches: list[tuple[str, list[Opt]]] = []
    target = ""
    topts: list[Opt] = []
    neg = False
    i = 0
    while i < len(spec):
        tok = spec[i]
        if tok == "!":
            neg = True
            i += 1
            continue
        flag = tok in FLAG_OPTS
        value = "" if flag else _arg(spec, i)
        if tok in IP_OPTS:
            ip.append(Opt(IP_OPTS[tok], value, neg))
        elif tok in ("-m", "--match"):
            matches.append((value, []))
        elif tok in ("-j", "--jump"):
            target = value
        elif target:
            name = TARGET_ALIASES.get(tok, tok)
            if name not in TARGET_OPTS.get(target, ()):
                raise UnsupportedRule(f"target {target}: option {tok} not supported")
            topts.append(Opt(name, value, neg))
        else:
            _add_match_opt(matches, ip, Opt(ALIASES.get(tok, tok), value, neg))
        neg = False
        i += 1 if flag else 2
    if not target:
        raise UnsupportedRule(f"rule without -j: {' '.join(spec)}")
    return ParsedRule(tuple(ip), tuple((n, tuple(o)) for n, o in matches), target, tuple(topts))


def _arg(spec: tuple[str, ...], i: int) -> str:
    if i + 1 >= len(spec):
        raise UnsupportedRule(f"option {spec[i]} without a value")
    return spec[i + 1]


def _add_match_opt(matches: list[tuple[str, list[Opt]]], ip: list[Opt], opt: Opt) -> None:
    """Give the option to the latest loaded match that takes it, else load the proto match.

    Each `-m` instance gets its own option ids, and getopt resolves to the newest one, so
    `-m owner ! --gid-owner 10 -m owner ! --gid-owner 20` is two matches, one option each.
    """
    for name, opts in reversed(matches):
        if opt.name in MATCH_OPTS.get(name, ()):
            opts.append(opt)
            return
    proto = next((o.value.lower() for o in ip if o.name == "-p" and not o.neg), "")
    if proto in ("tcp", "udp") and opt.name in MATCH_OPTS[proto]:
        matches.append((proto, [opt]))
        return
    raise UnsupportedRule(f"option {opt.name} not supported here")


def _neg(opt: Opt) -> str:
    return "! " if opt.neg else ""


def _addr(value: str) -> str:
    return str(ipaddress.ip_network(value, strict=False))


def _hex_mark(value: str) -> tuple[int, int]:
    mark, _, mask = value.partition("/")
    return int(mark, 0), int(mask, 0) if mask else FULL_MASK


def _mark_text(value: str) -> str:
    mark, mask = _hex_mark(value)
    return f"{mark:#x}" if mask == FULL_MASK else f"{mark:#x}/{mask:#x}"


def _ctstate(value: str) -> str:
    states = value.upper().split(",")
    return ",".join(sorted(states, key=lambda s: CTSTATE_ORDER.index(s)
                           if s in CTSTATE_ORDER else len(CTSTATE_ORDER)))


def _match_value(match: str, opt: Opt) -> str:
    if match in ("mark", "connmark"):
        return _mark_text(opt.value)
    if match == "conntrack":
        return _ctstate(opt.value)
    return opt.value


def _render_match(name: str, opts: tuple[Opt, ...]) -> str:
    if name not in MATCH_OPTS:
        raise UnsupportedRule(f"match {name} not supported")
    order = MATCH_OPTS[name]
    parts = [f"-m {name}"]
    for o in sorted(opts, key=lambda o: order.index(o.name)):
        parts.append(f"{_neg(o)}{o.name} {_match_value(name, o)}")
    return " ".join(parts)


def _render_target(target: str, opts: tuple[Opt, ...], ipv6: bool) -> str:
    given = {o.name: o.value for o in opts}
    if target == "REDIRECT":
        return f"-j REDIRECT --to-ports {given['--to-ports']}" if given else "-j REDIRECT"
    if target == "TPROXY":
        mark, mask = _hex_mark(given.get("--tproxy-mark", "0/0"))
        on_ip = given.get("--on-ip", "::" if ipv6 else "0.0.0.0")
        return (f"-j TPROXY --on-port {given['--on-port']} --on-ip {on_ip} "
                f"--tproxy-mark {mark:#x}/{mask:#x}")
    if target == "MARK":
        if "--set-xmark" in given:
            mark, mask = _hex_mark(given["--set-xmark"])
        else:
            mark, mask = _hex_mark(given["--set-mark"])
            mask |= mark
        return f"-j MARK --set-xmark {mark:#x}/{mask:#x}"
    if target == "CONNMARK":
        mode = next(iter(given))
        return f"-j CONNMARK {mode} --nfmask {FULL_MASK:#x} --ctmask {FULL_MASK:#x}"
    if target == "CT":
        return f"-j CT --zone {given['--zone']}"
    if opts:
        raise UnsupportedRule(f"target {target} with options not supported")
    return f"-j {target}"


@lru_cache(maxsize=SAVE_FORM_CACHE)
def save_form(rule: Rule, ipv6: bool) -> str:
    """The line `iptables-save` prints for `rule` once applied (`-A CHAIN ...`). Pure, so kept
    for the node agent's next pods (a pod's rule set is mostly its neighbours')."""
    parsed = parse_rule(rule.spec)
    parts = [f"-A {rule.chain}"]
    for name in IP_ORDER:
        opt = parsed.ip_opt(name)
        if opt is not None:
            value = _addr(opt.value) if name in ("-s", "-d") else opt.value
            parts.append(f"{_neg(opt)}{name} {value.lower() if name == '-p' else value}")
    parts.extend(_render_match(n, o) for n, o in parsed.matches)
    parts.append(_render_target(parsed.target, parsed.target_opts, ipv6))
    return " ".join(parts)


Chains = dict[str, list[str]]
"""chain name -> rule lines (`-A CHAIN ...`) in order."""

QUOTING_OPTS = frozenset({"--comment", "--log-prefix", "--nflog-prefix"})
"""Options whose value `*-save` prints through xtables' quoting (`"..."`, with `\\"`, `\\\\`
and `\\'` escaped) when it holds anything but letters, digits, `_` and `-`."""
SAFE_CHARS = frozenset("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
ESCAPED = "\"\\'"
BLANKS = " \t"


class StateUnreadable(ValueError):
    """`*-save` text that is not what iptables-save prints: nothing is concluded from it."""


def _quoted(text: str, start: int) -> tuple[str, int]:
    """The value of the quoted token opening at `start`, and where the token ends."""
    out: list[str] = []
    i = start + 1
    while True:
        if i >= len(text):
            raise StateUnreadable("a quoted value is never closed")
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in ESCAPED:
            out.append(text[i + 1])
            i += 2
        elif ch == '"':
            i += 1
            if i < len(text) and text[i] not in BLANKS + "\n":
                raise StateUnreadable(f"a quoted value is followed by {text[i]!r}")
            return "".join(out), i
        else:
            out.append(ch)
            i += 1


def requote(value: str) -> str:
    """A value as iptables-save prints it (xtables' `save_string`)."""
    if value and all(ch in SAFE_CHARS for ch in value):
        return value
    return '"' + "".join("\\" + ch if ch in ESCAPED else ch for ch in value) + '"'


def statements(text: str) -> list[list[str]]:
    """`*-save` text as statements of tokens, the way iptables-save framed it.

    A statement ends at a newline outside quotes. A `"` opens a quoted value only where
    iptables-save quotes one (after an option of QUOTING_OPTS); there, newlines and escaped
    quotes belong to the value, so a comment cannot end a statement or start another. Anywhere
    else a `"` is an ordinary character: chain and interface names are printed raw. A quoted
    token is kept in its printed form (`requote`), so a rule line reads as it was printed."""
    out: list[list[str]] = []
    tokens: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\n":
            if tokens:
                out.append(tokens)
            tokens = []
            i += 1
        elif ch in BLANKS:
            i += 1
        elif ch == '"' and tokens and tokens[-1] in QUOTING_OPTS:
            value, i = _quoted(text, i)
            tokens.append(requote(value))
        else:
            end = i
            while end < len(text) and text[end] not in BLANKS + "\n":
                end += 1
            tokens.append(text[i:end])
            i = end
    if tokens:
        out.append(tokens)
    return out


class OutOfOrder(StateUnreadable):
    """A rule line names a chain whose rules iptables-save printed already (or never
    declared): a raw name of another rule spelled it. Our chains must be listed one by one."""


def parse_save(text: str) -> dict[str, Chains]:
    """`*-save` output -> table -> chain -> rule lines, for our tables (`OWN_TABLES`) and, in
    them, the built-in chains and ours (`OWN_CHAINS`) only; counters are dropped.

    Parsed as iptables-save frames it (`statements`): table sections (`*table` ... `COMMIT`),
    chain declarations, rules. Anything else is `StateUnreadable`, never skipped: a reader that
    guesses is a reader that can be steered. iptables-save prints each chain's rules together,
    chains in the order it declared them (nft and legacy alike), so a rule line out of that
    order was spelled by another rule's raw name: `OutOfOrder`."""
    tables: dict[str, Chains] = {}
    current: Chains | None = None
    section = ""
    order: dict[str, int] = {}
    last = -1
    for words in statements(text):
        head = words[0]
        if head.startswith("#"):
            continue
        if head.startswith("*"):
            if section:
                raise StateUnreadable(f"table {head[1:]} starts inside table {section}")
            section = head[1:] or (words[1] if len(words) > 1 else "")
            current = tables.setdefault(section, {}) if section in OWN_TABLES else None
            order, last = {}, -1
            continue
        if not section:
            raise StateUnreadable(f"{head!r} outside a table")
        if head == "COMMIT":
            section, current = "", None
            continue
        if head.startswith("[") and head.endswith("]"):  # `iptables-save -c`: counters first
            words = words[1:]
            head = words[0] if words else ""
        if head.startswith(":"):
            order.setdefault(head[1:], len(order))
            if current is not None and _owned(head[1:]):
                current.setdefault(head[1:], [])
        elif head == "-A" and len(words) >= 3:
            place = order.get(words[1], -1)
            if place < last:
                raise OutOfOrder(f"in table {section}: a rule of {words[1]} out of place")
            last = place
            if current is not None and _owned(words[1]):
                current.setdefault(words[1], []).append(" ".join(words))
        else:
            raise StateUnreadable(f"in table {section}: {' '.join(words)[:200]!r}")
    if section:
        raise StateUnreadable(f"table {section} has no COMMIT")
    return tables


def declared(text: str) -> dict[str, list[str]]:
    """Our tables' built-in chains and ours that `*-save` text declares (`:CHAIN` lines),
    without reading a rule: what to list one by one when the rules are `OutOfOrder`."""
    out: dict[str, list[str]] = {}
    section = ""
    for words in statements(text):
        head = words[0]
        if head.startswith("*"):
            section = head[1:]
        elif head == "COMMIT":
            section = ""
        elif head.startswith(":") and section in OWN_TABLES and _owned(head[1:]):
            out.setdefault(section, []).append(head[1:])
    return out


def parse_chain(text: str, chain: str) -> list[str]:
    """The rule lines of one chain's listing (`iptables -S CHAIN`); a line of another chain
    is `StateUnreadable` (another rule of this chain spelled it)."""
    rules = []
    for words in statements(text):
        if words[0] in ("-N", "-P") and len(words) >= 2 and words[1] == chain:
            continue
        if words[0] != "-A" or len(words) < 3 or words[1] != chain:
            raise StateUnreadable(f"listing of {chain}: {' '.join(words)[:200]!r}")
        rules.append(" ".join(words))
    return rules


def _owned(chain: str) -> bool:
    return chain in BUILTIN_CHAINS or chain in OWN_CHAINS


def wanted_state(family: FamilyRules) -> dict[str, Chains]:
    """What `*-save` shows after applying `family` to a clean netns (inserts resolved)."""
    tables: dict[str, Chains] = {}
    for table in family.tables():
        chains: Chains = {c: [] for c in family.chains(table)}
        for rule in family.rules_in(table):
            lines = chains.setdefault(rule.chain, [])
            pos = rule.position
            line = save_form(rule, family.ipv6)
            lines.insert(pos - 1, line) if pos is not None else lines.append(line)
        tables[table] = chains
    return tables


class DiffState(StrEnum):
    """What a netns holds compared with the wanted rules."""

    CLEAN = "clean"
    """Nothing of ours."""
    IDENTICAL = "identical"
    """Exactly the wanted rules: nothing to do."""
    CONFLICT = "conflict"
    """Some of ours, not the wanted ones."""


@dataclass(frozen=True)
class StateDiff:
    """How the live netns differs from the wanted rules; texts are `-t TABLE <save line>`."""

    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    clean: bool = False
    """The netns has none of our chains at all (so `missing` lists everything wanted)."""
    other_mode: str = ""
    """The other mode (`iptables`, `native nftables`) when the netns also holds its state: a
    node switched between modes (`cni.apply`); that state is listed in `extra`."""

    @property
    def state(self) -> DiffState:
        if self.clean:
            return DiffState.CLEAN
        return DiffState.IDENTICAL if not self.missing and not self.extra else DiffState.CONFLICT

    def __add__(self, other: StateDiff) -> StateDiff:
        return StateDiff(self.missing + other.missing, self.extra + other.extra,
                         self.clean and other.clean, self.other_mode or other.other_mode)


def jump_target(line: str) -> str:
    """The chain a `-A CHAIN ...` line jumps or goes to (its last `-j`/`-g` outside quoted
    values), "" if none."""
    words = statements(line)[0]
    for i in range(len(words) - 2, 1, -1):
        if words[i] in ("-j", "-g"):
            return words[i + 1]
    return ""


def is_ours(line: str, wanted: list[str]) -> bool:
    """A `-A CHAIN ...` line of a built-in chain (of one of our tables) is ours when it jumps
    to one of our chains or is one of the lines we want there (e.g. the DNS conntrack zones in
    raw)."""
    return jump_target(line) in OWN_CHAINS or line in wanted


def _diff_chain(table: str, live: list[str], want: list[str], builtin: bool) -> StateDiff:
    if builtin:
        live_ours = Counter(line for line in live if is_ours(line, want))
        missing = Counter(want) - live_ours
        extra = live_ours - Counter(want)
    else:
        if live == want:
            return StateDiff()
        missing, extra = Counter(want) - Counter(live), Counter(live) - Counter(want)
        if not missing and not extra:  # same rules, wrong order: report the whole chain
            missing, extra = Counter(want), Counter(live)
    return StateDiff(tuple(f"-t {table} {r}" for r in missing.elements()),
                     tuple(f"-t {table} {r}" for r in extra.elements()))


def diff_parsed(live: dict[str, Chains], wanted: FamilyRules) -> StateDiff:
    """Compare parsed `*-save` output of one family (`parse_save`) with the rules we want."""
    want = wanted_state(wanted)
    clean = not any(c in OWN_CHAINS for chains in live.values() for c in chains)
    result = StateDiff(clean=clean)
    for table in sorted(set(live) | set(want)):
        lchains, wchains = live.get(table, {}), want.get(table, {})
        for chain in sorted(set(lchains) | set(wchains)):
            builtin = chain in BUILTIN_CHAINS
            if not builtin and chain not in lchains:
                result += StateDiff(missing=(f"-t {table} -N {chain}",))
            elif not builtin and chain not in wchains:
                result += StateDiff(extra=(f"-t {table} -N {chain}",))
            result += _diff_chain(table, lchains.get(chain, []), wchains.get(chain, []), builtin)
    return StateDiff(result.missing, result.extra, clean)


def diff_state(save_text: str, wanted: FamilyRules) -> StateDiff:
    """Compare `*-save` output of one family with the rules we want for it."""
    return diff_parsed(parse_save(save_text), wanted)


def claimed(live: dict[str, Chains], wanted: FamilyRules) -> tuple[Rule, ...]:
    """The wanted rules the parsed `*-save` text shows as present: what a backend has the
    kernel confirm (`cni.backends.iptables`), since a raw string another rule prints (some
    extensions print names unquoted, newlines included) can spell a line that is not there."""
    out = []
    for table in wanted.tables():
        have = {line for lines in live.get(table, {}).values() for line in lines}
        if have:
            out += [r for r in wanted.rules_in(table) if save_form(r, wanted.ipv6) in have]
    return tuple(out)


Check = tuple[str, str, str]
"""One rule for the kernel to confirm: (table, `CHAIN spec...` as restore takes it, the
`-A CHAIN ...` line iptables-save prints for it)."""


def check_payload(checks: tuple[Check, ...]) -> str:
    """`iptables-restore` text of `-C` lines, in one section per table: the kernel answers
    whether each rule is there (restore fails if one is not)."""
    by_table: dict[str, list[str]] = {}
    for table, spec, _ in checks:
        by_table.setdefault(table, []).append(f"-C {spec}")
    return "".join(f"*{t}\n" + "".join(line + "\n" for line in lines) + "COMMIT\n"
                   for t, lines in by_table.items())


def rule_check(rule: Rule, ipv6: bool) -> Check:
    """The `Check` of one of our own rules."""
    return rule.table, " ".join((rule.chain, *rule.spec)), save_form(rule, ipv6)


def line_check(table: str, line: str) -> Check | None:
    """The `Check` of a `-A CHAIN ...` line as read, or None when restore could not take it
    back (a value spanning lines)."""
    return None if "\n" in line else (table, line[len("-A "):], line)


@dataclass(frozen=True)
class TableReset:
    """What resetting removes from one table: our rules in built-in chains, then our chains."""

    table: str
    deletes: tuple[tuple[str, str], ...]
    """(built-in chain, its `-A CHAIN ...` line as `*-save` printed it), in dump order."""
    chains: tuple[str, ...]
    """Every chain of ours: flushed first (they reference each other), then deleted."""


def reset_plan(save_text: str, wanted: FamilyRules) -> tuple[TableReset, ...]:
    """Pure: what to remove from a netns (its `*-save` dump) so that it holds none of our
    state for this family; tables with nothing of ours are left out."""
    return plan_from(parse_save(save_text), wanted)


def plan_from(live: dict[str, Chains], wanted: FamilyRules) -> tuple[TableReset, ...]:
    """`reset_plan` for text already parsed."""
    want = wanted_state(wanted)
    plan = []
    for table, chains in live.items():
        wanted_here = want.get(table, {})
        deletes = tuple((chain, line) for chain, lines in chains.items()
                        if chain in BUILTIN_CHAINS
                        for line in lines if is_ours(line, wanted_here.get(chain, [])))
        ours = tuple(c for c in chains if c in OWN_CHAINS)
        if deletes or ours:
            plan.append(TableReset(table, deletes, ours))
    return tuple(plan)


def reset_payload(plan: tuple[TableReset, ...]) -> str:
    """The `iptables-restore --noflush` text carrying out `plan` (one transaction per table)."""
    out: list[str] = []
    for t in plan:
        out.append(f"*{t.table}")
        out.extend("-D " + line[len("-A "):] for _, line in t.deletes)
        out.extend(f"-F {c}" for c in t.chains)
        out.extend(f"-X {c}" for c in t.chains)
        out.append("COMMIT")
    return "".join(line + "\n" for line in out)


def replace_payload(plan: tuple[TableReset, ...], wanted: FamilyRules) -> str:
    """The `iptables-restore --noflush` text that turns what `plan` names into exactly
    `wanted`, one commit per table: our rules in built-in chains deleted (`-D`, as read), our
    chains flushed (`-F`), the ones not wanted deleted (`-X`), the missing ones created (`-N`),
    then every wanted rule in payload order. A table's commit is atomic: no packet ever sees it
    half way, so a pod keeps its redirection while it is replaced."""
    by_table = {t.table: t for t in plan}
    out: list[str] = []
    for table in sorted(set(by_table) | set(wanted.tables())):
        step = by_table.get(table, TableReset(table, (), ()))
        want_chains = wanted.chains(table)
        out.append(f"*{table}")
        out.extend("-D " + line[len("-A "):] for _, line in step.deletes)
        out.extend(f"-F {c}" for c in step.chains)
        out.extend(f"-X {c}" for c in step.chains if c not in want_chains)
        out.extend(f"-N {c}" for c in want_chains if c not in step.chains)
        out.extend(r.text() for r in wanted.rules_in(table))
        out.append("COMMIT")
    return "".join(line + "\n" for line in out)
