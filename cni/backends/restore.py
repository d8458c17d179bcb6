"""The `iptables-restore` backend: the host's binaries, run inside the pod netns.

The caller has entered the pod netns on this thread; child processes inherit it. Binary choice
follows upstream's `DetectIptablesVersion`, per family (`ip6tables-*` for IPv6):
forced `nft`/`legacy`; else legacy if `iptables-legacy-save` shows rules (>= 3 lines) in this
netns; else nft if usable (`iptables-nft-save` runs and a probe rule can be added and deleted,
proving kernel support); else plain `iptables`. Cold (the plugin's process), each of these is a
process per pod. Warm (`facts`: the node agent), the same choice is made from the node's facts
learned once and the netns's read in-process (`cni.backends.node_facts`), and a netns holding
no table of the chosen kind is known to save as nothing, so its ADD is the restore alone; an
operation that fails after using them is retried once, cold (`_revalidating`).

Locking: legacy writers take an xtables lock, by default the host's `/run/xtables.lock`, which
kube-proxy holds for long stretches. We point `XTABLES_LOCKFILE` (iptables >= 1.8.6) at
`/proc/self/ns/net`: opened by the child, it is the pod netns's own nsfs inode, the same inode
upstream locks via the CNI_NETNS path, so the lock is per pod and never the host's. `--wait=30`
is passed where supported (legacy >= 1.6.2). nft needs no lock. In a pod's own user namespace
(`cni.userns`) the lock still opens: `/proc/self/ns/net` is the child's own, and the child keeps
host uid 0, which owns the host's `/run/xtables.lock` that iptables < 1.8.6 would take instead.

Apply is one `iptables-restore --noflush` per family with the payload on stdin: the kernel takes
it whole or not at all; so is a reset (`-D` our jumps, `-F`/`-X` our chains), and so is a
replace (`swap`: the reset's lines, then `-N` and the rules, each table one commit). What the
save text shows of our rules is confirmed with one restore of `-C` lines (`confirm`; legacy
with `--test`, so it evaluates them without committing; nft commits nothing for `-C`). No shell
is ever involved (argv lists only).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from cni.backends.iptables import IptablesBackend
from cni.backends.node_facts import legacy_table_names, nft_tables
from cni.errors import RulesApplyFailed
from cni.live_state import (
    Check,
    StateDiff,
    TableReset,
    check_payload,
    replace_payload,
    reset_payload,
)
from cni.ruleset import OWN_CHAINS, FamilyRules, RuleSet

if TYPE_CHECKING:
    from cni.backends.node_facts import NodeFacts

log = logging.getLogger("istio-cni")
T = TypeVar("T")

POD_LOCKFILE = "/proc/self/ns/net"
ABSENT = re.compile(r"line \d+ failed")
"""What iptables-restore says when a `-C` rule is not there (legacy adds nothing more)."""
WAIT_SINCE = (1, 6, 2)
LOCKFILE_ENV_SINCE = (1, 8, 6)
PROBE_RULE = ("-t", "filter", "-A", "INPUT", "-p", "255", "-j", "DROP")
VERSION_RE = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class Flavor:
    """One detected iptables variant for one family."""

    binary: str
    """e.g. `iptables-legacy`; `-save`/`-restore` are derived from it."""
    legacy: bool
    version: tuple[int, int, int]

    @property
    def save_bin(self) -> str:
        return f"{self.binary}-save"

    @property
    def restore_bin(self) -> str:
        return f"{self.binary}-restore"

    @property
    def label(self) -> str:
        return "legacy" if self.legacy else "nft"


@dataclass(frozen=True)
class Result:
    rc: int
    out: str
    err: str


def host_env(env: dict[str, str] | None) -> dict[str, str] | None:
    """The environment for the host's binaries. A frozen (PyInstaller) plugin runs with its
    bundle on LD_LIBRARY_PATH; the host's iptables must load the host's libraries, so the
    bootloader's saved original (LD_LIBRARY_PATH_ORIG) is put back, or the variable dropped."""
    if not getattr(sys, "frozen", False):
        return env
    env = dict(os.environ if env is None else env)
    original = env.pop("LD_LIBRARY_PATH_ORIG", None)
    if original:
        env["LD_LIBRARY_PATH"] = original
    else:
        env.pop("LD_LIBRARY_PATH", None)
    return env


def run(argv: list[str], stdin: str | None = None, env: dict[str, str] | None = None) -> Result:
    """Run argv (no shell); a missing binary is rc 127 like a shell would report it."""
    try:
        p = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                           env=host_env(env), check=False)
    except FileNotFoundError:
        return Result(127, "", f"{argv[0]}: not found")
    return Result(p.returncode, p.stdout, p.stderr)


def parse_version(text: str) -> tuple[int, int, int] | None:
    m = VERSION_RE.search(text)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


class RestoreBackend(IptablesBackend):
    """The host's `iptables-restore` / `iptables-save` (see the module docstring); with
    `facts`, warm: the node's facts kept there, the netns's read in-process
    (`cni.backends.node_facts`), every decision the same as the cold way's."""

    def __init__(self, force: str | None = None, where: str = "",
                 facts: NodeFacts | None = None) -> None:
        if force not in (None, "nft", "legacy"):
            raise ValueError(f"force must be nft or legacy, not {force!r}")
        super().__init__(where)
        self.force = force
        self.facts = facts
        """Where the node's facts are kept and learned (None: cold, as the plugin is)."""
        self._warm = facts is not None
        """Whether kept facts and in-process reads may be used (off for a retry)."""
        self._warm_used = False
        """Whether anything so far came from them rather than a process: what makes a failure
        worth detecting again (`_revalidating`)."""
        self._flavors: dict[bool, Flavor] = {}
        self._dumps: dict[bool, str] = {}

    # --- the Backend interface: a warm failure is retried once, cold ------------------------
    def program(self, ruleset: RuleSet) -> bool:
        return self._revalidating("program", super().program, ruleset)

    def check(self, ruleset: RuleSet) -> StateDiff:
        return self._revalidating("check", super().check, ruleset)

    def reset(self, ruleset: RuleSet) -> None:
        return self._revalidating("reset", super().reset, ruleset)

    def replace(self, ruleset: RuleSet) -> bool:
        return self._revalidating("replace", super().replace, ruleset)

    def _revalidating(self, what: str, op: Callable[[RuleSet], T], ruleset: RuleSet) -> T:
        """`op`; if it failed after using kept facts or in-process reads, the node's facts are
        forgotten, and `op` runs once more with everything detected by processes, as the
        plugin does (learning the node's facts again). Only `RulesApplyFailed`: a conflict is a
        decision on the state read, which the warm read gets exactly as the cold one. `op`
        leaves nothing behind when it fails (all or nothing), so the retry starts clean."""
        try:
            return op(ruleset)
        except RulesApplyFailed as exc:
            if self.facts is None or not self._warm_used:
                raise
            log.warning("%s of %s with the node's kept iptables facts failed (%s): detecting "
                        "again and retrying once", what, self.where, exc.msg)
            self.facts.forget()
        self._warm = self._warm_used = False
        self._flavors.clear()
        self._dumps.clear()
        return op(ruleset)

    # --- detection -----------------------------------------------------------------------------
    def flavor(self, ipv6: bool) -> Flavor:
        """Detect (once per instance) which binary serves this family here."""
        if ipv6 not in self._flavors:
            self._flavors[ipv6] = self._detect("ip6tables" if ipv6 else "iptables", ipv6)
        return self._flavors[ipv6]

    def _detect(self, prefix: str, ipv6: bool) -> Flavor:
        if self.force:
            return self._forced(f"{prefix}-{self.force}", self.force == "legacy")
        if self._legacy_tables(ipv6) is not False:
            legacy = run([f"{prefix}-legacy-save"])
            if legacy.rc == 0 and legacy.out.count("\n") >= 3:
                self._dumps[ipv6] = legacy.out
                return self._forced(f"{prefix}-legacy", True)
        if self._nft_usable(prefix, ipv6):
            return Flavor(f"{prefix}-nft", False, (0, 0, 0))
        return self._forced(prefix, None)

    def _legacy_tables(self, ipv6: bool) -> bool | None:
        """Warm: whether this netns has legacy tables (False: the legacy save would print
        nothing, so it is not run); None when cold or unreadable (the save decides)."""
        if not self._warm:
            return None
        try:
            names = legacy_table_names(ipv6)
        except OSError:
            return None
        self._warm_used = True
        return bool(names)

    def _nft_usable(self, prefix: str, ipv6: bool) -> bool:
        """Upstream's test: `<prefix>-nft-save` runs here and the probe rule goes in and out.
        Warm, a node's answer once known is kept; its save is then run only when the state is
        read (`save`). Learned: "usable", and "not installed"."""
        known = self.facts.nft_usable(prefix) if self._warm and self.facts else None
        if known is not None:
            self._warm_used = True
            return known
        nft = run([f"{prefix}-nft-save"])
        usable = nft.rc == 0 and self._probe(f"{prefix}-nft")
        if usable:
            self._dumps[ipv6] = nft.out
        if self.facts is not None and (usable or nft.rc == 127):
            self.facts.learn_nft(prefix, usable)
        return usable

    def _forced(self, binary: str, legacy: bool | None) -> Flavor:
        """Version (and, for plain `iptables`, the variant) from `X-save --version` (warm: once
        per binary)."""
        known = self.facts.version(binary) if self._warm and self.facts else None
        if known is not None:
            self._warm_used = True
            version, says_legacy = known
            return Flavor(binary, says_legacy if legacy is None else legacy, version)
        r = run([f"{binary}-save", "--version"])
        if r.rc == 127:
            raise RulesApplyFailed(f"detect iptables in {self.where}: {binary}-save not found")
        version = parse_version(r.out) if "unrecognized option" not in r.err else None
        says_legacy = "nf_tables" not in r.out
        if self.facts is not None:
            self.facts.learn_version(binary, version or (0, 0, 0), says_legacy)
        return Flavor(binary, says_legacy if legacy is None else legacy, version or (0, 0, 0))

    def _holds_no_tables(self, flavor: Flavor, ipv6: bool) -> bool:
        """Warm: this netns has no table the flavour's save would print, so that save is
        empty (`cni.backends.node_facts`)."""
        if not self._warm or self.facts is None:
            return False
        if flavor.legacy:
            empty = self._legacy_tables(ipv6) is False
        else:
            empty = nft_tables(ipv6) is False
        self._warm_used = self._warm_used or empty
        return empty

    def _probe(self, binary: str) -> bool:
        """Kernel support: can a never-matching rule (protocol 255) be added, then deleted?"""
        added = run([binary, *PROBE_RULE], env=self._env(None))
        if added.rc != 0 or "does not exist" in added.err:
            return False
        delete = list(PROBE_RULE)
        delete[2] = "-D"
        run([binary, *delete], env=self._env(None))
        return True

    def _env(self, flavor: Flavor | None) -> dict[str, str]:
        env = dict(os.environ)
        if flavor is None or (flavor.legacy and flavor.version >= LOCKFILE_ENV_SINCE):
            env["XTABLES_LOCKFILE"] = POD_LOCKFILE
        return env

    def save(self, ipv6: bool) -> str:
        flavor = self.flavor(ipv6)
        if ipv6 in self._dumps:  # the dump detection already took, still current
            return self._dumps[ipv6]
        if self._holds_no_tables(flavor, ipv6):
            return ""  # what the save prints for a netns with no table of its kind
        r = run([flavor.save_bin])
        if r.rc != 0:
            raise RulesApplyFailed(
                f"read {flavor.save_bin} ({flavor.label}) in {self.where}: exit {r.rc}: "
                f"{r.err.strip()}")
        self._dumps[ipv6] = r.out
        return r.out

    def restore_argv(self, flavor: Flavor) -> list[str]:
        argv = [flavor.restore_bin, "--noflush"]
        if flavor.legacy and flavor.version >= WAIT_SINCE:
            argv.append("--wait=30")
        return argv

    def apply(self, family: FamilyRules) -> None:
        payload = family.restore_payload()
        if not payload:
            return
        self._restore(family.ipv6, payload, "apply")

    def remove(self, ipv6: bool, plan: tuple[TableReset, ...]) -> None:
        """One `iptables-restore --noflush` of `-D`/`-F`/`-X` lines: per table, all or nothing."""
        self._restore(ipv6, reset_payload(plan), "reset ISTIO rules with")

    def save_chain(self, ipv6: bool, table: str, chain: str) -> str | None:
        """`iptables -t TABLE -S CHAIN`; None when it fails (no such chain)."""
        flavor = self.flavor(ipv6)
        r = run([flavor.binary, "-t", table, "-S", chain], env=self._env(flavor))
        return r.out if r.rc == 0 else None

    def confirm(self, ipv6: bool, checks: tuple[Check, ...]) -> bool:
        """One `iptables-restore` of `-C` lines: exit 0 when the kernel holds every rule."""
        flavor = self.flavor(ipv6)
        argv = self.restore_argv(flavor) + (["--test"] if flavor.legacy else [])
        r = run(argv, stdin=check_payload(checks), env=self._env(flavor))
        if r.rc == 0:
            return True
        if r.rc == 1 and ABSENT.search(r.err):
            return False
        raise RulesApplyFailed(
            f"confirm rules with {flavor.restore_bin} ({flavor.label}) in {self.where}: exit "
            f"{r.rc}: {r.err.strip()}", details=check_payload(checks))

    def swap(self, family: FamilyRules, plan: tuple[TableReset, ...]) -> None:
        """One `iptables-restore --noflush`: per table, our state out and `family` in, in one
        commit."""
        self._restore(family.ipv6, replace_payload(plan, family), "replace ISTIO rules with")

    def _restore(self, ipv6: bool, payload: str, doing: str) -> None:
        """One `iptables-restore --noflush` of `payload` (the family's saved dump is stale
        after it, whatever its outcome); a failure names `doing`, the tool and the netns."""
        flavor = self.flavor(ipv6)
        self._dumps.pop(ipv6, None)
        r = run(self.restore_argv(flavor), stdin=payload, env=self._env(flavor))
        if r.rc != 0:
            raise RulesApplyFailed(
                f"{doing} {flavor.restore_bin} ({flavor.label}) in {self.where}: exit {r.rc}: "
                f"{r.err.strip()}", details=payload)

    def delete(self, family: FamilyRules) -> None:
        """Best-effort undo of `family` (jump rules out of built-in chains, then our chains).

        Used only to roll back a family applied moments ago; errors are ignored because the
        goal is to leave as little as possible, and what remains shows up in CHECK.
        """
        flavor = self.flavor(family.ipv6)
        env = self._env(flavor)
        for argv in undo_commands(family):
            run([flavor.binary, *argv], env=env)


def undo_commands(family: FamilyRules) -> list[list[str]]:
    """Upstream's `UndoRules` order: built-in-chain rules deleted in reverse, then -F, then -X."""
    cmds: list[list[str]] = []
    for rule in reversed(family.rules):
        if rule.chain in OWN_CHAINS:
            continue
        cmds.append(["-t", rule.table, "-D", rule.chain, *rule.spec])
    for table in family.tables():
        cmds.extend(["-t", table, "-F", chain] for chain in family.chains(table))
        cmds.extend(["-t", table, "-X", chain] for chain in family.chains(table))
    return cmds
