"""`istio-cni-node run`: build the config from the environment, wire signals, call `agent.run`.

The environment is read once: every setting of the agent and of the installer is parsed once
(`read_configs`) and both configs are built from those values, so the two can never disagree on
a variable they share (`CNI_AGENT_RUN_DIR`, `FORCE_IPTABLES_BINARY`). SIGTERM and SIGINT set
the stop event, so the agent shuts down cleanly (uninstalling the plugin) within the pod's grace
period. The installer is built by `installer_factory`, the real `installer.Installer` unless a
test passes another.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import click

from cni.settings import read_settings
from installer import config as installer_config
from installer.config import InstallerConfig
from node_daemon import config as daemon_config
from node_daemon.config import ConfigError, DaemonConfig

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the agent's modules load only when `run` runs
    from node_daemon.agent import Installer


def read_configs(env: Mapping[str, str]) -> tuple[DaemonConfig, InstallerConfig]:
    """The agent's and the installer's configs from one reading of `env`."""
    settings = {s.name: s for s in (*daemon_config.SETTINGS, *installer_config.SETTINGS)}
    values = read_settings(env, settings.values())
    return DaemonConfig.from_values(values), InstallerConfig.from_values(values)


def default_installer(cfg: InstallerConfig) -> Installer:
    """The real `installer.Installer`."""
    from installer import Installer

    return Installer(cfg)


def run_daemon(cfg: DaemonConfig, installer_cfg: InstallerConfig,
               installer_factory: Callable[[InstallerConfig], Installer],
               stop: threading.Event) -> int:
    from node_daemon import agent
    from node_daemon.kubeapi import ApiError, PodApi, load_api_client
    from node_daemon.shutdown import ShutdownPolicy

    api = None
    if not cfg.refusal:
        try:
            api = PodApi(load_api_client(cfg.kubeconfig or None))
        except ApiError as exc:
            if cfg.repair.enabled:
                raise click.ClickException(f"repair controller: {exc.message}") from exc
            # the rest is optional: without API access the agent runs without it
            logging.getLogger(__name__).warning("no API access: %s", exc.message)
    policy = ShutdownPolicy(installer_cfg.uninstall_on_shutdown, installer_cfg.pod_namespace,
                            installer_cfg.daemonset_name)
    return agent.run(cfg, installer_factory(installer_cfg), api, stop, policy=policy)


@click.command("run")
@click.option("--log-level", default=None,
              type=click.Choice(list(daemon_config.RUN_LOG_LEVELS)),
              help="Log level. [default: LOG_LEVEL, else info]")
def run_command(log_level: str | None) -> None:
    """Run the node agent (the DaemonSet's main process) until SIGTERM.

    Installs the plugin and keeps it installed, repairs broken pods, serves /healthz and
    /readyz (READINESS_PORT, 8000) and /metrics (MONITORING_PORT, 15014), and receives the
    plugin's logs on CNI_AGENT_RUN_DIR/log.sock. Configured by environment variables: see
    docs/node-daemon.md.
    """
    try:
        cfg, installer_cfg = read_configs(os.environ)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    level = log_level or cfg.log_level
    logging.basicConfig(level=getattr(logging, level.upper().replace("WARN", "WARNING")),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(cfg, installer_cfg, os.environ)


def serve(cfg: DaemonConfig, installer_cfg: InstallerConfig, env: Mapping[str, str]) -> None:
    """Run the agent until SIGTERM/SIGINT and exit with its status (`run` and `install-cni`),
    after saying which of upstream's variables in `env` it does not use."""
    for level, message in daemon_config.ignored_notes(env, cfg):
        log.log(level, "%s", message)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        code = run_daemon(cfg, installer_cfg, default_installer, stop)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    except ImportError as exc:
        raise click.ClickException(f"installer unavailable: {exc}") from exc
    # The shutdown ended within the grace period; the interpreter's own teardown (collecting
    # clients whose connections an unanswering API server still holds) can take seconds more,
    # and the kubelet's SIGKILL does not wait. Everything that matters is on disk: leave now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
