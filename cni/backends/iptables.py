"""What both iptables backends share: `program`, `check`, `reset` and `replace` over per-family
primitives.

A subclass says how to read a family's tables (`save`: `iptables-save` text), have the kernel
confirm rules the text shows (`confirm`), apply a family's rules atomically (`apply`), roll back
a family applied moments ago (`delete`), carry out a reset plan (`remove`) and replace our
state with a family's rules in one commit per table (`swap`). Everything else (reading the
text, comparing with the live state, refusing conflicts, all-or-nothing across families, what
a reset or a replace removes) is decided here once, so the two backends cannot disagree on it.

Reading (`_read`): the text is parsed as iptables-save frames it (`cni.live_state`), and the
rules we want that it shows are confirmed by the kernel (`-C`) before they count as present:
a raw name printed by another rule can spell a line of ours that is not there. A rule the text
shows and the kernel does not hold is reported missing. A rule line out of its chain's place
(spelled inside another chain's rules) makes our tables be read one chain at a time
(`save_chain`), so what another chain spells is never read as ours.
"""

from __future__ import annotations

from cni.errors import RulesApplyFailed, RulesConflict
from cni.live_state import (
    Chains,
    Check,
    DiffState,
    OutOfOrder,
    StateDiff,
    StateUnreadable,
    TableReset,
    claimed,
    declared,
    diff_parsed,
    line_check,
    parse_chain,
    parse_save,
    plan_from,
    rule_check,
)
from cni.ruleset import FamilyRules, RuleSet


class IptablesBackend:
    """A `cni.backends.Backend` over iptables tables; subclasses supply the primitives."""

    native_nftables = False

    def __init__(self, where: str = "") -> None:
        self.where = where or "current netns"

    # --- the Backend interface -----------------------------------------------------------
    def program(self, ruleset: RuleSet) -> bool:
        """Families already identical are left alone; any other state of ours is a conflict
        before anything changes; clean families are applied, and if a later one fails the
        earlier ones are removed again, so a pod is never half-programmed."""
        diffs = [(fam, self._read(fam)[1]) for fam in ruleset.families()]
        self._refuse_conflicts([d for _, d in diffs])
        todo = [fam for fam, d in diffs if d.state == DiffState.CLEAN and fam.rules]
        applied: list[FamilyRules] = []
        for fam in todo:
            try:
                self.apply(fam)
            except RulesApplyFailed:
                for done in reversed(applied):
                    self.delete(done)
                raise
            applied.append(fam)
        return bool(todo)

    def check(self, ruleset: RuleSet) -> StateDiff:
        diffs = [self._read(fam)[1] for fam in ruleset.families()]
        total = sum(diffs, StateDiff())
        return StateDiff(total.missing, total.extra, all(d.clean for d in diffs))

    def reset(self, ruleset: RuleSet) -> None:
        for fam in ruleset.families():
            plan = self._held(fam.ipv6, plan_from(self._read(fam)[0], fam))
            if plan:
                self.remove(fam.ipv6, plan)

    def replace(self, ruleset: RuleSet) -> bool:
        """Make each family hold exactly its rules, whatever of ours it holds now, in one
        `swap` (one commit per table): the pod is never without redirection on the way.
        Families already identical are left alone; True when anything changed."""
        changed = False
        for fam in ruleset.families():
            live, diff = self._read(fam)
            if diff.state == DiffState.IDENTICAL or (diff.clean and not fam.rules):
                continue
            self.swap(fam, self._held(fam.ipv6, plan_from(live, fam)))
            changed = True
        return changed

    # --- reading ---------------------------------------------------------------------------
    def _read(self, fam: FamilyRules) -> tuple[dict[str, Chains], StateDiff]:
        """The family's live state of ours (parsed) and its diff with `fam`, with what the
        text shows of `fam` confirmed by the kernel."""
        try:
            text = self.save(fam.ipv6)
            try:
                live = parse_save(text)
            except OutOfOrder:
                live = self._chain_by_chain(fam.ipv6, text)
        except StateUnreadable as exc:
            raise RulesApplyFailed(f"read the rules of {self.where}: {exc}") from exc
        diff = diff_parsed(live, fam)
        shown = claimed(live, fam)
        checks = tuple(rule_check(r, fam.ipv6) for r in shown)
        if not checks or self.confirm(fam.ipv6, checks):
            return live, diff
        absent = tuple(f"-t {c[0]} {c[2]}" for c in checks if not self.confirm(fam.ipv6, (c,)))
        return live, StateDiff(diff.missing + absent, diff.extra, False)

    def _chain_by_chain(self, ipv6: bool, text: str) -> dict[str, Chains]:
        """Our tables read one chain at a time (`save_chain`): a listing of one chain holds
        no other chain's rules, so no other chain's raw names."""
        live: dict[str, Chains] = {}
        for table, chains in declared(text).items():
            live[table] = {}
            for chain in chains:
                listing = self.save_chain(ipv6, table, chain)
                if listing is not None:
                    live[table][chain] = parse_chain(listing, chain)
        return live

    def _held(self, ipv6: bool, plan: tuple[TableReset, ...]) -> tuple[TableReset, ...]:
        """`plan` without the built-in-chain lines the kernel does not hold (a `-D` of one
        would fail the whole commit)."""
        checks = [(t.table, line) for t in plan for _, line in t.deletes]
        every = [line_check(table, line) for table, line in checks]
        if all(every) and (not every or self.confirm(ipv6, tuple(c for c in every if c))):
            return plan
        return tuple(
            TableReset(t.table, tuple(
                (chain, line) for chain, line in t.deletes
                if (c := line_check(t.table, line)) is not None and self.confirm(ipv6, (c,))),
                t.chains)
            for t in plan)

    # --- primitives (one family, the current netns) ------------------------------------------
    def save(self, ipv6: bool) -> str:
        """The `iptables-save` text of the current netns for this backend's tables."""
        raise NotImplementedError

    def save_chain(self, ipv6: bool, table: str, chain: str) -> str | None:
        """One chain's rules as `iptables -S CHAIN` prints them; None if there is no such
        chain."""
        raise NotImplementedError

    def confirm(self, ipv6: bool, checks: tuple[Check, ...]) -> bool:
        """Does the kernel hold every one of these rules? (`check_payload`)"""
        raise NotImplementedError

    def apply(self, family: FamilyRules) -> None:
        """Program `family` atomically (all or nothing) in the current netns."""
        raise NotImplementedError

    def delete(self, family: FamilyRules) -> None:
        """Best-effort removal of `family` (rollback of a family applied moments ago)."""
        raise NotImplementedError

    def remove(self, ipv6: bool, plan: tuple[TableReset, ...]) -> None:
        """Carry out a reset plan made from this backend's own `save` text, one atomic
        transaction per table; `RulesApplyFailed` if the kernel refuses."""
        raise NotImplementedError

    def swap(self, family: FamilyRules, plan: tuple[TableReset, ...]) -> None:
        """Remove what `plan` names and program `family`, one atomic commit per table
        (`cni.live_state.replace_payload`); `RulesApplyFailed` if the kernel refuses."""
        raise NotImplementedError

    def _refuse_conflicts(self, diffs: list[StateDiff]) -> None:
        bad = [d for d in diffs if d.state == DiffState.CONFLICT]
        if not bad:
            return
        lines = [f"missing: {r}" for d in bad for r in d.missing]
        lines += [f"extra: {r}" for d in bad for r in d.extra]
        raise RulesConflict(
            f"program {self.where}: netns already has ISTIO_* rules that differ from this "
            f"pod's ({sum(len(d.missing) for d in bad)} missing, "
            f"{sum(len(d.extra) for d in bad)} extra)",
            details="\n".join(lines))
