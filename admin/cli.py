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

import click

from admin.context import kubeconfig_option
from admin.install_cmd import register as register_install_commands
from admin.repair_cmd import drift_command, repair_command
from admin.rules_cmd import rules_command
from admin.run_cmd import run_command
from cni import __version__ as VERSION
from cni.errors import CNIError
from cni.fileread import read_file_at_most
from cni.podlookup import MAX_POD_BYTES


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Istio CNI node agent (sidecar mode): install the plugin, repair pods, explain rules."""


@cli.command()
def version() -> None:
    """Print the version of istio-cni-node and the plugin it ships."""
    click.echo(f"istio-cni-node {VERSION} (Python {sys.version.split()[0]})")


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
@click.option("--format", "--output", "-o", "fmt",
              type=click.Choice(["text", "restore", "json"]), default="text",
              show_default=True, help="restore: only what is fed to iptables-restore (or, in "
              "native nftables mode, to nft -f).")
@kubeconfig_option
def explain(target: str | None, pod_file: Path | None, ipv6: bool, native_nftables: bool,
            fmt: str, kubeconfig: str | None) -> None:
    """Why a pod is or is not redirected, and the rules the plugin would program for it.

    \b
    istio-cni-node explain shop/cart-7d9f        # live: decision, repair verdict, and
                                                 # (on the pod's node) the live netns check
    istio-cni-node explain --pod-file pod.json   # offline: decision and rules only
    """
    from admin.explain import explain_pod, format_json, format_restore, format_text

    if (target is None) == (pod_file is None):
        raise click.UsageError("give either NAMESPACE/POD or --pod-file")
    if target is not None:
        _explain_live(target, fmt, kubeconfig)
        return
    assert pod_file is not None
    try:
        pod = json.loads(read_file_at_most(pod_file, MAX_POD_BYTES))
    except OSError as exc:
        raise click.ClickException(f"cannot read {pod_file}: {exc.strerror}") from exc
    except ValueError as exc:
        raise click.ClickException(f"{pod_file} is not JSON: {exc}") from exc
    if not isinstance(pod, dict) or pod.get("kind", "Pod") != "Pod":
        raise click.ClickException(f"{pod_file} does not hold a Pod object")
    try:
        ex = explain_pod(pod, ipv6=ipv6, native_nftables=native_nftables)
    except CNIError as exc:  # not the shape of a Pod
        raise click.ClickException(f"{pod_file}: {exc.msg}") from exc
    formatter = {"text": format_text, "restore": format_restore, "json": format_json}[fmt]
    click.echo(formatter(ex), nl=False)
    if ex.error:
        sys.exit(1)


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


def main() -> None:
    cli(prog_name="istio-cni-node")


if __name__ == "__main__":
    main()
