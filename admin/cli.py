"""istio-cni-node: the admin CLI and the DaemonSet entry point (click).

Each command turns its options into a call of a library function and formats the result;
behaviour lives in the library modules. Errors are one clear line on stderr and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from admin.context import kubeconfig_option, output_option
from admin.install_cmd import register as register_install_commands
from admin.repair_cmd import drift_command, repair_command
from admin.rules_cmd import rules_command
from admin.run_cmd import run_command
from admin.version_cmd import version_command
from cni.errors import CNIError
from cni.fileread import read_file_at_most
from cni.podlookup import MAX_POD_BYTES

POD_FILE_TIMEOUT = 60.0
"""Seconds `explain --pod-file` waits for the whole file: ample for a pipe from kubectl, and a
bound for a FIFO nobody writes to."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Istio CNI node agent (sidecar mode): install the plugin, repair pods, explain rules."""


@cli.command()
@click.argument("target", required=False, metavar="[NAMESPACE/POD]")
@click.option("--pod-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The pod as Kubernetes JSON (e.g. kubectl get pod P -o json > pod.json), "
                   "instead of fetching NAMESPACE/POD from the API.")
@click.option("--ipv6", is_flag=True, help="Render as if the pod had an IPv6 address "
              "(--pod-file only; a fetched pod's own IP decides).")
@click.option("--native-nftables", is_flag=True, help="Render native nftables mode's "
              "transaction (--pod-file only; a fetched pod uses NATIVE_NFTABLES, as the "
              "installer writes it into the plugin config).")
@output_option(("text", "restore", "json"), aliases=("--format",),
               help_text="restore: only what is fed to iptables-restore (or, in native "
               "nftables mode, to nft -f). --format is the old name of this option.")
@kubeconfig_option
def explain(target: str | None, pod_file: Path | None, ipv6: bool, native_nftables: bool,
            output: str, kubeconfig: str | None) -> None:
    """Why a pod is or is not redirected, and the rules the plugin would program for it.

    \b
    istio-cni-node explain shop/cart-7d9f        # live: decision, repair verdict, and
                                                 # (on the pod's node) the live netns check
    istio-cni-node explain --pod-file pod.json   # offline: decision and rules only
    """
    from admin.explain import explain_pod, format_json, format_restore, format_text, not_a_pod

    if (target is None) == (pod_file is None):
        raise click.UsageError("give either NAMESPACE/POD or --pod-file")
    if target is not None:
        _explain_live(target, output, kubeconfig)
        return
    assert pod_file is not None
    pod = _read_pod_file(pod_file)
    try:
        ex = explain_pod(pod, ipv6=ipv6, native_nftables=native_nftables)
    except CNIError as exc:  # not the shape of a Pod
        raise click.ClickException(f"{pod_file}: {exc.msg}") from exc
    problem = not_a_pod(pod)
    if problem:
        raise click.ClickException(f"{pod_file}: {problem}")
    formatter = {"text": format_text, "restore": format_restore, "json": format_json}[output]
    click.echo(formatter(ex), nl=False)
    if ex.error:
        sys.exit(1)


def _read_pod_file(path: Path) -> Any:
    """The JSON document in `path`: read bounded in size (a pod's worth) and in time (a FIFO
    nobody writes to), parsed with a bound on nesting; every failure one `ClickException`."""
    try:
        data = read_file_at_most(path, MAX_POD_BYTES, timeout=POD_FILE_TIMEOUT)
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return json.loads(data)
    except RecursionError:
        raise click.ClickException(f"{path} is not JSON we read: nested too deeply") from None
    except ValueError as exc:
        raise click.ClickException(f"{path} is not JSON: {exc}") from exc


def _explain_live(target: str, fmt: str, kubeconfig: str | None) -> None:
    from admin.context import daemon_config, pod_api
    from admin.explain import format_restore
    from admin.explain_live import explain_live, format_live_json, format_live_text
    from node_daemon.kubeapi import ApiError
    from node_daemon.netns_finder import NetnsFinder

    namespace, sep, name = target.partition("/")
    if not sep or not namespace or not name:
        raise click.UsageError(f"{target!r}: expected NAMESPACE/POD")
    cfg = daemon_config()
    api = pod_api(kubeconfig)
    try:
        pod = api.get_pod(namespace, name)
    except ApiError as exc:
        raise click.ClickException(exc.message) from exc
    on_this_node = (pod.get("spec") or {}).get("nodeName") == cfg.repair.node_name
    finder = NetnsFinder(cfg.host_proc) if on_this_node and os.geteuid() == 0 else None
    try:
        report = explain_live(pod, cfg.repair, finder, cfg.rule_mode)
    except CNIError as exc:  # the API's answer is not the shape of a Pod
        raise click.ClickException(f"{target}: {exc.msg}") from exc
    if fmt == "restore":
        click.echo(format_restore(report.explanation), nl=False)
    else:
        click.echo((format_live_json if fmt == "json" else format_live_text)(report), nl=False)
    if report.explanation.error:
        sys.exit(1)


cli.add_command(rules_command, name="rules")
register_install_commands(cli)
cli.add_command(repair_command, name="repair")
cli.add_command(drift_command, name="drift")
cli.add_command(run_command, name="run")
cli.add_command(version_command, name="version")


def main() -> None:
    cli(prog_name="istio-cni-node")


if __name__ == "__main__":
    main()
