"""Shutdown within the grace period, and the one decision it makes: keep the plugin or not.

**The budget.** The kubelet SIGKILLs the agent `terminationGracePeriodSeconds` after SIGTERM.
The agent reads that period from its own pod at start (`GET` of `POD_NAMESPACE/POD_NAME`: the
downward API cannot expose it) and falls back to upstream's chart's and Kubernetes' default,
30 s, when it cannot. Every step of the shutdown is then bounded by what is left of it, minus a
margin for the process to exit: the decision first (while the agent still serves), then the
uninstall (local renames) and the last condition update, each given only the time left.

**The decision** (`UNINSTALL_ON_SHUTDOWN=auto`): remove the plugin only when the install is
going away, keep it for a restart or an upgrade. Only these say "going away":

- the DaemonSet is gone (404) or has a `deletionTimestamp`;
- the agent's token is rejected (401): its ServiceAccount was deleted with the install;
- a grant the agent had at start is withdrawn (a 403 now, or a SelfSubjectAccessReview that
  says no): its Role or binding was deleted with the install.

A 403 on something the agent never had (upstream's chart grants no `get daemonsets` in sidecar
mode) says nothing about the install: the agent then watches the grants it does have for up to
`WITHDRAWAL_WINDOW` seconds (`helm uninstall` and `kubectl delete -f` delete the RBAC within
a second of the DaemonSet, and the garbage collector stops the pods after that), and keeps the
plugin if none is withdrawn. When the API cannot answer in time the plugin is removed: a
plugin nobody maintains, whose credential may die with the install, can block every pod on the
node, while a removed one only leaves pods to the next agent's repair (upstream's behaviour).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from node_daemon.kubeapi import ApiError
from node_daemon.permissions import Permissions
from node_daemon.selfapi import AccessQuestion, Timeout

log = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 30.0
"""terminationGracePeriodSeconds when the pod spec cannot be read: upstream's chart's value and
Kubernetes' default."""
EXIT_MARGIN = 1.5
"""Seconds (at least; 10% of the grace period when that is more) kept for the process to stop
its servers and exit after the last step."""
UNINSTALL_RESERVE = 1.0
"""Seconds the decision leaves for the uninstall and the last condition update."""
WITHDRAWAL_WINDOW = 5.0
"""Without `get daemonsets`: how long the agent watches its grants for withdrawal."""
POLL_SECONDS = 0.5
"""Between two looks at the API while deciding."""
GRACE_TIMEOUT: Timeout = (3.0, 5.0)
"""(connect, read) seconds of the start-up read of the agent's own pod."""


@dataclass(frozen=True)
class ShutdownPolicy:
    """UNINSTALL_ON_SHUTDOWN and where the agent's DaemonSet is (POD_NAMESPACE, DAEMONSET_NAME)."""

    uninstall: str = "auto"
    namespace: str = ""
    daemonset: str = "istio-cni-node"

    def daemonset_question(self) -> AccessQuestion:
        return AccessQuestion("get", "daemonsets", "apps", namespace=self.namespace,
                              name=self.daemonset)


class Clock:
    """A deadline on the monotonic clock."""

    def __init__(self, deadline: float, now: Callable[[], float] = time.monotonic) -> None:
        self.deadline, self._now = deadline, now

    def now(self) -> float:
        return self._now()

    def left(self) -> float:
        return self.deadline - self._now()

    def timeout(self, cap: float = 5.0) -> Timeout:
        """A (connect, read) timeout that ends by the deadline (at most `cap`)."""
        left = max(0.05, min(cap, self.left()))
        return (left, left)


@dataclass(frozen=True)
class GraceBudget:
    """The pod's grace period and where it came from."""

    seconds: float = DEFAULT_GRACE_SECONDS
    source: str = "default"

    @property
    def margin(self) -> float:
        return max(EXIT_MARGIN, 0.1 * self.seconds)

    def deadline(self, started: float) -> float:
        """When the last step must be done (monotonic), for a SIGTERM at `started`."""
        return started + self.seconds - self.margin

    def decision_deadline(self, started: float) -> float:
        return self.deadline(started) - UNINSTALL_RESERVE


class PodReader(Protocol):
    def get_pod(self, namespace: str, name: str, timeout: Timeout) -> dict[str, Any]: ...


def read_grace(api: PodReader | None, namespace: str, pod_name: str) -> GraceBudget:
    """The agent's own `terminationGracePeriodSeconds`, else the default (said once)."""
    why = ""
    if api is None:
        why = "no API access"
    elif not namespace or not pod_name:
        why = "POD_NAMESPACE and POD_NAME are not both set"
    else:
        try:
            pod = api.get_pod(namespace, pod_name, GRACE_TIMEOUT)
            value = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                budget = GraceBudget(float(value), f"pod {namespace}/{pod_name}")
                log.info("shutdown: grace period %gs (%s); every shutdown step ends within "
                         "%gs of SIGTERM", budget.seconds, budget.source,
                         budget.seconds - budget.margin)
                return budget
            why = f"pod {namespace}/{pod_name} has no terminationGracePeriodSeconds"
        except ApiError as exc:
            why = exc.message
    budget = GraceBudget()
    log.info("shutdown: grace period taken as %gs (the chart's default): %s",
             budget.seconds, why)
    return budget


class DecisionApi(Protocol):
    def get_daemonset(self, namespace: str, name: str, timeout: Timeout) -> dict[str, Any]: ...

    def may(self, question: AccessQuestion, timeout: Timeout) -> bool: ...


@dataclass(frozen=True)
class Decision:
    keep: bool
    reason: str


def decide(policy: ShutdownPolicy, api: DecisionApi | None, permissions: Permissions,
           clock: Clock, window: float = WITHDRAWAL_WINDOW) -> Decision:
    """Keep the plugin (a restart, an upgrade) or remove it (the install is going away, or the
    API cannot say in time); logs the decision and its reason in one line. `window`: how
    long grants are watched when the DaemonSet cannot be looked up."""
    decision = _decide(policy, api, permissions, clock, threading.Event(), window)
    level = logging.WARNING if decision.reason.startswith("cannot tell") else logging.INFO
    log.log(level, "shutdown: %s the plugin: %s", "keeping" if decision.keep else "removing",
            decision.reason)
    return decision


def _decide(policy: ShutdownPolicy, api: DecisionApi | None, permissions: Permissions,
            clock: Clock, pause: threading.Event, window: float) -> Decision:
    if policy.uninstall == "true":
        return Decision(False, "UNINSTALL_ON_SHUTDOWN=true")
    if policy.uninstall == "false":
        return Decision(True, "UNINSTALL_ON_SHUTDOWN=false")
    if api is None:
        return Decision(False, "cannot tell a restart from an uninstall: no API access")
    if not policy.namespace:
        return Decision(False, "cannot tell a restart from an uninstall: POD_NAMESPACE is "
                               "not set")
    ds = policy.daemonset_question()
    last = "no answer"
    if permissions.allows(ds) is not False:
        while clock.left() > 0:
            try:
                obj = api.get_daemonset(policy.namespace, policy.daemonset, clock.timeout())
            except ApiError as exc:
                verdict = _going_away(exc, permissions.allows(ds) is True,
                                      f"DaemonSet {policy.namespace}/{policy.daemonset}")
                if verdict is not None:
                    return verdict
                if exc.status == 403:  # never granted: the chart; watch the grants instead
                    break
                last = exc.message
                pause.wait(min(POLL_SECONDS, max(0.0, clock.left())))
                continue
            if (obj.get("metadata") or {}).get("deletionTimestamp"):
                return Decision(False, f"DaemonSet {policy.namespace}/{policy.daemonset} is "
                                       "being deleted")
            return Decision(True, f"DaemonSet {policy.namespace}/{policy.daemonset} stays "
                                  "(a restart or an upgrade)")
        else:
            return Decision(False, f"cannot tell a restart from an uninstall in time ({last})")
    return _watch_grants(permissions, api, clock, pause, window)


def _going_away(exc: ApiError, had_it: bool, what: str) -> Decision | None:
    if exc.status == 404:
        return Decision(False, f"{what} is gone")
    if exc.status == 401:
        return Decision(False, "the API rejects this agent's token: its ServiceAccount is gone "
                               "with the install")
    if exc.status == 403 and had_it:
        return Decision(False, f"{exc.message}: a grant this agent had at start was withdrawn "
                               "with the install")
    return None


def _watch_grants(permissions: Permissions, api: DecisionApi, clock: Clock,
                  pause: threading.Event, seconds: float) -> Decision:
    """No `get daemonsets`: keep unless a grant held at start goes within the window."""
    watched = permissions.granted
    if not watched:
        return Decision(False, "cannot tell a restart from an uninstall: this agent may not "
                               "get its DaemonSet and holds no grant to watch")
    window = Clock(min(clock.deadline, clock.now() + seconds), clock.now)
    answered = False  # the last complete round of reviews found every grant still held
    while window.left() > 0:
        round_ok: bool | None = True
        for question in watched:
            if window.left() <= 0:
                round_ok = None  # the window ended mid-round: no news
                break
            try:
                if not api.may(question, window.timeout()):
                    return Decision(False, f"{question}, granted at start, is withdrawn: the "
                                           "install is going away")
            except ApiError as exc:
                verdict = _going_away(exc, False, "")
                if verdict is not None:
                    return verdict
                round_ok = False
                break
        if round_ok is not None:
            answered = round_ok
        pause.wait(min(POLL_SECONDS, max(0.0, window.left())))
    if not answered:
        return Decision(False, "cannot tell a restart from an uninstall in time (no answer "
                               "about this agent's grants)")
    return Decision(True, f"no get daemonsets granted; every grant held at start ({len(watched)}"
                          f") still held after {seconds:g}s: a restart or an upgrade")
