"""`istio-cni-node run`: build the config from the environment, wire signals, call `agent.run`.

SIGTERM and SIGINT set the stop event, so the agent shuts down cleanly (uninstalling the
plugin) within the pod's grace period. The installer is built by `installer_factory`, the
real `installer.Installer` unless a test passes another.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from node_daemon.config import ConfigError, DaemonConfig


def default_installer(env: dict[str, str]) -> Any:
    """The installer engineer's `installer.Installer`, configured from the same environment."""
    from installer import Installer  # type: ignore[attr-defined]
    from installer.config import InstallerConfig

    return Installer(InstallerConfig.from_env(env))


def run_daemon(env: dict[str, str], installer_factory: Callable[[dict[str, str]], Any],
               stop: threading.Event) -> int:
    from node_daemon import agent
    from node_daemon.kubeapi import ApiError, PodApi, load_api_client

    cfg = DaemonConfig.from_env(env)
    api = None
    if cfg.repair.enabled:
        try:
            api = PodApi(load_api_client(env.get("KUBECONFIG") or None))
        except ApiError as exc:
            raise click.ClickException(f"repair controller: {exc.message}") from exc
    return agent.run(cfg, installer_factory(env), api, stop)


@click.command("run")
@click.option("--log-level", envvar="LOG_LEVEL", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warn", "error"]), help="Log level.")
def run_command(log_level: str) -> None:
    """Run the node agent (the DaemonSet's main process) until SIGTERM.

    Installs the plugin and keeps it installed, repairs broken pods, serves /healthz and
    /readyz (READINESS_PORT, 8000) and /metrics (MONITORING_PORT, 15014), and receives the
    plugin's logs on CNI_AGENT_RUN_DIR/log.sock. Configured by environment variables: see
    docs/node-daemon.md.
    """
    logging.basicConfig(level=getattr(logging, log_level.upper().replace("WARN", "WARNING")),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        code = run_daemon(dict(os.environ), default_installer, stop)
    except (ConfigError, ValueError) as exc:  # ours, or the installer's config errors
        raise click.ClickException(str(exc)) from exc
    except ImportError as exc:
        raise click.ClickException(f"installer unavailable: {exc}") from exc
    sys.exit(code)
