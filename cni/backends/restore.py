"""The `iptables-restore` backend: the host's binaries, run inside the pod netns.

The caller has entered the pod netns on this thread; child processes inherit it. Binary choice
follows upstream's `DetectIptablesVersion`, per family (`ip6tables-*` for IPv6):
forced `nft`/`legacy`; else legacy if `iptables-legacy-save` shows rules (>= 3 lines) in this
netns; else nft if usable (`iptables-nft-save` runs and a probe rule can be added and deleted,
proving kernel support); else plain `iptables`.

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

import os
import re
import subprocess
import sys
from dataclasses import dataclass

from cni.backends.iptables import IptablesBackend
from cni.errors import RulesApplyFailed
from cni.live_state import Check, TableReset, check_payload, replace_payload, reset_payload
from cni.ruleset import OWN_CHAINS, FamilyRules

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
    """The host's `iptables-restore` / `iptables-save` (see the module docstring)."""

    def __init__(self, force: str | None = None, where: str = "") -> None:
        if force not in (None, "nft", "legacy"):
            raise ValueError(f"force must be nft or legacy, not {force!r}")
        super().__init__(where)
        self.force = force
        self._flavors: dict[bool, Flavor] = {}
        self._dumps: dict[bool, str] = {}

    def flavor(self, ipv6: bool) -> Flavor:
        """Detect (once per instance) which binary serves this family here."""
        if ipv6 not in self._flavors:
            self._flavors[ipv6] = self._detect("ip6tables" if ipv6 else "iptables", ipv6)
        return self._flavors[ipv6]

    def _detect(self, prefix: str, ipv6: bool) -> Flavor:
        if self.force:
            return self._forced(f"{prefix}-{self.force}", self.force == "legacy")
        legacy = run([f"{prefix}-legacy-save"])
        if legacy.rc == 0 and legacy.out.count("\n") >= 3:
            self._dumps[ipv6] = legacy.out
            return self._forced(f"{prefix}-legacy", True)
        nft = run([f"{prefix}-nft-save"])
        if nft.rc == 0 and self._probe(f"{prefix}-nft"):
            self._dumps[ipv6] = nft.out
            return Flavor(f"{prefix}-nft", False, (0, 0, 0))
        return self._forced(prefix, None)

    def _forced(self, binary: str, legacy: bool | None) -> Flavor:
        """Version (and, for plain `iptables`, the variant) from `X-save --version`."""
        r = run([f"{binary}-save", "--version"])
        if r.rc == 127:
            raise RulesApplyFailed(f"detect iptables in {self.where}: {binary}-save not found")
        version = parse_version(r.out) if "unrecognized option" not in r.err else None
        if legacy is None:
            legacy = "nf_tables" not in r.out
        return Flavor(binary, legacy, version or (0, 0, 0))

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
        flavor = self.flavor(family.ipv6)
        self._dumps.pop(family.ipv6, None)
        r = run(self.restore_argv(flavor), stdin=payload, env=self._env(flavor))
        if r.rc != 0:
            raise RulesApplyFailed(
                f"apply {flavor.restore_bin} ({flavor.label}) in {self.where}: exit {r.rc}: "
                f"{r.err.strip()}", details=payload)

    def remove(self, ipv6: bool, plan: tuple[TableReset, ...]) -> None:
        """One `iptables-restore --noflush` of `-D`/`-F`/`-X` lines: per table, all or nothing."""
        payload = reset_payload(plan)
        flavor = self.flavor(ipv6)
        self._dumps.pop(ipv6, None)
        r = run(self.restore_argv(flavor), stdin=payload, env=self._env(flavor))
        if r.rc != 0:
            raise RulesApplyFailed(
                f"reset ISTIO rules with {flavor.restore_bin} ({flavor.label}) in {self.where}: "
                f"exit {r.rc}: {r.err.strip()}", details=payload)

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
        payload = replace_payload(plan, family)
        flavor = self.flavor(family.ipv6)
        self._dumps.pop(family.ipv6, None)
        r = run(self.restore_argv(flavor), stdin=payload, env=self._env(flavor))
        if r.rc != 0:
            raise RulesApplyFailed(
                f"replace ISTIO rules with {flavor.restore_bin} ({flavor.label}) in "
                f"{self.where}: exit {r.rc}: {r.err.strip()}", details=payload)

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
