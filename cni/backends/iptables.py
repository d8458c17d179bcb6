"""What both iptables backends share: `program`, `check` and `reset` over per-family primitives.

A subclass says how to read a family's tables (`save`: `iptables-save` text), apply a family's
rules atomically (`apply`), roll back a family applied moments ago (`delete`) and carry out a
reset plan (`remove`). Everything else (comparing with the live state, refusing conflicts,
all-or-nothing across families, what a reset removes) is decided here once, from the `*-save`
text, so the two backends cannot disagree on it.
"""

from __future__ import annotations

from cni.errors import RulesApplyFailed, RulesConflict
from cni.live_state import DiffState, StateDiff, TableReset, diff_state, reset_plan
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
        diffs = [(fam, diff_state(self.save(fam.ipv6), fam)) for fam in ruleset.families()]
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
        diffs = [diff_state(self.save(fam.ipv6), fam) for fam in ruleset.families()]
        total = sum(diffs, StateDiff())
        return StateDiff(total.missing, total.extra, all(d.clean for d in diffs))

    def reset(self, ruleset: RuleSet) -> None:
        for fam in ruleset.families():
            plan = reset_plan(self.save(fam.ipv6), fam)
            if plan:
                self.remove(fam.ipv6, plan)

    # --- primitives (one family, the current netns) ------------------------------------------
    def save(self, ipv6: bool) -> str:
        """The `iptables-save` text of the current netns for this backend's tables."""
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
