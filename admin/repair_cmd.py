"""`istio-cni-node repair` and `drift`: one-shot admin passes over pods, no daemon needed.

`repair_once` lists the pods (this node's, another node's or all), applies the repair
controller's own `diagnose` and, unless dry-run, its own actions, and returns one row per broken
pod. `format_rows` is pure. Repair in place works only for pods on the node the command runs on
(it enters their netns); elsewhere those rows say so and change nothing.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

import click

from admin.context import (
    daemon_config,
    kubeconfig_option,
    object_name,
    output_option,
    pod_api,
)
from node_daemon.actions import Action, ActionResult, Actions, Reporter, Result, pod_key
from node_daemon.broken import diagnose
from node_daemon.config import MODES, RepairConfig
from node_daemon.kubeapi import ApiError
from node_daemon.metrics import Metrics


@dataclass(frozen=True)
class Row:
    pod: str
    node: str
    why: str
    action: Action
    result: Result
    message: str


def repair_once(api: Any, cfg: RepairConfig, node: str | None, local_node: str,
                dry_run: bool, actions: Actions) -> list[Row]:
    """`node` None = all nodes. Only broken pods make rows."""
    selector = cfg.field_selectors
    if node is not None:
        selector = ",".join([*([selector] if selector else []), f"spec.nodeName={node}"])
    rows = []
    for pod in api.list_pods(selector, cfg.label_selectors).items:
        verdict = diagnose(pod, cfg)
        if not verdict.broken:
            continue
        pod_node = str((pod.get("spec") or {}).get("nodeName", ""))
        mode = cfg.mode
        if mode is None:
            res = ActionResult(pod_key(pod), Action.NONE, Result.SKIP, "no repair mode enabled")
        elif dry_run:
            res = ActionResult(pod_key(pod), Action(mode), Result.DRY_RUN, f"would {mode}")
        elif mode == Action.REPAIR and pod_node != local_node:
            res = ActionResult(pod_key(pod), Action.REPAIR, Result.SKIP,
                               f"runs on node {pod_node}, not {local_node}: run this there")
        else:
            res = actions.act(pod, mode) or res
        rows.append(Row(res.pod, pod_node, "; ".join(verdict.reasons), res.action, res.result,
                        res.message))
    return rows


def format_rows(rows: list[Row], output: str) -> str:
    if output == "json":
        return json.dumps([asdict(r) for r in rows], indent=2) + "\n"
    if not rows:
        return "no broken pods\n"
    head = ("POD", "NODE", "ACTION", "RESULT", "MESSAGE")
    table = [head] + [(r.pod, r.node, r.action, r.result, r.message) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "".join("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True))
                   + "  " + row[4] + "\n" for row in table)


@click.command("repair")
@click.option("--node", callback=lambda _ctx, _param, value: value and object_name(value, "node"),
              help="Only pods on this node (default: this node, REPAIR_NODE_NAME).")
@click.option("--all-nodes", is_flag=True, help="Pods on every node.")
@click.option("--mode", type=click.Choice(MODES),
              help="What to do with broken pods (default: the REPAIR_*_PODS settings).")
@click.option("--dry-run", is_flag=True, help="Only list broken pods and what would be done.")
@output_option(("text", "json"))
@kubeconfig_option
def repair_command(node: str | None, all_nodes: bool, mode: str | None, dry_run: bool,
                   output: str, kubeconfig: str | None) -> None:
    """Find pods broken by the CNI race (istio-validation exited 126) and fix them once.

    \b
    Examples:
      istio-cni-node repair --dry-run              # what is broken on this node?
      istio-cni-node repair --mode repair          # program their rules in place
      istio-cni-node repair --all-nodes --mode delete -o json

    Exits 1 if any action failed.
    """
    if node and all_nodes:
        raise click.UsageError("give --node or --all-nodes, not both")
    cfg = daemon_config()
    rc = cfg.repair.with_mode(mode) if mode else cfg.repair
    api = pod_api(kubeconfig)
    finder = None
    if rc.mode == Action.REPAIR and not dry_run:
        from node_daemon.netns_finder import NetnsFinder

        finder = NetnsFinder(cfg.host_proc)
    actions = Actions(rc, api, Reporter(api, Metrics(), rc.node_name), finder,
                      cfg.rule_mode)
    try:
        rows = repair_once(api, rc, None if all_nodes else (node or rc.node_name),
                           rc.node_name, dry_run, actions)
    except ApiError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(format_rows(rows, output), nl=False)
    if any(r.result == Result.FAIL for r in rows):
        sys.exit(1)


@click.command("drift")
@click.option("--dry-run", is_flag=True, help="Only report pods whose rules differ.")
@output_option(("text", "json"))
@kubeconfig_option
def drift_command(dry_run: bool, output: str, kubeconfig: str | None) -> None:
    """Check every redirected pod on this node against its rules; put back missing ones.

    The daemon does this every DRIFT_CHECK_INTERVAL seconds; this runs it now. Exits 1 if a
    pod could not be checked or repaired (or, with --dry-run, if any pod differs).
    """
    from node_daemon.drift import DriftChecker
    from node_daemon.netns_finder import NetnsFinder

    cfg = daemon_config()
    api = pod_api(kubeconfig)
    reporter = Reporter(None if dry_run else api, Metrics(), cfg.repair.node_name)
    checker = DriftChecker(cfg.repair, reporter, NetnsFinder(cfg.host_proc),
                           cfg.rule_mode, fix=not dry_run)
    try:
        pods = api.list_pods(cfg.repair.field_selector(), cfg.repair.label_selectors).items
    except ApiError as exc:
        raise click.ClickException(exc.message) from exc
    results = checker.check_all(pods)
    rows = [Row(r.pod, cfg.repair.node_name, "", r.action, r.result, r.message)
            for r in results]
    if output == "json":
        click.echo(format_rows(rows, output), nl=False)
    else:
        click.echo(format_rows(rows, output) if rows else "no redirected pods to check\n",
                   nl=False)
    if any(r.result in (Result.FAIL, Result.DETECTED) for r in rows):
        sys.exit(1)
