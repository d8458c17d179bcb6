"""Prometheus metrics of the node daemon: upstream's names for installs and repairs, plus ours.

One `Metrics` object owns its own registry (so tests and the daemon never share global state);
`run` serves it on MONITORING_PORT. Upstream's: `istio_cni_installs_total{result}`,
`istio_cni_install_ready`, `istio_cni_repair_pods_repaired_total{type,result}`. Ours: the plugin's
ADD outcomes and per-phase latency (reported over the log socket, or recorded here for the ADDs
the agent serves), agent-served calls and where their pods came from (and why not the cache),
drift checks, the pod watch's currency and the controller's memory (read at each scrape), and
whether the installer's watch has fallen back to polling.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cni.plugin_log import AddOutcome

ADD_PHASES = ("lookup", "rules", "apply", "total")
# ADD latency: an excluded pod takes ~2 ms, a redirected one ~10-50 ms, retries up to 30 s.
ADD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class WatchState:
    """The repair controller as a scrape sees it."""

    silent_seconds: float | None
    """Since the pod watch last heard from the API (an event, a bookmark, a list); None:
    never."""
    stale: bool
    """Not heard from within the bound: the watch cache is no source (readiness says so)."""
    relists: int
    dropped: int
    """Pods given up on after the last attempt (each still exists)."""
    remembered_events: int
    """Events remembered for deduplication (bounded)."""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.install_ready = Gauge("istio_cni_install_ready",
                                   "Whether the CNI plugin installation is ready", registry=r)
        self.repairs = Counter("istio_cni_repair_pods_repaired",
                               "Total number of pods repaired by the repair controller",
                               ["type", "result"], registry=r)
        self.plugin_adds = Counter("istio_cni_plugin_add", "CNI ADD calls by outcome",
                                   ["outcome"], registry=r)
        self.plugin_add_seconds = Histogram(
            "istio_cni_plugin_add_duration_seconds", "CNI ADD latency by phase",
            ["phase"], buckets=ADD_BUCKETS, registry=r)
        self.drift = Counter("istio_cni_drift_pods",
                             "Redirected pods checked for rule drift, by result "
                             "(in_sync, success = put back, detected = left alone, fail)",
                             ["result"], registry=r)
        self.served = Counter("istio_cni_agent_served",
                              "ADD and CHECK calls the plugin handed to the agent, by command "
                              "and result (ok, error, fallback = the plugin did it itself)",
                              ["command", "result"], registry=r)
        self.served_pod_source = Counter(
            "istio_cni_agent_pod_lookups", "Pods of agent-served calls, by source (cache, get)",
            ["source"], registry=r)
        self.served_cache_misses = Counter(
            "istio_cni_agent_pod_cache_misses",
            "Agent-served calls whose pod the watch cache could not prove (then one GET), by "
            "reason (no_uid = the runtime passed no K8S_POD_UID, not_cached = absent or the "
            "watch not current, other_uid = the cached pod is another pod of that name)",
            ["reason"], registry=r)
        self.plugin_log_lines = Counter("istio_cni_plugin_log_lines",
                                        "Plugin log lines received over the log socket",
                                        registry=r)

    def export_installs(self, counts: Callable[[], Mapping[str, float]]) -> None:
        """Serve `istio_cni_installs_total{result}` from `counts()`, read at every scrape.

        The installer keeps the one count of installs (its watch loop re-installs on its own);
        this exports it rather than keeping a second counter in step with it."""
        self.registry.register(_InstallsCollector(counts))

    def export_watch(self, state: Callable[[], WatchState | None]) -> None:
        """Serve the pod watch's currency and the controller's memory from `state()`, read at
        every scrape (nothing while there is no controller)."""
        self.registry.register(_WatchCollector(state))

    def export_install_watch(self, state: Callable[[], tuple[bool, float]]) -> None:
        """Serve the installer's watch state from `state()` = (polling, fallbacks), read at
        every scrape: `istio_cni_install_watch_polling` (1 while inotify is unavailable and
        the installer polls) and `istio_cni_install_watch_fallbacks_total`."""
        self.registry.register(_InstallWatchCollector(state))

    def repaired(self, kind: str, result: str) -> None:
        self.repairs.labels(type=kind, result=result).inc()

    def plugin_add(self, outcome: AddOutcome, phases: dict[str, float]) -> None:
        self.plugin_adds.labels(outcome=outcome).inc()
        for phase, seconds in phases.items():
            self.plugin_add_seconds.labels(phase=phase).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 when absent): for tests and the admin output."""
        got = self.registry.get_sample_value(name, labels)
        return got or 0.0


class _InstallsCollector(Collector):
    """`istio_cni_installs_total{result}` as a view of a count kept elsewhere."""

    def __init__(self, counts: Callable[[], Mapping[str, float]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("istio_cni_installs", "Total number of CNI plugin installs",
                                     labels=["result"])
        for result, n in sorted(self._counts().items()):
            family.add_metric([result], n)
        yield family


class _WatchCollector(Collector):
    """The pod watch and the controller's memory, as a view of the controller's own state."""

    def __init__(self, state: Callable[[], WatchState | None]) -> None:
        self._state = state

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        state = self._state()
        if state is None:
            return
        if state.silent_seconds is not None:
            yield GaugeMetricFamily(
                "istio_cni_pod_watch_silent_seconds",
                "Seconds since the pod watch last heard from the API (event, bookmark or list)",
                value=state.silent_seconds)
        yield GaugeMetricFamily(
            "istio_cni_pod_watch_stale",
            "1 while the pod watch has not heard from the API within its bound (the cache is "
            "then no source and the agent not ready)", value=1 if state.stale else 0)
        yield CounterMetricFamily("istio_cni_pod_watch_relists",
                                  "Full LISTs of this node's pods (start, 410, silence)",
                                  value=state.relists)
        yield GaugeMetricFamily("istio_cni_repair_dropped_pods",
                                "Pods the repair controller gave up on (they still exist)",
                                value=state.dropped)
        yield GaugeMetricFamily("istio_cni_repair_remembered_events",
                                "Events remembered to count repeats instead of posting anew",
                                value=state.remembered_events)


class _InstallWatchCollector(Collector):
    """The installer's watch mode, as a view of the installer's own state."""

    def __init__(self, state: Callable[[], tuple[bool, float]]) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        polling, fallbacks = self._state()
        yield GaugeMetricFamily("istio_cni_install_watch_polling",
                                "1 while the installer polls the node's CNI dirs because "
                                "inotify is unavailable (instance or watch limit reached)",
                                value=1 if polling else 0)
        yield CounterMetricFamily("istio_cni_install_watch_fallbacks",
                                  "Times the installer's watch fell back to polling",
                                  value=fallbacks)
