"""The python-iptables backend: legacy tables programmed in-process through libiptc.

For hosts with no iptables binaries. python-iptables is imported inside the methods only (it
loads libxtables and its extensions, which the restore path never needs). libiptc opens its
socket in the calling thread's netns, so the caller must already be inside the pod netns; table
handles are re-initialised on every use because python-iptables caches them per table name
(a handle from another netns would program the wrong pod).

Rules come from the same parse as CHECK's normaliser (`cni.live_state.parse_rule`), so the
kernel ends up with the same entries as `iptables-legacy-restore` would create, and
`iptables-legacy-save` prints identical text. Per family: every table is built in memory,
then committed one by one; if a later commit fails, what earlier commits created is removed.
A reset finds the rules to delete by their rendered `iptables-save` text, so it removes exactly
what the shared reset plan (made from that same text) names. A replace (`swap`) does the
reset's work and the apply's on one handle per table, so each table changes in one commit.
Each rule is rendered on its own, and a newline inside one (a raw name some extensions print)
is written as `\n`: one rule is one line, and `confirm` finds a rule by its rendered line.
libiptc takes no xtables lock, so it never waits on the host's `/run/xtables.lock`.

Every libiptc operation runs in a forked child (it inherits this thread's netns). libxtables
registers an extension only for the family in use when its `.so` is first loaded, and
python-iptables then aborts the whole process (`target "TPROXY" already registered`, exit 1)
when the other family needs it. A child per operation keeps each process single-family, keeps
the caller's process free of libxtables state, and turns a C-level abort into an error.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import sysconfig
from collections.abc import Callable
from typing import Any

from cni.backends.iptables import IptablesBackend
from cni.backends.node_facts import legacy_table_names
from cni.errors import RulesApplyFailed
from cni.live_state import Check, ParsedRule, TableReset, UnsupportedRule, parse_rule
from cni.ruleset import BUILTIN_CHAINS, FamilyRules, Rule

LIBDIR_CANDIDATES = ("/usr/lib/xtables", "/usr/lib64/xtables", "/lib/xtables",
                     "/usr/local/lib/xtables", "/lib64/xtables")


def find_xtables_libdir() -> str | None:
    """The directory holding `libxt_*.so` (XTABLES_LIBDIR): env, multiarch, then common paths."""
    candidates = [os.environ.get("XTABLES_LIBDIR", "")]
    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch:
        candidates += [f"/usr/lib/{multiarch}/xtables", f"/lib/{multiarch}/xtables"]
    candidates += [*LIBDIR_CANDIDATES, *sorted(glob.glob("/usr/lib/*/xtables"))]
    for path in candidates:
        if path and os.path.isfile(os.path.join(path, "libxt_standard.so")):
            return path
    return None


def bundled_xtables_dir() -> str | None:
    """`<bundle>/xtables` of a frozen build (PyInstaller; see build.spec), else None.

    The frozen plugin ships libip4tc/libip6tc/libxtables and the extensions its rules use, so
    this backend works on hosts with no iptables package at all.
    """
    if not getattr(sys, "frozen", False):
        return None
    base = getattr(sys, "_MEIPASS", None) or os.path.dirname(sys.executable)
    path = os.path.join(base, "xtables")
    return path if os.path.isfile(os.path.join(path, "libxt_standard.so")) else None


def _use_bundled_xtables(path: str) -> None:
    """Point python-iptables at the bundle: libraries, extensions and the libxtables ABI.

    All three come from the bundle or none does: the extensions must match the libxtables
    they were built against, whatever the host has.
    """
    os.environ["XTABLES_LIBDIR"] = path
    os.environ["IPTABLES_LIBDIR"] = path  # python-iptables' search dir for lib{ip4,ip6,xt}*
    for name in os.listdir(path):
        if name.startswith("libxtables.so."):
            os.environ["PYTHON_IPTABLES_XTABLES_VERSION"] = name.removeprefix("libxtables.so.")


def _iptc() -> Any:
    """Import python-iptables, pointing it at the extensions first (else it runs ldconfig)."""
    bundled = bundled_xtables_dir()
    if bundled:
        _use_bundled_xtables(bundled)
    elif "XTABLES_LIBDIR" not in os.environ:
        libdir = find_xtables_libdir()
        if libdir:
            os.environ["XTABLES_LIBDIR"] = libdir
    try:
        import iptc
    except Exception as exc:  # ImportError, XTablesError (no libxtables / extensions)
        raise RulesApplyFailed(f"load python-iptables: {exc}") from exc
    return iptc


class LibiptcBackend(IptablesBackend):
    """libiptc through python-iptables (legacy tables only); needs no iptables binary."""

    def apply(self, family: FamilyRules) -> None:
        if family.rules:
            _forked(self._apply_here, family)

    def delete(self, family: FamilyRules) -> None:
        """Best-effort undo of `family` (used to roll back a family applied moments ago)."""
        _forked(self._delete_here, family)

    def save(self, ipv6: bool) -> str:
        """`iptables-legacy-save`-style text, rendered from libiptc (no binaries needed)."""
        return _forked(self._save_here, ipv6)

    def remove(self, ipv6: bool, plan: tuple[TableReset, ...]) -> None:
        """Deletes the planned rules (found by their `iptables-save` text), then flushes and
        deletes our chains; one libiptc commit per table."""
        _forked(self._remove_here, (ipv6, plan))

    def save_chain(self, ipv6: bool, table: str, chain: str) -> str | None:
        """One chain rendered like `iptables -S CHAIN` (None if it does not exist)."""
        out = _forked(self._chain_here, (ipv6, table, chain))
        return out if out else None

    def _chain_here(self, job: tuple[bool, str, str]) -> str:
        ipv6, name, chain_name = job
        iptc, tables = self._open_existing(ipv6)
        try:
            table = next((t for t in tables if t.name == name), None)
            if table is None or not table.is_chain(chain_name):
                return ""
            rules = iptc.Chain(table, chain_name).rules
            lines = [f"-N {chain_name}"] + [f"-A {chain_name} {_render_rule(table, r)}"
                                             for r in rules]
        finally:
            for table in tables:
                table.close()
        return "".join(line + "\n" for line in lines)

    def confirm(self, ipv6: bool, checks: tuple[Check, ...]) -> bool:
        """Is every line a rule of its chain, rendered on its own?"""
        return _forked(self._confirm_here, (ipv6, checks)) == "yes"

    def swap(self, family: FamilyRules, plan: tuple[TableReset, ...]) -> None:
        """Per table, one handle: our state out and `family` in, then one commit."""
        _forked(self._swap_here, (family, plan))

    def _confirm_here(self, job: tuple[bool, tuple[Check, ...]]) -> str:
        ipv6, checks = job
        iptc, tables = self._open_existing(ipv6)
        by_name = {t.name: t for t in tables}
        try:
            for table_name, spec, line in checks:
                table = by_name.get(table_name)
                chain = spec.split(" ", 1)[0]
                if table is None or not table.is_chain(chain) or not any(
                        f"-A {chain} {_render_rule(table, r)}" == line
                        for r in iptc.Chain(table, chain).rules):
                    return "no"
        finally:
            for table in tables:
                table.close()
        return "yes"

    def _swap_here(self, job: tuple[FamilyRules, tuple[TableReset, ...]]) -> str:
        family, plan = job
        iptc = _iptc()
        steps = {t.table: t for t in plan}
        for name in sorted(set(steps) | set(family.tables())):
            table = self._table(iptc, family.ipv6, name)
            try:
                step = steps.get(name, TableReset(name, (), ()))
                self._delete_lines(iptc, table, step)
                wanted = family.chains(name)
                for chain in step.chains:
                    if table.is_chain(chain):
                        table.flush_entries(chain)
                for chain in step.chains:
                    if chain not in wanted and table.is_chain(chain):
                        table.delete_chain(chain)
                for chain in wanted:
                    if not table.is_chain(chain):
                        table.create_chain(chain)
                self._add_rules(iptc, table, family, name)
                table.commit()
            except (UnsupportedRule, ValueError, AttributeError, iptc.IPTCError,
                    iptc.XTablesError) as exc:
                raise RulesApplyFailed(
                    f"replace table {name} (libiptc) in {self.where}: {exc}",
                    details=family.restore_payload()) from exc
            finally:
                table.close()
        return ""

    def _apply_here(self, family: FamilyRules) -> str:
        iptc = _iptc()
        try:
            built = [self._build_table(iptc, family, t) for t in family.tables()]
        except (UnsupportedRule, ValueError, AttributeError, iptc.IPTCError,
                iptc.XTablesError) as exc:
            raise RulesApplyFailed(f"build rules (libiptc) in {self.where}: {exc}",
                                   details=family.restore_payload()) from exc
        done: list[str] = []
        for name, table in built:
            try:
                table.commit()
            except iptc.IPTCError as exc:
                self._undo(iptc, family, done)
                raise RulesApplyFailed(
                    f"commit table {name} (libiptc) in {self.where}: {exc}",
                    details=family.restore_payload()) from exc
            finally:
                table.close()
            done.append(name)
        return ""

    def _table(self, iptc: Any, ipv6: bool, name: str) -> Any:
        cls = iptc.Table6 if ipv6 else iptc.Table
        table = cls(name, autocommit=False)
        table.refresh()  # drop any cached handle: it may belong to another netns
        return table

    def _build_table(self, iptc: Any, family: FamilyRules, name: str) -> tuple[str, Any]:
        table = self._table(iptc, family.ipv6, name)
        for chain in family.chains(name):
            if table.is_chain(chain):
                table.close()
                raise ValueError(f"chain {chain} already exists in table {name}")
            table.create_chain(chain)
        self._add_rules(iptc, table, family, name)
        return name, table

    def _add_rules(self, iptc: Any, table: Any, family: FamilyRules, name: str) -> None:
        for rule in family.rules_in(name):
            entry = _build_rule(iptc, table, rule, family.ipv6)
            chain = iptc.Chain(table, rule.chain)
            if rule.position is None:
                chain.append_rule(entry)
            else:
                chain.insert_rule(entry, position=rule.position - 1)

    def _undo(self, iptc: Any, family: FamilyRules, tables: list[str]) -> None:
        for name in tables:
            try:
                self._delete_table(iptc, family, name)
            except (iptc.IPTCError, ValueError):
                continue  # best effort: what remains shows up in CHECK

    def _delete_table(self, iptc: Any, family: FamilyRules, name: str) -> None:
        table = self._table(iptc, family.ipv6, name)
        try:
            for rule in reversed(family.rules_in(name)):
                if rule.chain in BUILTIN_CHAINS:
                    iptc.Chain(table, rule.chain).delete_rule(
                        _build_rule(iptc, table, rule, family.ipv6))
            for chain in family.chains(name):
                if table.is_chain(chain):
                    table.flush_entries(chain)
            for chain in family.chains(name):
                if table.is_chain(chain):
                    table.delete_chain(chain)
            table.commit()
        finally:
            table.close()

    def _delete_here(self, family: FamilyRules) -> str:
        self._undo(_iptc(), family, list(family.tables()))
        return ""

    def _save_here(self, ipv6: bool) -> str:
        _, tables = self._open_existing(ipv6)
        try:
            out = [line for table in tables for line in render_table(table)]
        finally:
            for table in tables:
                table.close()
        return "".join(line + "\n" for line in out)

    def _remove_here(self, job: tuple[bool, tuple[TableReset, ...]]) -> str:
        ipv6, plan = job
        iptc, tables = self._open_existing(ipv6)
        by_name = {t.name: t for t in tables}
        try:
            for step in plan:
                table = by_name.get(step.table)
                if table is None:
                    continue  # gone since the plan was made: nothing of ours left in it
                try:
                    self._remove_table(iptc, table, step)
                except iptc.IPTCError as exc:
                    raise RulesApplyFailed(
                        f"reset ISTIO rules (libiptc) in {self.where}: table {step.table}: "
                        f"{exc}") from exc
        finally:
            for table in tables:
                table.close()
        return ""

    def _delete_lines(self, iptc: Any, table: Any, step: TableReset) -> None:
        """Delete the plan's built-in-chain rules, found by their rendered line."""
        for chain_name, line in step.deletes:
            chain = iptc.Chain(table, chain_name)
            rule = next((r for r in chain.rules
                         if f"-A {chain_name} {_render_rule(table, r)}" == line), None)
            if rule is not None:  # else deleted meanwhile: the goal is reached
                chain.delete_rule(rule)

    def _remove_table(self, iptc: Any, table: Any, step: TableReset) -> None:
        self._delete_lines(iptc, table, step)
        for name in step.chains:
            if table.is_chain(name):
                table.flush_entries(name)
        for name in step.chains:
            if table.is_chain(name):
                table.delete_chain(name)
        table.commit()

    def _open_existing(self, ipv6: bool) -> tuple[Any, list[Any]]:
        """python-iptables and a handle on every table that already exists in this netns.

        Only existing tables are opened: opening a legacy table instantiates it, which would
        change what `iptables-legacy-save` shows. All stay open while rules are decoded:
        decoding a jump makes python-iptables ask every table whether the target is a chain,
        and a closed handle would crash libiptc.
        """
        names = legacy_table_names(ipv6)
        if not names:
            return None, []
        iptc = _iptc()
        cls = iptc.Table6 if ipv6 else iptc.Table
        # Tell python-iptables which tables exist so it probes no others (this runs in a
        # throw-away child: the state dies with it).
        cls.existing_table_names.update({n: n in names for n in cls.ALL})
        return iptc, [self._table(iptc, ipv6, name) for name in names]


def _forked(fn: Callable[[Any], str], arg: Any) -> str:
    """Run `fn(arg)` in a forked child (same netns); its str result or its error come back."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller's stack
        os.close(rfd)
        try:
            reply = {"ok": fn(arg)}
        except RulesApplyFailed as exc:
            reply = {"error": exc.msg, "details": exc.details}
        except BaseException as exc:  # noqa: B036 - everything must reach the parent
            reply = {"error": f"libiptc: {type(exc).__name__}: {exc}", "details": ""}
        with os.fdopen(wfd, "w") as w:
            w.write(json.dumps(reply))
        os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd) as r:
        data = r.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RulesApplyFailed(f"libiptc worker died (wait status {status})")
    reply = json.loads(data)
    if "error" in reply:
        raise RulesApplyFailed(reply["error"], details=reply["details"])
    return str(reply["ok"])


def _build_rule(iptc: Any, table: Any, rule: Rule, ipv6: bool) -> Any:
    """A python-iptables Rule equal to what iptables-restore builds from `rule.params`."""
    parsed = parse_rule(rule.spec)
    entry = _rule_class(iptc, ipv6)(table)
    _set_ip(entry, parsed)
    for name, opts in parsed.matches:
        match = entry.create_match(name)
        for opt in opts:
            match.parse(opt.name.lstrip("-"), ("!" if opt.neg else "") + opt.value)
    entry.target = entry.create_target(parsed.target)
    for opt in parsed.target_opts:
        entry.target.parse(opt.name.lstrip("-"), opt.value)
    entry.final_check()
    return entry


_RULE_CLASSES: dict[bool, Any] = {}


def _rule_class(iptc: Any, ipv6: bool) -> Any:
    """Rule subclass that resolves jump targets in its own table only.

    python-iptables decides whether a target is a chain by opening *every* table; in a legacy
    netns that instantiates filter/security/... and `iptables-legacy-save` would then show
    tables the restore backend never touched.
    """
    if ipv6 not in _RULE_CLASSES:
        base = iptc.Rule6 if ipv6 else iptc.Rule

        class OwnTableRule(base):  # type: ignore[misc, valid-type]
            def __init__(self, table: Any) -> None:
                super().__init__()
                self._own_table = table

            @property
            def tables(self) -> list[Any]:
                return [self._own_table]

        _RULE_CLASSES[ipv6] = OwnTableRule
    return _RULE_CLASSES[ipv6]


def _set_ip(entry: Any, parsed: ParsedRule) -> None:
    fields = {"-s": "src", "-d": "dst", "-i": "in_interface", "-o": "out_interface",
              "-p": "protocol"}
    for opt in parsed.ip:
        setattr(entry, fields[opt.name], ("!" if opt.neg else "") + opt.value)


def render_table(table: Any) -> list[str]:
    """One table in `iptables-save` form (libiptc's chain order, no counters)."""
    out = [f"*{table.name}"]
    chains = table.chains
    for chain in chains:
        policy = chain.get_policy().name if table.builtin_chain(chain.name) else "-"
        out.append(f":{chain.name} {policy} [0:0]")
    for chain in chains:
        out.extend(f"-A {chain.name} {_render_rule(table, r)}" for r in chain.rules)
    out.append("COMMIT")
    return out


def _render_rule(table: Any, rule: Any) -> str:
    parts = []
    for flag, value in (("-s", rule.src), ("-d", rule.dst)):
        neg, addr = _split_neg(value)
        if addr not in ("0.0.0.0/0.0.0.0", "::/0"):
            parts.append(f"{neg}{flag} {_prefix(addr)}")
    for flag, value in (("-i", rule.in_interface), ("-o", rule.out_interface)):
        if value:
            neg, name = _split_neg(value)
            parts.append(f"{neg}{flag} {name}")
    neg, proto = _split_neg(rule.protocol or "ip")
    if proto != "ip":
        parts.append(f"{neg}-p {proto}")
    ip = rule.get_ip()
    for match in rule.matches:
        parts.append(f"-m {match.name}{_saved(match, ip)}")
    target = rule.target
    jump = "-g" if target.goto else "-j"
    if target.name in ("ACCEPT", "DROP", "RETURN", "QUEUE") or table.is_chain(target.name):
        parts.append(f"{jump} {target.name}")
    else:
        parts.append(f"{jump} {target.name}{_saved(target, ip)}")
    return " ".join(parts).replace("\n", "\\n")


def _split_neg(value: str) -> tuple[str, str]:
    return ("! ", value[1:]) if value.startswith("!") else ("", value)


def _prefix(addr: str) -> str:
    import ipaddress

    return str(ipaddress.ip_network(addr, strict=False))


def _saved(module: Any, ip: Any) -> str:
    buf = module._get_saved_buf(ip)  # the extension's own save(): iptables-save's text
    return buf.decode().rstrip("\n") if buf else ""
