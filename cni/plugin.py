"""ADD, DEL, CHECK, STATUS and GC for istio-cni: each a short list of stage calls.

Stages, each in its own module: protocol (skel) → config → pre-lookup decision (no API, no
kubeconfig) → pod lookup → then the pod pipeline (`cni.pipeline`: decision → redirect spec →
one visit to the pod netns: facts, rule set, apply), the same one the agent and `explain` run. Fail
closed: once a pod may need redirection, every failure fails the ADD so the runtime retries; a
skip only ever comes out of the decision functions. Heavy stages (API client, rule builder,
backends) are imported only on the path that needs them, so skipped pods stay cheap.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from cni import plugin_log, teardown
from cni.config import PluginConfig, parse_plugin_config
from cni.decision import Decision, decide_before_lookup
from cni.errors import CNIError, InvalidNetNS, PluginNotAvailable, RulesMismatch
from cni.plugin_log import AddOutcome
from cni.protocol import CmdArgs, dispatch, parse_cni_args
from cni.results import encode_result

if TYPE_CHECKING:
    from cni.backends import RuleMode

log = logging.getLogger("istio-cni")


class PodSource(Protocol):
    def get_pod(self, namespace: str, name: str) -> dict[str, Any]: ...


def api_pod_source(conf: PluginConfig) -> PodSource:
    """The default pod source: one GET of the pod from the API, with bounded retries."""
    from cni.kubeconfig import load_kubeconfig
    from cni.podlookup import ApiPodSource, RetryPolicy

    access = load_kubeconfig(conf.kubeconfig)
    policy = RetryPolicy(
        attempts=conf.pod_lookup_attempts,
        interval=conf.pod_lookup_interval,
        deadline=conf.pod_lookup_deadline,
    )
    return ApiPodSource(access, policy)


class Plugin:
    """The CNI handlers. Collaborators are passed in; the defaults are the real ones.

    A plain class, not a dataclass: `dataclasses` costs several ms of imports per pod start."""

    def __init__(
        self, pod_source_factory: Callable[[PluginConfig], PodSource] = api_pod_source,
        *, own_logging: bool = True, netns_fd: int | None = None,
        fallback: tuple[str, str] | None = None, warm: bool = False,
    ) -> None:
        """`own_logging`: configure the process's logging from the config (off in the agent,
        whose logging is its own). `netns_fd`: the agent's, the pod netns the thin client
        handed over; every step that enters the netns enters that descriptor, never a path
        (`CNI_NETNS` then only names it in messages and log lines). `fallback`: (level,
        reason) why the thin client did not hand this call to the agent, logged once the
        config has set up logging. `warm`: the agent's, a long-lived process: the rule backend
        keeps what is the node's and reads the netns in-process (`cni.backends.RuleMode.warm`);
        off in the plugin's own process, which detects everything per pod as upstream does."""
        self.pod_source_factory = pod_source_factory
        self.own_logging = own_logging
        self.netns_fd = netns_fd
        self.fallback = fallback
        self.warm = warm
        self.event: dict[str, Any] | None = None
        """The ADD event for the node agent (outcome, reason, phase timings), set by add()."""
        self.phases: dict[str, float] = {}
        self.agent_socket = ""
        """Where the node agent listens for our log lines and ADD event (set from the config)."""
        self.log_level = "info"
        self.run_dir = ""
        """The config's plugin_log_level and cni_agent_run_dir, once it is parsed."""

    # --- ADD ---------------------------------------------------------------------------------
    def add(self, args: CmdArgs) -> dict[str, Any]:
        start = time.perf_counter()
        self.phases = {}
        conf, k8s = self._prepare(args)
        pod_name = f"{k8s.get('K8S_POD_NAMESPACE', '')}/{k8s.get('K8S_POD_NAME', '')}"
        try:
            result = encode_result(conf.prev_result, conf.cni_version)
            plog = _pod_logger(args, k8s)
            _refuse_own_netns(args, self._netns(args))
            early = _decide_early(conf, k8s)
            with self._phase("lookup"):
                decision, pod = (early, None) if early is not None else self._decide(conf, k8s)
            if decision.redirect:
                outcome = self._program(args, conf, pod)
                plog.debug("phases so far (seconds): %s", self.phases)  # formatted at debug only
                plog.info("redirected: %s (%s)", decision.reason, outcome)
            else:
                plog.info("skipped: %s", decision.reason)
        except CNIError as exc:
            self._record(pod_name, AddOutcome.FAILED, exc.msg, start)
            raise
        self._record(pod_name,
                     AddOutcome.REDIRECTED if decision.redirect else AddOutcome.SKIPPED,
                     decision.reason, start)
        return result

    # --- CHECK -------------------------------------------------------------------------------
    def check(self, args: CmdArgs) -> None:
        conf, k8s = self._prepare(args)
        early = _decide_early(conf, k8s)
        if early is not None:
            return None
        decision, pod = self._decide(conf, k8s)
        if not decision.redirect:
            return None
        from cni import pipeline
        from cni.redirect import redirect_from_pod

        mode = self._rule_mode(conf)
        diff = pipeline.check_pod(self._netns(args), redirect_from_pod(pod), mode)
        if diff.missing or diff.extra:
            details = "\n".join(
                [f"missing: {r}" for r in diff.missing] + [f"extra: {r}" for r in diff.extra]
            )
            switched = (f"; it holds {diff.other_mode} mode's rules, but the plugin config "
                        f"selects {mode.label} mode" if diff.other_mode else "")
            raise RulesMismatch(
                f"pod rules in {args.netns} differ from what the pod's spec requires "
                f"({len(diff.missing)} missing, {len(diff.extra)} unexpected{switched})",
                details,
            )
        return None

    # --- DEL, STATUS, GC -----------------------------------------------------------------------
    def delete(self, args: CmdArgs) -> None:
        return teardown.delete(args)

    def status(self, args: CmdArgs) -> None:
        conf = parse_plugin_config(args.conf)
        from cni.kubeconfig import load_kubeconfig

        try:
            load_kubeconfig(conf.kubeconfig)
        except PluginNotAvailable as exc:
            raise PluginNotAvailable(f"istio-cni is not ready: {exc.msg}", exc.details) from exc
        return None

    def gc(self, args: CmdArgs) -> None:
        return teardown.gc(args)

    # --- stages ------------------------------------------------------------------------------
    def _prepare(self, args: CmdArgs) -> tuple[PluginConfig, dict[str, str]]:
        conf = parse_plugin_config(args.conf)
        self.log_level, self.run_dir = conf.log_level, conf.cni_agent_run_dir
        if self.own_logging:
            plugin_log.configure(conf.log_level, conf.cni_agent_run_dir)
            self.agent_socket = conf.log_uds_address
        if self.fallback is not None:
            level, reason = self.fallback
            log.log(plugin_log.level_number(level), "serving in-process: %s", reason)
            self.fallback = None
        return conf, parse_cni_args(args.args)

    def _netns(self, args: CmdArgs) -> str:
        """What to open to enter the pod netns: the agent's held descriptor, else CNI_NETNS."""
        return args.netns if self.netns_fd is None else f"/proc/self/fd/{self.netns_fd}"

    def _rule_mode(self, conf: PluginConfig) -> RuleMode:
        return conf.rule_mode._replace(warm=True) if self.warm else conf.rule_mode

    def _decide(self, conf: PluginConfig, k8s: dict[str, str]) -> tuple[Decision, Any]:
        """The decision after the pod lookup, and the pod it was made on."""
        name, ns = k8s.get("K8S_POD_NAME", ""), k8s.get("K8S_POD_NAMESPACE", "")
        from cni.pipeline import decide_pod

        pod, decision = decide_pod(self.pod_source_factory(conf).get_pod(ns, name))
        return decision, pod

    def _program(self, args: CmdArgs, conf: PluginConfig, pod: Any) -> str:
        """Redirect spec, then one visit to the pod netns: facts, rule set, apply."""
        from cni import netns, pipeline
        from cni.redirect import redirect_from_pod

        with self._phase("rules"):
            redirect = redirect_from_pod(pod)
        where = self._netns(args)
        with netns.in_netns(where):
            with self._phase("rules"):
                pod_ns = pipeline.here(where, redirect, self._rule_mode(conf))
            for note in pod_ns.ruleset.notes:
                log.warning("%s", note)
            with self._phase("apply"):
                return pod_ns.program()

    @contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        """Time the body; a phase entered twice adds up."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = round(self.phases.get(name, 0.0) + time.perf_counter() - t0, 6)

    def _record(self, pod: str, outcome: AddOutcome, reason: str, start: float) -> None:
        self.phases["total"] = round(time.perf_counter() - start, 6)
        self.event = {"pod": pod, "outcome": outcome, "reason": reason, "phases": self.phases}


def _decide_early(conf: PluginConfig, k8s: dict[str, str]) -> Decision | None:
    """The skips that need no API (agent pods, non-Kubernetes calls, excluded namespaces)."""
    name, ns = k8s.get("K8S_POD_NAME", ""), k8s.get("K8S_POD_NAMESPACE", "")
    return decide_before_lookup(name, ns, conf.pod_namespace, conf.exclude_namespaces)


def _refuse_own_netns(args: CmdArgs, where: str) -> None:
    """Never program our own (the host's) netns: libcni's check, done before touching it.
    `where` is what names the netns for this process (`Plugin._netns`)."""
    if args.netns_override.lower() in ("1", "true"):
        return
    try:
        ours, theirs = os.stat("/proc/self/ns/net"), os.stat(where)
    except OSError:
        return  # a missing netns is reported by the netns stage, if the pod needs it
    if (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino):
        raise InvalidNetNS("plugin's netns and netns from CNI_NETNS should not be the same")


def _pod_logger(args: CmdArgs, k8s: dict[str, str]) -> logging.LoggerAdapter:
    pod = f"{k8s.get('K8S_POD_NAMESPACE', '')}/{k8s.get('K8S_POD_NAME', '')}"
    return plugin_log.PodContext(
        log, {"pod": pod, "container_id": args.container_id, "netns": args.netns}
    )


def run_call(env: Mapping[str, str], stdin: bytes, plugin: Plugin, about: str = "",
             reraise: tuple[type[BaseException], ...] = ()) -> tuple[bytes, bytes, int]:
    """One CNI call through the protocol, as both paths run it (the in-process entry point and
    the agent serving a thin client): `dispatch`, and a failed call logged as one error line
    naming the command and the CNI error."""
    out, err, status = dispatch(
        env, stdin, plugin, about=about or "CNI plugin istio-cni",
        on_internal_error=lambda exc: log.error("internal error", exc_info=exc),
        reraise=reraise)
    if status != 0 and out:
        log.error("%s failed: %s", env.get("CNI_COMMAND", ""), out.decode().strip())
    return out, err, status
