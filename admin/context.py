"""What every admin command that looks at a node needs: its config and a Kubernetes API client.

The admin commands run either inside the DaemonSet pod (`kubectl exec ... istio-cni-node repair`)
or on a host. They read the agent's own settings, so they act on the pods the agent would;
`daemon_config` falls back to /proc when the pod's HOST_PROC mount is not there. Both turn a bad
setting or an unreachable API into a one-line click error instead of a traceback.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from node_daemon.config import ConfigError, DaemonConfig
from node_daemon.kubeapi import ApiError

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL_RE = re.compile(_DNS_LABEL)
_DNS_SUBDOMAIN_RE = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")


def object_name(text: str, what: str, label: bool = False) -> str:
    """`text` if it is a valid Kubernetes object name, else a one-line `BadParameter`.

    Nodes and pods are named by DNS-1123 subdomains (at most 253 characters), namespaces by
    DNS-1123 labels (at most 63). Checked here so a typo is a clear error, not an API 400 or
    an empty list because a field selector matched nothing."""
    pattern, limit = (_DNS_LABEL_RE, 63) if label else (_DNS_SUBDOMAIN_RE, 253)
    if len(text) > limit or not pattern.fullmatch(text):
        shown = text if len(text) <= 80 else text[:80] + "..."
        kind = ("a DNS-1123 label: lower-case letters, digits and '-'" if label else
                "a DNS-1123 subdomain: lower-case letters, digits, '-' and '.'")
        raise click.BadParameter(f"{shown!r} is not a {what} name ({kind}, at most {limit} "
                                 "characters)")
    return text


def printable(text: object) -> str:
    """`text` safe to print on any terminal: a byte of a path or an argument that is not UTF-8
    (a lone surrogate once decoded) is shown escaped (`\\udcff`) instead of failing the write."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


class FilePath(click.Path):
    """`click.Path` for a file to read, which also refuses what no file name can hold: a NUL
    byte, text that does not encode to the file system's bytes (click's own check would raise
    ValueError from `os.stat`)."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        try:
            encoded = os.fsencode(value)
        except UnicodeEncodeError:  # not from argv (whose bytes always encode back)
            self.fail(f"{printable(repr(value))} is not a file name", param, ctx)
        if b"\x00" in encoded:
            self.fail(f"{printable(repr(value))} contains a NUL byte, which no path can",
                      param, ctx)
        return super().convert(value, param, ctx)


kubeconfig_option = click.option(
    "--kubeconfig", envvar="KUBECONFIG", type=FilePath(), default=None,
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
        raise click.ClickException(printable(exc.message)) from exc
