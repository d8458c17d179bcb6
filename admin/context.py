"""What every admin command that looks at a node needs: its config and a Kubernetes API client.

The admin commands run either inside the DaemonSet pod (`kubectl exec ... istio-cni-node repair`)
or on a host. They read the agent's own settings, so they act on the pods the agent would;
`daemon_config` falls back to /proc when the pod's HOST_PROC mount is not there. Both turn a bad
setting or an unreachable API into a one-line click error instead of a traceback.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from node_daemon.config import ConfigError, DaemonConfig
from node_daemon.kubeapi import ApiError

kubeconfig_option = click.option(
    "--kubeconfig", envvar="KUBECONFIG", type=click.Path(dir_okay=False), default=None,
    help="Kubeconfig file (default: in-cluster service account, then ~/.kube/config).")


def output_option(choices: tuple[str, ...], help_text: str = "",
                  aliases: tuple[str, ...] = ()) -> Any:
    """The output format option, one name for every command that has one: `--output`/`-o`,
    like kubectl's. (`rules` has none: there `-o` is istio-iptables' own flag.)"""
    return click.option("--output", "-o", *aliases, "output", type=click.Choice(choices),
                        default=choices[0], show_default=True,
                        help=help_text or "Output format.")


def daemon_config() -> DaemonConfig:
    """The agent's config from this process's environment, usable outside the DaemonSet pod."""
    try:
        cfg = DaemonConfig.from_env(os.environ)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if not cfg.host_proc.exists():  # run on a host rather than in the DaemonSet pod
        cfg = replace(cfg, host_proc=Path("/proc"))
    return cfg


def pod_api(kubeconfig: str | None) -> Any:
    """A `PodApi` from `kubeconfig` (None: in-cluster, then ~/.kube/config)."""
    from node_daemon.kubeapi import PodApi, load_api_client

    try:
        return PodApi(load_api_client(kubeconfig))
    except ApiError as exc:
        raise click.ClickException(exc.message) from exc
