"""install-cni: puts the plugin on the node (binaries, kubeconfig, conflist entry); takes it off.

Layout, edge to core: `config` (settings from the environment) -> `discovery` (which config the
runtime uses) -> `conflist` (pure text edits) -> `primary` (edits on disk + the backup that makes
uninstall exact) / `kubeconfig_writer` / `binaries` -> `installer` (the `Installer` the daemon
drives) -> `watcher` (the inotify loop). Every write goes through `atomic`.
"""

from installer.config import InstallerConfig, InstallerConfigError
from installer.installer import Installer, InstallerMetrics, InstallError, NoPrimaryConfig

__all__ = [
    "InstallError",
    "Installer",
    "InstallerConfig",
    "InstallerConfigError",
    "InstallerMetrics",
    "NoPrimaryConfig",
]
