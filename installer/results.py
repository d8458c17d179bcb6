"""How an install ends: the result labels of `istio_cni_installs_total`, the errors, and what
one reconcile pass changed.

Its own module so that both the installer and its watch loop import it and neither imports
the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path


class InstallResult(StrEnum):
    """Upstream's `result` label of `istio_cni_installs_total`; the value is the label text."""

    SUCCESS = "SUCCESS"
    COPY_BINARIES_FAILURE = "COPY_BINARIES_FAILURE"
    CREATE_KUBECONFIG_FAILURE = "CREATE_KUBECONFIG_FAILURE"
    CREATE_CNI_CONFIG_FAILURE = "CREATE_CNI_CONFIG_FAILURE"


class InstallError(Exception):
    """Installing or uninstalling failed; `result` is the metric label it counts as."""

    def __init__(self, message: str,
                 result: InstallResult = InstallResult.CREATE_CNI_CONFIG_FAILURE) -> None:
        super().__init__(message)
        self.result = result


class NoPrimaryConfig(InstallError):
    """Chained mode and no valid CNI config in net.d (yet): not an error, a wait."""


@dataclass(frozen=True)
class Reconciled:
    """What one pass changed."""

    binaries: bool = False
    kubeconfig: bool = False
    config: bool = False
    """Our entry (or our own file) was put (back) in place: someone else had removed it."""
    config_path: Path | None = None
    followed: bool = False
    """Our own conflist was rewritten because the primary's changed (not a repair)."""
    not_loaded: str = ""
    """Why the runtime does not run istio-cni although our files are in place (another file
    wins libcni's choice, or the one it loads does not chain us), naming that file; "" when
    it does. Not ready while set."""

    @property
    def changed(self) -> bool:
        return self.binaries or self.kubeconfig or self.config or self.followed
