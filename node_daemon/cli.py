"""istio-cni-node: the admin CLI and the DaemonSet entry point (click).

Each command turns its options into a call of a library function and formats the result;
behaviour lives in the library modules. Errors are one clear line on stderr and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from node_daemon.rules_cmd import rules_command

VERSION = "0.1.0"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Istio CNI node agent (sidecar mode): install the plugin, repair pods, explain rules."""


@cli.command()
def version() -> None:
    """Print the version of istio-cni-node and the plugin it ships."""
    click.echo(f"istio-cni-node {VERSION} (Python {sys.version.split()[0]})")


@cli.command()
@click.option("--pod-file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The pod as Kubernetes JSON (e.g. kubectl get pod P -o json > pod.json).")
@click.option("--ipv6", is_flag=True, help="Render as if the pod had an IPv6 address.")
@click.option("--format", "fmt", type=click.Choice(["text", "restore", "json"]), default="text",
              show_default=True, help="restore: only the iptables-restore payloads.")
def explain(pod_file: Path, ipv6: bool, fmt: str) -> None:
    """Why a pod is or is not redirected, and the rules the plugin would program for it."""
    from node_daemon.explain import explain_pod, format_json, format_restore, format_text

    try:
        pod = json.loads(pod_file.read_text())
    except OSError as exc:
        raise click.ClickException(f"cannot read {pod_file}: {exc.strerror}") from exc
    except ValueError as exc:
        raise click.ClickException(f"{pod_file} is not JSON: {exc}") from exc
    if not isinstance(pod, dict) or pod.get("kind", "Pod") != "Pod":
        raise click.ClickException(f"{pod_file} does not hold a Pod object")
    ex = explain_pod(pod, ipv6=ipv6)
    formatter = {"text": format_text, "restore": format_restore, "json": format_json}[fmt]
    click.echo(formatter(ex), nl=False)
    if ex.error:
        sys.exit(1)


cli.add_command(rules_command, name="rules")


def main() -> None:
    cli(prog_name="istio-cni-node")


if __name__ == "__main__":
    main()
