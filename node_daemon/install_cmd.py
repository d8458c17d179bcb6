"""`istio-cni-node install` and `uninstall`: the installer run once, with the same env as `run`.

Each option is backed by upstream's environment variable (`envvar=`), so a command copied from
the DaemonSet's env just works, and a flag overrides one variable. Options default to None: the
defaults live in one place, `InstallerConfig.from_env`, and `--help` shows them from there.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from installer import InstallerConfig, InstallerConfigError, InstallError
from installer.installer import Installer

# (option, environment variable, help)
INSTALLER_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("--mounted-cni-net-dir", "MOUNTED_CNI_NET_DIR",
     "The host's CNI config dir as mounted here. [default: /host/etc/cni/net.d]"),
    ("--cni-conf-name", "CNI_CONF_NAME",
     "Primary config file to chain into (its .conf/.conflist twin is accepted). "
     "Default: the first valid .conf/.conflist/.json, as the kubelet picks it."),
    ("--chained-cni-plugin", "CHAINED_CNI_PLUGIN",
     "true: add istio-cni to the primary config; false: write our own file. [default: true]"),
    ("--cni-agent-run-dir", "CNI_AGENT_RUN_DIR",
     "Where the plugin's kubeconfig goes (same path on host and here). "
     "[default: /var/run/istio-cni]"),
    ("--kubeconfig-mode", "KUBECONFIG_MODE", "Octal mode of the kubeconfig. [default: 0600]"),
    ("--cni-bin-source-dir", "CNI_BIN_SOURCE_DIR",
     "Binaries to install (every file in it). [default: /opt/cni/bin]"),
    ("--cni-bin-target-dirs", "CNI_BIN_TARGET_DIRS",
     "Comma-separated host bin dirs as mounted here. [default: /host/opt/cni/bin]"),
    ("--exclude-namespaces", "EXCLUDE_NAMESPACES",
     "Comma-separated namespaces the plugin leaves alone."),
    ("--plugin-log-level", "PLUGIN_LOG_LEVEL",
     "debug, info, warn, error or none. [default: info]"),
)


def installer_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The env-backed options shared by install and uninstall."""
    for flag, env, text in reversed(INSTALLER_OPTIONS):
        func = click.option(flag, env, envvar=env, default=None, metavar="VALUE",
                            help=f"{text} (env {env})")(func)
    return func


def build_config(options: dict[str, str | None]) -> InstallerConfig:
    """os.environ, overridden by the flags given, through the one typed parser."""
    env = dict(os.environ)
    env.update({k: v for k, v in options.items() if v is not None})
    try:
        return InstallerConfig.from_env(env)
    except InstallerConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.command()
@installer_options
@click.option("--wait-timeout", type=float, default=None, metavar="SECONDS",
              help="Give up if no primary CNI config appears in time. [default: wait forever]")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def install_command(wait_timeout: float | None, verbose: bool, **options: str | None) -> None:
    """Install istio-cni on this node once: binaries, kubeconfig, config entry.

    Waits for the primary CNI's config to appear when there is none yet. Safe to run
    again: it only rewrites what differs. Settings come from the same environment variables
    as `istio-cni-node run`; a flag overrides its variable.
    """
    _logging(verbose)
    cfg = build_config(options)
    try:
        Installer(cfg).install(timeout=wait_timeout)
    except InstallError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("istio-cni installed", err=True)


@click.command()
@installer_options
@click.option("--keep-plugin-if-upgrading", is_flag=True,
              help="Apply UNINSTALL_ON_SHUTDOWN (as `run` does on SIGTERM): keep the plugin "
                   "unless the DaemonSet is being deleted. Default: always remove it.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def uninstall_command(keep_plugin_if_upgrading: bool, verbose: bool,
                      **options: str | None) -> None:
    """Remove istio-cni from this node: restore the primary CNI config exactly as it was,
    delete the kubeconfig and the plugin binary.

    Safe to run again, and after a crash: it finds what a previous run left
    (backups named *.istio-cni-backup in the CNI config dir) and finishes the job.
    """
    _logging(verbose)
    cfg = build_config(options)
    installer = Installer(cfg)
    keep = keep_plugin_if_upgrading and installer.keep_plugin_on_shutdown()
    try:
        installer.uninstall(keep_plugin=keep)
    except InstallError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("istio-cni kept in place (upgrade)" if keep else "istio-cni removed", err=True)


def register(cli: click.Group) -> None:
    """Add `install` and `uninstall` to the istio-cni-node group."""
    cli.add_command(install_command, name="install")
    cli.add_command(uninstall_command, name="uninstall")
