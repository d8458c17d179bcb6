"""`istio-cni-node run`: the DaemonSet's one long-running process, composed from its parts.

Order follows upstream's `root.go`: metrics, the plugin's log socket, health, install, the repair
controller, then the installer's watch loop in the calling thread until `stop` is set (SIGTERM).
The node readiness gate (ours, `node_gate.py`) starts with the servers, so the node's condition
says why it is not ready while the install waits.

At start, with API access, the agent learns once what it may ask (`permissions.py`, one line),
its own grace period (`shutdown.read_grace`), and mints the plugin's own token
(`plugin_token.py`) that the installer writes into the plugin's kubeconfig. On SIGTERM every
step is bounded by what is left of the grace period: first the decision to keep the plugin
(a restart or an upgrade) or remove it (`shutdown.decide`), taken while the agent still serves;
then the gate, the controller and the token renewal stop, the installer uninstalls (or leaves
the plugin for the next agent), and the gate sets the condition False when it removed it.

One agent per node: after the health and metrics servers, the agent takes `<run dir>/agent.lock`
(`runlock.py`); while another agent holds it, this one waits, not ready and naming it, before
it binds the plugin's sockets, starts the gate or installs anything. It lets go only once its
own shutdown is complete.

The installer is passed in (the real one is `installer.Installer(config)`) and used only through
the `Installer` protocol below. It keeps the one count of installs by result; the agent exports
that count as `istio_cni_installs_total` and never counts installs itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from node_daemon.actions import Actions, Reporter
from node_daemon.cni_server import CniServer, CniService
from node_daemon.config import DaemonConfig, NodeGateConfig
from node_daemon.controller import RepairController
from node_daemon.drift import DriftChecker
from node_daemon.fatal import exit_when_stuck
from node_daemon.health import EndpointServer, health_server, metrics_server
from node_daemon.kubeapi import NodeApi
from node_daemon.logsink import LogSink
from node_daemon.metrics import Metrics
from node_daemon.netns_finder import NetnsFinder
from node_daemon.node_gate import READY, NodeGate, Readiness, Reason, policy_confines
from node_daemon.permissions import Need, Permissions, review
from node_daemon.plugin_token import PluginToken, token_question
from node_daemon.runlock import RunDirLock
from node_daemon.selfapi import AccessQuestion, SelfApi
from node_daemon.shutdown import Clock, GraceBudget, ShutdownPolicy, decide, read_grace

log = logging.getLogger(__name__)

LOCK_RETRY_SECONDS = 1.0
"""How often an agent waiting for the run dir's lock tries again."""
WATCH_RESTART_MAX = 30.0


class InstallCounts(Protocol):
    """The installer's tally: `snapshot()["installs"]` maps a result label to a count."""

    def snapshot(self) -> Mapping[str, object]: ...


class Installer(Protocol):
    """What the agent calls on the installer, and nothing else. An installer with a
    `token_source` attribute (the real one) is given the plugin's own token through it."""

    @property
    def ready(self) -> bool:
        """Installed and idle: what /readyz and istio_cni_install_ready report."""
        ...

    @property
    def not_loaded(self) -> str:
        """While not ready although installed: why the runtime does not run istio-cni (the
        file it loads instead, named); "" otherwise."""
        ...

    @property
    def metrics(self) -> InstallCounts:
        """Every install and re-install by result, counted once, by the installer."""
        ...

    def install(self, stop: threading.Event | None = None) -> None:
        """Install, waiting for a primary CNI config until `stop`; raise when that fails."""
        ...

    def watch(self, stop: threading.Event) -> None:
        """Re-install on drift until `stop` is set. Raising is a bug, not a state of the node:
        the agent logs it and starts the watch again."""
        ...

    def rewrite_kubeconfig(self) -> bool:
        """Write the plugin's kubeconfig again (its token was renewed)."""
        ...

    def uninstall(self, keep_plugin: bool = False) -> None:
        """Remove the plugin from the node, or with `keep_plugin` leave it for the next agent."""
        ...


@dataclass
class Agent:
    """The running parts, exposed so tests (and `run`) can reach ports and the controller."""

    cfg: DaemonConfig
    installer: Installer
    api: Any = None
    """A `kubeapi.PodApi`; None runs without the repair controller."""
    metrics: Metrics = field(default_factory=Metrics)
    finder: NetnsFinder | None = None
    controller: RepairController | None = None
    health: EndpointServer | None = None
    metrics_http: EndpointServer | None = None
    logsink: LogSink | None = None
    cni_server: CniServer | None = None
    """Serves the plugin's ADD and CHECK (`<run dir>/cni.sock`); the plugin falls back to
    doing them itself while this is not ready."""
    nodes: Any = None
    """A `kubeapi.NodeApi` for the readiness gate; None: one sharing `api`'s client."""
    node_gate: NodeGate | None = None
    policy: ShutdownPolicy = field(default_factory=ShutdownPolicy)
    """UNINSTALL_ON_SHUTDOWN and the DaemonSet it looks up (from the installer's settings)."""
    selfapi: Any = None
    """A `selfapi.SelfApi` (its own pod, its DaemonSet, permissions, tokens); None: one on
    `api`'s client."""
    plugin_token: PluginToken | None = None
    """The plugin's own token, when its ServiceAccount may be asked for one."""
    permissions: Permissions = field(default_factory=Permissions)
    grace: GraceBudget = field(default_factory=GraceBudget)
    started: threading.Event = field(default_factory=threading.Event)
    """Set once installed and the controller started (tests wait on it)."""
    _install_attempted: bool = False
    _run_lock: RunDirLock | None = None
    _waiting_for_lock: bool = False
    _not_ready: str = ""
    """Why the agent itself is not ready (another agent holds the run dir, the watch is being
    restarted), before anything the installer says."""
    _installing: bool = True
    _stopped_at: float | None = None

    def __post_init__(self) -> None:
        self.metrics.export_installs(self._install_counts)
        self.metrics.export_watch(
            lambda: self.controller.state() if self.controller is not None else None)
        self.metrics.export_install_watch(self._watch_state)
        if not self.policy.namespace:
            self.policy = replace(self.policy, namespace=self.cfg.namespace)

    def _watch_state(self) -> tuple[bool, float]:
        snap = self.installer.metrics.snapshot()
        return bool(snap.get("watch_polling")), float(snap.get("watch_fallbacks") or 0)

    def _install_counts(self) -> Mapping[str, float]:
        counts = self.installer.metrics.snapshot().get("installs")
        if not isinstance(counts, Mapping):
            return {}
        return {str(result): float(n) for result, n in counts.items()}

    def ready(self) -> tuple[bool, str]:
        """What /readyz answers: (ready, why not)."""
        readiness = self.readiness()
        return readiness.ready, "" if readiness.ready else readiness.message

    def readiness(self) -> Readiness:
        """Installed, the repair controller synced and its pod watch current, the plugin's
        sockets in place; the reason is the readiness gate's node condition reason."""
        if self.cfg.refusal:
            return Readiness(False, Reason.MODE_NOT_SUPPORTED, self.cfg.refusal)
        if self._waiting_for_lock:
            return Readiness(False, Reason.ANOTHER_AGENT, self._not_ready)
        installed = bool(self.installer.ready) and not self._not_ready
        self.metrics.install_ready.set(1 if installed else 0)
        if self._not_ready:
            return Readiness(False, Reason.PLUGIN_NOT_INSTALLED, self._not_ready)
        if not installed:
            if why := self.installer.not_loaded:
                return Readiness(False, Reason.CONFIG_NOT_LOADED, why)
            return Readiness(False, Reason.PLUGIN_NOT_INSTALLED, "CNI plugin not installed",
                             starting=self._installing)
        if self.controller is not None and not self.controller.synced:
            return Readiness(False, Reason.CONTROLLER_NOT_SYNCED, "repair controller not synced")
        if self.controller is not None and not self.controller.fresh:
            return Readiness(False, Reason.WATCH_STALE, "pod watch has not heard from the API "
                             f"within {self.cfg.watch_stale_after:g}s")
        for server in (self.logsink, self.cni_server):
            if server is not None and not server.healthy():
                return Readiness(False, Reason.SOCKET_MISSING,
                                 f"{server.what} {server.path} missing (being recreated)")
        return READY

    def run(self, stop: threading.Event, keep_plugin: bool = False) -> int:
        """Serve until `stop`; 0 on a clean shutdown, 1 on a fatal install error.

        On the way out the plugin stays installed when `keep_plugin` is set or the installer's
        `keep_plugin_on_shutdown()` says this is an upgrade."""
        self._note_stop_time(stop)
        try:
            self._start_endpoints()
            if not self._take_run_dir(stop):
                return 0  # stopped while another agent held the node
            self._start_sockets()
            if self.cfg.refusal:  # not ready, and nothing installed or repaired until SIGTERM
                self._start_node_gate()
                log.error("not ready: %s", self.cfg.refusal)
                stop.wait()
                return 0
            self._learn()
            self._start_node_gate()
            self._install_attempted = True
            try:
                # stop= lets SIGTERM interrupt the wait for a primary CNI config
                self.installer.install(stop=stop)
            except Exception as exc:
                log.error("install failed: %s", exc)
                return 1
            finally:
                self._installing = False
            if self.plugin_token is not None:
                self.plugin_token.start(self._rewrite_kubeconfig)
            self._start_controller()
            self.started.set()
            self._watch_installer(stop)
            log.info("shutting down")
            return 0
        finally:
            self._shutdown(keep_plugin)

    def render_metrics(self) -> bytes:
        """Prometheus text, with istio_cni_install_ready refreshed first."""
        self.ready()
        return self.metrics.render()

    def _note_stop_time(self, stop: threading.Event) -> None:
        """The grace period runs from SIGTERM, not from when the watch loop noticed it."""
        def wait() -> None:
            stop.wait()
            self._stopped_at = time.monotonic()

        threading.Thread(target=wait, name="sigterm-clock", daemon=True).start()

    def _needs(self) -> list[Need]:
        """What the agent will ask the API, each with what it is for."""
        ns, rc, gate = self.cfg.namespace, self.cfg.repair, self.cfg.node_gate
        needs = []
        if ns and self.cfg.pod_name:
            needs.append(Need(AccessQuestion("get", "pods", namespace=ns,
                                             name=self.cfg.pod_name),
                              "its own grace period: else 30 s is assumed"))
        if rc.enabled:
            for verb in ("list", "watch"):
                needs.append(Need(AccessQuestion(verb, "pods"), "the repair controller"))
            needs.append(Need(AccessQuestion("create", "events", namespace=ns),
                              "repair events"))
            needs.append(Need(AccessQuestion("patch", "events", namespace=ns),
                              "counting a repeated repair event instead of posting it anew"))
        if self.policy.uninstall == "auto" and ns:
            needs.append(Need(self.policy.daemonset_question(),
                              "telling an upgrade from an uninstall at once: else grants are "
                              "watched for withdrawal for a few seconds at shutdown"))
        if ns and self.cfg.plugin_service_account:
            needs.append(Need(token_question(ns, self.cfg.plugin_service_account),
                              "the plugin's own credential: else this pod's token, which dies "
                              "with this pod"))
        node = rc.node_name
        if gate.taint_key:
            needs.append(Need(AccessQuestion("patch", "nodes", name=node),
                              "removing the startup taint"))
        if gate.condition_type:
            needs.append(Need(AccessQuestion("patch", "nodes", subresource="status",
                                             name=node), "the node condition"))
        return needs

    def _learn(self) -> None:
        """Once, before the install: permissions, the grace period, the plugin's token."""
        if self.api is None:
            return
        if self.selfapi is None:
            self.selfapi = SelfApi(self.api.api_client)
        self.permissions = review(self.selfapi, self._needs())
        self.grace = read_grace(self.selfapi, self.cfg.namespace, self.cfg.pod_name)
        self._start_plugin_token()

    def _start_plugin_token(self) -> None:
        ns, account = self.cfg.namespace, self.cfg.plugin_service_account
        if not account:
            log.info("plugin credential: this pod's own token (PLUGIN_SERVICE_ACCOUNT is "
                     "empty): once this pod is deleted, the plugin's API calls fail until a "
                     "new agent runs")
            return
        allowed = self.permissions.allows(token_question(ns, account)) if ns else False
        if not allowed:
            log.warning(
                "plugin credential: this pod's own token, because this agent may not create "
                "tokens for ServiceAccount %s/%s (%s): once this pod is deleted (a failed "
                "rollout), every pod on this node fails its ADD until a new agent runs. Grant "
                "`create serviceaccounts/token` on it (daemonset.yaml's Role istio-cni-node) "
                "and bind it only `pods: get`", ns or "(no POD_NAMESPACE)", account,
                "not granted" if allowed is False else "unknown")
            return
        token = PluginToken(self.selfapi, ns, account, self.cfg.repair.node_name,
                            self.cfg.plugin_token_seconds)
        token.renew()  # a failure: this pod's token for now, the renewal thread retries
        self.plugin_token = token
        if hasattr(self.installer, "token_source"):  # the real installer writes it
            self.installer.token_source = token.current  # type: ignore[attr-defined]

    def _rewrite_kubeconfig(self) -> None:
        self.installer.rewrite_kubeconfig()

    def _start_endpoints(self) -> None:
        """Health and metrics first: a waiting agent still answers /readyz with its reason."""
        host = self.cfg.bind_address
        self.metrics_http = metrics_server(host, self.cfg.monitoring_port, self.render_metrics)
        self.health = health_server(host, self.cfg.health_port, self.ready)
        log.info("health on :%d, metrics on :%d", self.health.port, self.metrics_http.port)

    def _take_run_dir(self, stop: threading.Event) -> bool:
        """Hold `<run dir>/agent.lock` (node_daemon.runlock) before touching anything shared;
        while another agent holds it, wait, not ready. False if `stop` came first."""
        lock = self._run_lock = RunDirLock(self.cfg.run_dir)
        if lock.acquire():
            return True
        self._not_ready = (f"another istio-cni agent (pid {lock.holder()}) holds {lock.path}: "
                           "waiting for it to exit (one agent per node)")
        self._waiting_for_lock = True
        log.error("not ready: %s; this agent leaves the node's sockets, taint and plugin "
                  "alone until then", self._not_ready)
        while not stop.wait(LOCK_RETRY_SECONDS):
            if lock.acquire():
                log.info("took %s: the other agent is gone, starting", lock.path)
                self._not_ready = ""
                self._waiting_for_lock = False
                return True
        return False

    def _start_sockets(self) -> None:
        self.logsink = LogSink(self.cfg.log_socket, self.metrics)
        service = CniService(self.metrics, self.ready, self._cached_pod, self.api)
        self.cni_server = CniServer(self.cfg.run_dir / "cni.sock", service)
        log.info("plugin log socket %s, agent-served ADD socket %s", self.cfg.log_socket,
                 self.cni_server.path)

    def _watch_installer(self, stop: threading.Event) -> None:
        """The installer's watch until `stop`. It handles the node's states itself (inotify
        gone included: it polls), so an exception is a bug: logged with its traceback, the
        agent not ready meanwhile, and the watch started again after a backoff rather than
        the agent exiting (which would take repair, drift and the sockets with it)."""
        backoff = 1.0
        while True:
            try:
                self.installer.watch(stop)
                return
            except Exception as exc:  # noqa: BLE001 - see the docstring
                self._not_ready = f"the installer's watch failed ({exc}); restarting it"
                log.exception("the installer's watch failed; restarting it in %.0f s",
                              backoff)
            if stop.wait(backoff):
                return
            backoff = min(WATCH_RESTART_MAX, backoff * 2)
            self._not_ready = ""

    def _cached_pod(self, key: str) -> dict[str, Any] | None:
        """The repair controller's cached pod `namespace/name`, only while its watch is
        current (None before it runs)."""
        controller = self.controller
        return controller.informer.current(key) if controller is not None else None

    def _start_controller(self) -> None:
        rc = self.cfg.repair
        if not rc.enabled or self.api is None:
            log.info("repair controller disabled")
            return
        finder = self.finder or NetnsFinder(self.cfg.host_proc)
        reporter = Reporter(self.api, self.metrics, rc.node_name)
        mode = self.cfg.rule_mode._replace(warm=True)  # a long-lived process: the node's facts kept
        actions = Actions(rc, self.api, reporter, finder, mode)
        drift = DriftChecker(rc, reporter, finder, mode,
                             fix=self.cfg.drift_repair)
        self.controller = RepairController(self.api, rc, actions, drift, self.cfg.watch_timeout,
                                           self.cfg.drift_interval, self.cfg.watch_stale_after)
        exit_when_stuck()  # its worker enters pod netns: one stuck there ends the process
        self.controller.start()
        log.info("repair controller watching pods with %s (mode: %s)", rc.field_selector(),
                 rc.mode or "none")

    def _start_node_gate(self) -> None:
        """From the start, so the condition says False while the install waits."""
        gate = self.cfg.node_gate
        if not gate.enabled:
            return
        nodes = self.nodes
        if nodes is None and self.api is not None:
            nodes = NodeApi(self.api.api_client)
        if nodes is None:
            log.warning("node readiness gate: no API access; the node's taint and condition "
                        "are left alone")
            return
        gate = self._granted_gate(gate)
        if not gate.enabled:
            return
        node = self.cfg.repair.node_name
        confined: Callable[[], bool] | None = None
        if self.selfapi is not None:
            confined = lambda: policy_confines(self.selfapi, node, gate)  # noqa: E731
        self.node_gate = NodeGate(nodes, node, gate, self.readiness, confined=confined)
        self.node_gate.start()

    def _granted_gate(self, gate: NodeGateConfig) -> NodeGateConfig:
        """The gate's halves this agent may do; each refused half is turned off with one line
        saying how to grant it."""
        node = self.cfg.repair.node_name
        taint_q = AccessQuestion("patch", "nodes", name=node)
        status_q = AccessQuestion("patch", "nodes", subresource="status", name=node)
        if gate.taint_key and self.permissions.allows(taint_q) is False:
            log.warning("node readiness gate: the startup taint %s is not removed: this agent "
                        "may not patch nodes. Grant it (daemonset.yaml's ClusterRole "
                        "istio-cni-node-readiness, with node-policy.yaml confining it), let "
                        "istiod's untaint controller remove it (pilot.taint.enabled), or set "
                        "NODE_READINESS_TAINT_KEY=none", gate.taint_key)
            gate = replace(gate, taint_key="")
        if gate.condition_type and self.permissions.allows(status_q) is False:
            log.warning("node readiness gate: no %s condition: this agent may not patch "
                        "nodes/status. Grant it (daemonset.yaml's ClusterRole "
                        "istio-cni-node-readiness) or set NODE_READINESS_CONDITION_TYPE=\"\"",
                        gate.condition_type)
            gate = replace(gate, condition_type="")
        return gate

    def _shutdown(self, keep_plugin: bool) -> None:
        """Every step within what is left of the grace period (from SIGTERM)."""
        started = self._stopped_at or time.monotonic()
        deadline = self.grace.deadline(started)
        if self._install_attempted and not keep_plugin:
            clock = Clock(self.grace.decision_deadline(started))
            # decided while the agent still serves pods and repairs
            keep_plugin = decide(self.policy, self.selfapi, self.permissions, clock).keep

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        # the gate first (the uninstall is no readiness loss for it to publish), then the
        # uninstall, which is what the node depends on; the rest with what time is left
        if self.node_gate is not None:
            self.node_gate.stop(timeout=min(0.5, left()))
        if self.plugin_token is not None:
            self.plugin_token.stop()
        if self._install_attempted:
            try:
                self.installer.uninstall(keep_plugin)
            except Exception as exc:
                log.error("uninstall failed: %s", exc)
            if not keep_plugin and self.node_gate is not None:
                # a restart keeps the plugin and the node stays ready; this node has none now
                self.node_gate.publish_final(Readiness(
                    False, Reason.PLUGIN_UNINSTALLED, "istio-cni plugin uninstalled (agent "
                    "stopped)"), timeout=left())
        steps = [("stop the repair controller", self.controller.stop)] if self.controller else []
        steps += [(f"stop {name}", server.stop) for name, server in (
            ("the health server", self.health), ("cni.sock", self.cni_server),
            ("log.sock", self.logsink), ("the metrics server", self.metrics_http))
            if server is not None]
        _bounded(steps, left())
        if self._run_lock is not None:
            self._run_lock.release()  # last: the next agent starts after all of the above


def _bounded(steps: list[tuple[str, Callable[[], None]]], timeout: float) -> None:
    """Run `steps` side by side, waiting for them at most `timeout` seconds in all (a step
    still running then goes on in the background, and is named)."""
    deadline = time.monotonic() + max(0.0, timeout)
    threads = []
    for what, step in steps:
        thread = threading.Thread(target=step, name=what, daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    late = [t.name for t in threads if t.is_alive()]
    if late:
        log.warning("shutdown: %s did not finish within the grace period; exiting anyway",
                    ", ".join(late))


def run(cfg: DaemonConfig, installer: Installer, api: Any, stop: threading.Event,
        keep_plugin: bool = False, policy: ShutdownPolicy | None = None) -> int:
    """The `run` command's one library call."""
    return Agent(cfg, installer, api, policy=policy or ShutdownPolicy(
        namespace=cfg.namespace)).run(stop, keep_plugin)
