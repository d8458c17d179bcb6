"""Drift check (beyond upstream): run the plugin's CHECK against every redirected pod here.

Upstream's CHECK always succeeds, so rules flushed by an app holding NET_ADMIN, or altered by a
second chained run, go unnoticed until traffic bypasses the proxy. We compare each pod netns with
the rules its spec requires and, with `fix`, put them back (`pod_rules.reconcile_rules`).

Each pod is compared in the netns the pass's /proc scan found for it (by its UID in the
netns's processes' cgroups, then its IP inside) and held open, never by its pid's path again
(`node_daemon.netns_finder`): a pod whose netns cannot be proven (its IP only in another pod's
netns, or in two), or a netns that is no longer the one found or no longer has the pod's IP, is
a failure with nothing written. A failure to switch the worker back out of a pod's netns is
never reported as that pod's failure: `NetnsReturnFailed` ends the pass (and the agent).

Which pods: the plugin would redirect them, and they are known to have been programmed: the
validation init container completed (it only passes with the rules in place), or, for pods
without one, the pod is Running. A pod that never got its rules (the CNI race) is the repair
controller's business, under its own configured mode, not the drift check's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from cni.backends import RuleMode
from cni.errors import CNIError, InvalidPod
from cni.held_netns import HeldNetns
from cni.pipeline import decide_pod
from cni.podinfo import pod_ips
from cni.redirect import redirect_from_pod
from node_daemon.actions import (
    Action,
    ActionResult,
    NetnsLocator,
    Reporter,
    Result,
    pod_key,
    pod_uid,
)
from node_daemon.config import RepairConfig
from node_daemon.netns_finder import NetnsTable, NetnsUnproven
from node_daemon.pod_rules import RulesState, reconcile_rules


def is_candidate(pod: dict[str, Any], cfg: RepairConfig) -> bool:
    """Pure: redirected, on the pod network, and known to have had its rules. A pod that is
    not the shape of a Pod is not (the plugin could not have redirected it either), nor is
    one in an excluded namespace (the plugin never touches those)."""
    if (pod.get("metadata") or {}).get("namespace") in cfg.exclude_namespaces:
        return False
    try:
        info, decision = decide_pod(pod)
    except InvalidPod:
        return False
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    deleting = (pod.get("metadata") or {}).get("deletionTimestamp")
    if spec.get("hostNetwork") or not info.pod_ips or deleting:
        return False
    if not decision.redirect:
        return False
    for st in status.get("initContainerStatuses") or []:
        if st.get("name") == cfg.init_container_name:
            done = (st.get("state") or {}).get("terminated") or {}
            return done.get("exitCode") == 0 and "terminated" in (st.get("state") or {})
    return status.get("phase") == "Running"


class DriftChecker:
    def __init__(self, cfg: RepairConfig, reporter: Reporter, finder: NetnsLocator,
                 backend: str | RuleMode = "auto", fix: bool = True) -> None:
        self.cfg = cfg
        self.reporter = reporter
        self.finder = finder
        self.backend = backend
        self.fix = fix

    def check_all(self, pods: Iterable[dict[str, Any]]) -> list[ActionResult]:
        """One /proc scan for the candidate pods (one per `finder.limit` of their IPs: the
        scan holds a descriptor per netns it found), then one CHECK (and fix) per pod, each
        through the netns its scan held. The descriptors are closed when the batch is done."""
        candidates = [p for p in pods if is_candidate(p, self.cfg)]
        results = []
        for batch in batches(candidates, self.finder.limit):
            with self.finder.scan((ip for pod in batch for ip in pod_ips(pod)),
                                  {pod_uid(pod): pod_key(pod) for pod in batch}) as table:
                results += [self._check_found(pod, table) for pod in batch]
        return results

    def _check_found(self, pod: dict[str, Any], table: NetnsTable) -> ActionResult:
        """`check_pod` in the netns the scan proved to be this pod's; a failure, with nothing
        written, when none can be (`NetnsTable.choose`)."""
        try:
            target = table.netns_for(pod_uid(pod), pod_ips(pod))
        except NetnsUnproven as exc:
            return self.reporter.record(pod, Action.DRIFT, Result.FAIL,
                                        f"drift check failed: {exc.msg}")
        return self.check_pod(pod, target)

    def check_pod(self, pod: dict[str, Any], target: HeldNetns | None) -> ActionResult:
        """CHECK (and fix) one pod in `target`, the netns its scan found and held; it is
        entered only once proven to be that netns and to hold the pod's IP: a netns that
        changed since is a failure, with nothing written. (`NetnsReturnFailed` is no
        `OSError`: it is never this pod's failure, it ends the pass.)"""
        if target is None:  # not (or no longer) running here: nothing to compare, no event
            return ActionResult(pod_key(pod), Action.DRIFT, Result.SKIP,
                                "no netns with the pod's IP")
        try:
            redirect = redirect_from_pod(decide_pod(pod)[0])
            outcome = reconcile_rules(target, redirect, self.backend, fix=self.fix)
        except (CNIError, OSError) as exc:
            msg = exc.msg if isinstance(exc, CNIError) else str(exc)
            return self.reporter.record(pod, Action.DRIFT, Result.FAIL,
                                        f"drift check failed: {msg}")
        if outcome.state == RulesState.IN_SYNC:
            self.reporter.metrics.drift.labels(result=Result.IN_SYNC).inc()
            return ActionResult(pod_key(pod), Action.DRIFT, Result.IN_SYNC,
                                "rules match the pod's spec")
        if outcome.state == RulesState.DRIFTED:
            return self.reporter.record(
                pod, Action.DRIFT, Result.DETECTED,
                f"traffic redirection rules differ from the pod's spec ({outcome.summary()}); "
                "not repaired (DRIFT_REPAIR=false)")
        return self.reporter.record(
            pod, Action.DRIFT, Result.SUCCESS,
            f"traffic redirection rules were missing or altered ({outcome.summary()}); "
            f"{outcome.state} in place")


def batches(pods: list[dict[str, Any]], limit: int) -> Iterator[list[dict[str, Any]]]:
    """`pods` in order, in runs of at most `limit` IPs between them (a pod with more IPs than
    that, which no pod has, makes a run of its own and is cut to the limit by the scan)."""
    batch: list[dict[str, Any]] = []
    size = 0
    for pod in pods:
        n = len(pod_ips(pod))
        if batch and size + n > limit:
            yield batch
            batch, size = [], 0
        batch.append(pod)
        size += n
    if batch:
        yield batch
