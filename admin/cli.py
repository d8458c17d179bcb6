"""istio-cni-node: the admin CLI and the DaemonSet entry point (click).

Each command turns its options into a call of a library function and formats the result;
behaviour lives in the library modules. Errors are one clear line on stderr and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from admin.context import FilePath, kubeconfig_option, object_name, output_option, printable
from admin.install_cmd import register as register_install_commands
from admin.repair_cmd import drift_command, repair_command
from admin.rules_cmd import rules_command
from admin.run_cmd import run_command
from admin.version_cmd import version_command
from cni.errors import CNIError, NetnsReturnFailed
from cni.fileread import read_file_at_most
from cni.podlookup import MAX_POD_BYTES
from node_daemon.fatal import EXIT_STUCK_NETNS

POD_FILE_TIMEOUT = 60.0
"""Seconds `explain --pod-file` waits for the whole file: ample for a pipe from kubectl, and a
bound for a FIFO nobody writes to."""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Istio CNI node agent (sidecar mode): install the plugin, repair pods, explain rules."""


@cli.command()
@click.argument("target", required=False, metavar="[NAMESPACE/POD]")
@click.option("--pod-file", type=FilePath(), default=None,
              help="The pod as Kubernetes JSON, as `kubectl get pod P -o json` writes it (a "
                   "file or a pipe; at most 8 MiB, read within 60 s), instead of fetching "
                   "NAMESPACE/POD from the API. [default: none, give NAMESPACE/POD]")
@click.option("--ipv6", is_flag=True, help="Render as if the pod had an IPv6 address "
              "(--pod-file only; a fetched pod's own IP decides).")
@click.option("--native-nftables", is_flag=True, help="Render native nftables mode's "
              "transaction (--pod-file only; a fetched pod uses NATIVE_NFTABLES, as the "
              "installer writes it into the plugin config).")
@output_option(("text", "restore", "json"), aliases=("--format",),
               help_text="restore: only what is fed to iptables-restore (or, in native "
               "nftables mode, to nft -f). --format is the old name of this option.")
@kubeconfig_option
def explain(target: str | None, pod_file: str | None, ipv6: bool, native_nftables: bool,
            output: str, kubeconfig: str | None) -> None:
    """Why a pod is or is not redirected, and the rules the plugin would program for it.

    \b
    istio-cni-node explain shop/cart-7d9f        # live: decision, repair verdict, and
                                                 # (on the pod's node) the live netns check
    istio-cni-node explain --pod-file pod.json   # offline: decision and rules only

    Exits 1 if the plugin's ADD would fail for the pod (an invalid annotation), or when the
    pod cannot be read: a file that is not one Pod object is an error, not "NOT REDIRECTED".
    """
    from admin.explain import explain_pod, format_json, format_restore, format_text, not_a_pod

    if (target is None) == (pod_file is None):
        raise click.UsageError("give either NAMESPACE/POD or --pod-file")
    if target is not None:
        _explain_live(target, output, kubeconfig)
        return
    assert pod_file is not None
    pod = _read_pod_file(pod_file)
    problem = not_a_pod(pod)
    if problem and isinstance(pod, dict) and pod.get("kind", "Pod") != "Pod":
        raise click.ClickException(f"{printable(pod_file)}: {problem}")  # another kind
    try:  # the plugin's parser names a field of the wrong shape; then what else is missing
        ex = explain_pod(pod, ipv6=ipv6, native_nftables=native_nftables)
    except CNIError as exc:
        raise click.ClickException(f"{printable(pod_file)}: {exc.msg}") from exc
    if problem:
        raise click.ClickException(f"{printable(pod_file)}: {problem}")
    formatter = {"text": format_text, "restore": format_restore, "json": format_json}[output]
    click.echo(formatter(ex), nl=False)
    if ex.error:
        sys.exit(1)


def _read_pod_file(path: str) -> Any:
    """The JSON document in `path`: read bounded in size (a pod's worth) and in time (a FIFO
    nobody writes to), parsed with a bound on nesting; every failure one `ClickException`."""
    shown = printable(path)
    try:
        data = read_file_at_most(path, MAX_POD_BYTES, timeout=POD_FILE_TIMEOUT)
    except OSError as exc:
        raise click.ClickException(f"cannot read {shown}: {exc.strerror}") from exc
    try:
        return json.loads(data)
    except RecursionError:
        raise click.ClickException(f"{shown} is not JSON we read: nested too deeply") from None
    except ValueError as exc:
        raise click.ClickException(f"{shown} is not JSON: {exc}") from exc


def _explain_live(target: str, fmt: str, kubeconfig: str | None) -> None:
    from admin.context import daemon_config, pod_api
    from admin.explain import format_restore
    from admin.explain_live import explain_live, format_live_json, format_live_text
    from node_daemon.kubeapi import ApiError
    from node_daemon.netns_finder import NetnsFinder

    namespace, sep, name = target.partition("/")
    if not sep or not namespace or not name:
        raise click.UsageError(f"{target!r}: expected NAMESPACE/POD")
    try:
        object_name(namespace, "namespace", label=True)
        object_name(name, "pod")
    except click.BadParameter as exc:
        raise click.UsageError(f"NAMESPACE/POD: {exc.message}") from None
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
    # An argument that is not UTF-8 comes in with lone surrogates (surrogateescape); echoed
    # back in an error it must not make the write itself fail with a traceback.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    try:
        cli(prog_name="istio-cni-node")
    except NetnsReturnFailed as exc:  # repair, drift, explain: this thread is in a pod's netns
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_STUCK_NETNS)


if __name__ == "__main__":
    main()
