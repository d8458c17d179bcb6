"""Node daemon latencies: repair in place, and the installer's re-insertion of its entry.

    .venv/bin/python bench/daemon_latency.py [--repairs 20] [--reinserts 50]

Repair in place: the repair controller (repair mode, real `kubernetes` client, informer and
worker) watches the API stand-in; each sample is a fresh pod netns (`icni-bench-*`, a veth with
a unique 10.218.x.y and a "pause" process inside) whose pod is known to the controller as
healthy; the clock starts when the API stand-in commits the status update that makes the pod
broken (istio-validation last terminated with 126) and stops when the controller's
programming call has returned (its result is being recorded: rules in place), checked
afterwards with the plugin's CHECK. The time until the metric is visible (after the Event
POST) is reported too.

Re-insertion: `installer.Installer(...).watch(stop)` in a thread on a tmp net.d holding
Calico's conflist; each sample overwrites the conflist with the original (truncate + write in
place, as Calico's install-cni does; the clock starts after close()) and polls the file every
millisecond until our entry is back. The fight detector (which deliberately spaces out repairs
when another writer keeps undoing them: more than 5 in 30 s) is given a threshold above the
sample count, so each sample measures the unthrottled path.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import NETNS_PREFIX, Table, timing_row  # noqa: E402
from testbed.cleanup import Cleanup  # noqa: E402
from testbed.netns import create_netns  # noqa: E402
from testbed.wait import wait_for  # noqa: E402

REPAIR_NODE = "bench-node"


@dataclass
class DaemonLatency:
    repair: list[float] = field(default_factory=list)
    """Status update → rules programmed (seconds)."""
    repair_metric: list[float] = field(default_factory=list)
    """Status update → repair metric visible (after the Event POST)."""
    reinsert: list[float] = field(default_factory=list)


def repair_in_place(samples: int, max_seconds: float = 300.0) -> tuple[list[float], list[float]]:
    """(update → rules programmed, update → metric) for `samples` broken pods."""
    from cni.pipeline import check_pod, plan
    from node_daemon.config import RepairConfig
    from node_daemon.netns_finder import NetnsFinder
    from testbed.controller import start_controller
    from testbed.kubeapi import KubeApiServer, kubernetes_api_client
    from testbed.pods import BROKEN_WAITING, COMPLETED, make_pod

    programmed: list[float] = []
    visible: list[float] = []
    done_at: dict[str, float] = {}
    with KubeApiServer() as kube, Cleanup() as cleanup:
        cfg = RepairConfig(node_name=REPAIR_NODE, repair_pods=True)
        controller = start_controller(cleanup, kubernetes_api_client(kube), cfg,
                                      finder=NetnsFinder(Path("/proc")), synced_within=30)
        metrics = controller.metrics  # type: ignore[attr-defined]
        reporter = controller.actions.reporter
        record = reporter.record

        def stamped(pod: dict[str, Any], action: str, result: str, message: str) -> Any:
            if action == "repair" and result == "success":  # reconcile_rules has returned
                done_at[pod["metadata"]["name"]] = time.perf_counter()
            return record(pod, action, result, message)

        reporter.record = stamped  # type: ignore[method-assign]
        deadline = time.monotonic() + max_seconds
        for i in range(samples):
            if time.monotonic() > deadline:
                break
            name, ip = f"bench-{i}", f"10.218.{i // 250 % 250}.{i % 250 + 2}"
            with Cleanup() as sample:
                ns = create_netns(sample, f"{NETNS_PREFIX}-repair", v4=ip, ifname="eth0",
                                  pause=True)
                pod = make_pod(name, namespace="shop", node=REPAIR_NODE, ip=ip,
                               init_status=COMPLETED, phase="Pending")
                kube.add_pod(pod)
                wait_for(lambda n=name: controller.informer.get(f"shop/{n}"), 10,
                         "pod cached", interval=0.005)
                before = metrics.value("istio_cni_repair_pods_repaired_total",
                                       type="repair", result="success")
                t0 = time.perf_counter()
                kube.update_pod("shop", name,
                                {"status": {"initContainerStatuses": [BROKEN_WAITING]}})
                wait_for(lambda b=before: metrics.value(
                    "istio_cni_repair_pods_repaired_total", type="repair",
                    result="success") > b, 30, "repaired", interval=0.001)
                t_metric = time.perf_counter()
                live = kube.get_pod("shop", name)
                diff = check_pod(ns.path, plan(live)[2])
                if diff.missing or diff.extra:
                    raise RuntimeError(f"repair of {name}: rules not in place: {diff}")
                programmed.append(done_at[name] - t0)
                visible.append(t_metric - t0)
                kube.delete_pod("shop", name)
    return programmed, visible


def reinsertion(samples: int, max_seconds: float = 120.0) -> list[float]:
    """Overwrite → our entry back, `samples` times, with the watch loop in a thread.

    The installer's warnings (one per re-insertion) are silenced for the run and the logger's
    level restored afterwards, so an in-process caller (the smoke test) keeps its logging."""
    quiet = logging.getLogger("installer")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return _reinsertion(samples, max_seconds)
    finally:
        quiet.setLevel(level)


def _reinsertion(samples: int, max_seconds: float) -> list[float]:
    from installer import Installer
    from installer.watcher import FightDetector, watch
    from testbed.nodedirs import GOLDEN, has_entry, make_node_dirs

    out: list[float] = []
    with tempfile.TemporaryDirectory(prefix=f"{NETNS_PREFIX}-") as tmp:
        dirs = make_node_dirs(Path(tmp))
        original = (GOLDEN / "calico.conflist").read_text()
        path = dirs.put("10-calico.conflist", "calico.conflist")
        installer = Installer(replace(dirs.config(), plugin_log_level="info"))
        installer.install()
        stop = threading.Event()
        detector = FightDetector(threshold=samples + 10)
        thread = threading.Thread(target=watch, args=(installer, stop, detector),
                                  name="installer-watch", daemon=True)
        thread.start()
        deadline = time.monotonic() + max_seconds
        try:
            for _ in range(samples):
                if time.monotonic() > deadline:
                    break
                wait_for(lambda: installer.ready and has_entry(path), 10, "installed, idle",
                         interval=0.001)
                time.sleep(0.02)  # let our own write's quiet pass finish
                with open(path, "w") as f:  # Calico: truncate and rewrite in place
                    f.write(original)
                t0 = time.perf_counter()
                wait_for(lambda: has_entry(path), 10, "entry re-inserted", interval=0.001)
                out.append(time.perf_counter() - t0)
        finally:
            stop.set()
            thread.join(timeout=10)
            installer.uninstall()
    return out


def measure(repairs: int, reinserts: int) -> DaemonLatency:
    r = DaemonLatency()
    r.repair, r.repair_metric = repair_in_place(repairs)
    r.reinsert = reinsertion(reinserts)
    return r


def table(r: DaemonLatency) -> Table:
    import statistics

    t = Table("Node daemon latencies")
    rep = statistics.median(r.repair) if r.repair else float("inf")
    t.add(timing_row("repair in place: status update → rules programmed", r.repair,
                     target="p50 ≤ 1000", ok=rep <= 1.0))
    t.add(timing_row("  status update → repair metric (after the Event POST)",
                     r.repair_metric))
    ins = statistics.median(r.reinsert) if r.reinsert else float("inf")
    t.add(timing_row("installer re-insertion: overwrite → entry back", r.reinsert,
                     target="p50 ≤ 250", ok=ins <= 0.25))
    t.notes.append("repair: each sample a new pod and netns; the controller finds the netns "
                   "by scanning /proc for the pod IP (this host's whole /proc)")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repairs", type=int, default=20)
    ap.add_argument("--reinserts", type=int, default=50)
    args = ap.parse_args()
    from bench.common import print_machine

    print_machine()
    table(measure(args.repairs, args.reinserts)).print()


if __name__ == "__main__":
    main()
