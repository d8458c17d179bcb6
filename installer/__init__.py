"""install-cni: puts the plugin on the node (binaries, kubeconfig, conflist entry); takes it off.

Layout, edge to core: `config` (settings from the environment) -> `discovery` (which config the
runtime uses) -> `conflist` (pure text edits) -> `primary` (edits on disk + the backup that makes
uninstall exact) / `kubeconfig_writer` / `binaries` -> `owned` (our own conflist, following the
primary: ISTIO_OWNED_CNI_CONFIG) -> `watcher` (the inotify loop) -> `installer` (the
`Installer` the daemon drives). `results` holds the outcomes the last two share;
every write goes through `atomic`.
"""

from installer.config import InstallerConfig, InstallerConfigError
from installer.installer import Installer, InstallerMetrics
from installer.results import InstallError, InstallResult, NoPrimaryConfig

__all__ = [
    "InstallError",
    "Installer",
    "InstallerConfig",
    "InstallerConfigError",
    "InstallerMetrics",
    "InstallResult",
    "NoPrimaryConfig",
]
