"""`istio-cni-node install` and `uninstall`: the installer run once, with the same env as `run`.

Each option is backed by upstream's environment variable (`envvar=`), so a command copied from
the DaemonSet's env just works, and a flag overrides one variable. Options default to None: each
option's help and default come from its setting's definition (`installer.config`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from admin.context import printable
from cni.settings import Setting
from installer import InstallerConfig, InstallerConfigError, InstallError, config
from installer.installer import Installer

# the settings that get a flag: --mounted-cni-net-dir for MOUNTED_CNI_NET_DIR, and so on
INSTALLER_OPTIONS: tuple[Setting, ...] = (
    config.MOUNTED_CNI_NET_DIR, config.CNI_CONF_NAME, config.CHAINED_CNI_PLUGIN,
    config.CNI_AGENT_RUN_DIR, config.KUBECONFIG_MODE, config.CNI_BIN_SOURCE_DIR,
    config.CNI_BIN_TARGET_DIRS, config.EXCLUDE_NAMESPACES, config.PLUGIN_LOG_LEVEL,
)


def _plain(markdown: str) -> str:
    return markdown.replace("**", "").replace("`", "")


def installer_options(func: Callable[..., Any] | None = None, *,
                      unused: tuple[Setting, ...] = ()) -> Any:
    """The env-backed options shared by install and uninstall, documented by their settings.

    `unused`: settings the command does not act on; their flags are still accepted (a command
    line copied from `install` keeps working) but not listed in `--help`, which shows only
    what changes the command's behaviour."""
    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for setting in reversed(INSTALLER_OPTIONS):
            flag = "--" + setting.name.lower().replace("_", "-")
            shown = _plain(setting.shown())
            func = click.option(flag, setting.name, envvar=setting.name, default=None,
                                metavar="VALUE", hidden=setting in unused,
                                help=f"{_plain(setting.doc)} [default: {shown}] "
                                     f"(env {setting.name})")(func)
        return func

    return decorate(func) if func is not None else decorate


def build_config(options: dict[str, str | None]) -> InstallerConfig:
    """os.environ, overridden by the flags given, through the one typed parser."""
    env = dict(os.environ)
    env.update({k: v for k, v in options.items() if v is not None})
    try:
        return InstallerConfig.from_env(env)
    except InstallerConfigError as exc:
        raise click.ClickException(printable(exc)) from None


def missing_host_dirs(cfg: InstallerConfig) -> list[str]:
    """The host directories `uninstall` works in that are not there, each with its setting.

    The installer's own uninstall takes a missing directory as nothing left to remove (right
    for the agent's shutdown); for a person it is almost always a wrong path, and "removed"
    would be a false answer."""
    dirs = [(config.MOUNTED_CNI_NET_DIR.name, cfg.mounted_cni_net_dir)]
    dirs += [(config.CNI_BIN_TARGET_DIRS.name, d) for d in cfg.cni_bin_target_dirs]
    return [f"{name} {path} is not a directory" if path.exists() else
            f"{name} {path} does not exist" for name, path in dirs if not path.is_dir()]


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
    again: it only rewrites what differs. Exits 1 when the config the runtime loads is not
    ours (an earlier file wins), naming that file. Settings come from the same environment variables
    as `istio-cni-node run`; a flag overrides its variable.
    """
    _logging(verbose)
    cfg = build_config(options)
    installer = Installer(cfg)
    try:
        installer.install(timeout=wait_timeout)
    except InstallError as exc:
        raise click.ClickException(printable(exc)) from None
    if installer.not_loaded:  # in place, yet pods would start without it: not a success
        raise click.ClickException(printable(f"istio-cni installed but not in use: "
                                             f"{installer.not_loaded}"))
    click.echo("istio-cni installed", err=True)


@click.command()
@installer_options(unused=(config.KUBECONFIG_MODE, config.EXCLUDE_NAMESPACES,
                           config.PLUGIN_LOG_LEVEL))
@click.option("--keep-plugin-if-upgrading", is_flag=True,
              help="Apply UNINSTALL_ON_SHUTDOWN (as `run` does on SIGTERM): keep the plugin "
                   "unless the DaemonSet is being deleted. Default: always remove it.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def uninstall_command(keep_plugin_if_upgrading: bool, verbose: bool,
                      **options: str | None) -> None:
    """Remove istio-cni from this node: restore the primary CNI config exactly as it was,
    delete the kubeconfig and the plugin binary.

    Safe to run again, and after a crash: it finds what a previous run left
    (backups named *.istio-cni-backup in the CNI config dir) and finishes the job. The CNI
    config dir and the bin dirs must exist: a missing one is an error (exit 1), nothing is
    changed.
    """
    _logging(verbose)
    cfg = build_config(options)
    missing = missing_host_dirs(cfg)
    if missing:
        raise click.ClickException(printable(
            f"nothing removed: {'; '.join(missing)} (not this node's directories as mounted "
            "here? set them with the flags or the environment)"))
    installer = Installer(cfg)
    keep = keep_plugin_if_upgrading and _is_upgrade(cfg)
    try:
        installer.uninstall(keep_plugin=keep)
    except InstallError as exc:
        raise click.ClickException(printable(exc)) from None
    click.echo("istio-cni kept in place (upgrade)" if keep else "istio-cni removed", err=True)


def _is_upgrade(cfg: config.InstallerConfig) -> bool:
    """UNINSTALL_ON_SHUTDOWN as `run` applies it on SIGTERM (`node_daemon.shutdown`), with this
    pod's service account, within the default grace period."""
    import time

    from node_daemon.kubeapi import ApiError, load_api_client
    from node_daemon.permissions import UNKNOWN, Need, review
    from node_daemon.selfapi import AccessQuestion, SelfApi
    from node_daemon.shutdown import DEFAULT_GRACE_SECONDS, Clock, ShutdownPolicy, decide

    policy = ShutdownPolicy(cfg.uninstall_on_shutdown, cfg.pod_namespace, cfg.daemonset_name)
    api, permissions = None, UNKNOWN
    if policy.uninstall == "auto":
        try:
            api = SelfApi(load_api_client())
        except ApiError as exc:
            logging.getLogger(__name__).warning("no API access: %s", exc.message)
        else:
            permissions = review(api, [
                Need(policy.daemonset_question(), "telling an upgrade from an uninstall"),
                Need(AccessQuestion("get", "pods"), "a grant to watch for withdrawal")])
    clock = Clock(time.monotonic() + DEFAULT_GRACE_SECONDS)
    return decide(policy, api, permissions, clock).keep


def register(cli: click.Group) -> None:
    """Add `install` and `uninstall` to the istio-cni-node group."""
    cli.add_command(install_command, name="install")
    cli.add_command(uninstall_command, name="uninstall")
