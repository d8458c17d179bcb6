"""Rule backends: how a `FamilyRules` gets into the pod netns (the caller has entered it).

Two implementations of one tiny `RuleApplier` protocol: `restore` runs the host's
`iptables-restore` (nft or legacy, chosen like upstream) and `libiptc` programs legacy tables
in-process through python-iptables (hosts without iptables binaries). Both must leave the same
`iptables-save` output. Hot path: nothing heavy is imported here; each backend module is
imported only when selected, and python-iptables only inside the libiptc backend's methods.

A backend instance is meant for one visit to one netns: it caches the binary detection (and
the `*-save` dump that came with it) between `save()` and `apply()`.
"""

from __future__ import annotations

from typing import Protocol

from cni.ruleset import FamilyRules
from cni.settings import BACKENDS


class RuleApplier(Protocol):
    def apply(self, family: FamilyRules) -> None:
        """Program `family` atomically (all or nothing) in the current netns."""

    def save(self, ipv6: bool) -> str:
        """The `iptables-save` text of the current netns for this backend's tables."""

    def delete(self, family: FamilyRules) -> None:
        """Best-effort removal of `family` (rollback of a family applied moments ago)."""


def select_backend(name: str, where: str = "") -> RuleApplier:
    """The backend called `name` (one of BACKENDS); `where` (the netns path) goes in messages."""
    if name == "python-iptables":
        from cni.backends.libiptc import LibiptcBackend

        return LibiptcBackend(where)
    if name in ("auto", "nft", "legacy"):
        from cni.backends.restore import RestoreBackend

        return RestoreBackend(None if name == "auto" else name, where)
    raise ValueError(f"unknown rule backend {name!r}: expected one of {', '.join(BACKENDS)}")
