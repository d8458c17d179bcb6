"""50 concurrent ADDs on 50 pod netns: all succeed? wall time and per-ADD p99. With
`--agent`, 120 concurrent ADDs served by the node agent: all served?

    .venv/bin/python bench/concurrency.py [--pods 50] [--backend nft] [--rounds 3]
    .venv/bin/python bench/concurrency.py --agent [--pods 120] [--rounds 3]

The pod netns (`icni-bench-*`, a veth with an address each) and the pods in the API stand-in
are made up front; then one thread per pod, released together by a barrier, each run the
frozen plugin's ADD through the CNI protocol (exec → result on stdout). Per-ADD latencies are
pooled over `--rounds` rounds (fresh netns each round); the wall time is from the barrier to
the last ADD's exit. Success is checked per call (exit 0) and by the rules in place (the
CHECK logic); with no agent also by the plugin's own events (`redirected`), with `--agent` by
the agent's count of the ADDs it answered (none may fall back to the plugin's in-process path:
no refused connection, no "fallback" answer). The runtime passes K8S_POD_UID, as containerd
does, so the agent answers from its watch cache.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    BenchNode,
    Row,
    Stats,
    Table,
    bench_node,
    make_pod_netns,
    ms,
    pod_ip,
    timing_row,
)
from testbed.agent import ServingAgent, serve_plugin_calls  # noqa: E402
from testbed.cleanup import Cleanup  # noqa: E402
from testbed.kubeapi import kubernetes_api_client  # noqa: E402
from testbed.netns import path  # noqa: E402
from testbed.pods import workload  # noqa: E402

PODS = 50
AGENT_PODS = 120


@dataclass
class ConcurrencyResult:
    pods: int
    backend: str
    latencies: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    redirected: int = 0
    """ADD events with outcome `redirected` received on log.sock (best effort by design)."""
    in_place: int = 0
    """Netns whose rules the plugin's CHECK logic finds complete after the round."""
    calls: int = 0
    agent: bool = False
    served: int = 0
    """ADDs the agent answered "ok" (with `--agent`)."""
    not_served: int = 0
    """ADDs the agent deferred or refused at accept (each done in-process by its plugin)."""


def one_round(node: BenchNode, pods: int, backend: str, result: ConcurrencyResult,
              specs: list[dict], agent: ServingAgent | None = None) -> None:
    with Cleanup() as cleanup:
        names = [make_pod_netns(cleanup, pod_ip(1000 + i), "conc") for i in range(pods)]
        served_before = agent.served("ADD", "ok") if agent else 0
        missed_before = _not_served(agent) if agent else 0
        barrier = threading.Barrier(pods + 1)
        lat: list[float] = [0.0] * pods
        ends: list[float] = [0.0] * pods
        lock = threading.Lock()

        def worker(i: int) -> None:
            barrier.wait(timeout=60)
            t, call = node.call("ADD", names[i], specs[i], backend, pod_ip(1000 + i))
            lat[i], ends[i] = t, time.perf_counter()
            if call.status != 0:
                with lock:
                    result.failures.append(f"{names[i]}: exit {call.status}: "
                                           f"{call.stdout.strip()[:200]}")

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(pods)]
        for t in threads:
            t.start()
        before = len(node.sink.events)
        barrier.wait(timeout=60)
        start = time.perf_counter()
        for t in threads:
            t.join(timeout=180)
        result.walls.append(max(ends) - start)
        result.latencies.extend(lat)
        result.calls += pods
        deadline = time.monotonic() + 5
        while len(node.sink.events) - before < pods and time.monotonic() < deadline:
            time.sleep(0.01)
        events = node.sink.events[before:]
        result.redirected += sum(1 for e in events if e.get("outcome") == "redirected")
        del node.sink.events[:]
        if agent is not None:
            result.served += int(agent.served("ADD", "ok") - served_before)
            result.not_served += int(_not_served(agent) - missed_before)
        result.in_place += sum(1 for name in names if _rules_in_place(name, specs[0], backend))


def _rules_in_place(ns: str, pod: dict, backend: str) -> bool:
    from cni.pipeline import check_pod, plan

    diff = check_pod(path(ns), plan(pod)[2], backend)
    return not diff.missing and not diff.extra


def _not_served(agent: ServingAgent) -> float:
    return agent.served("ADD", "fallback") + agent.server.refused


def measure(plugin_argv: list[str], pods: int = 50, backend: str = "nft",
            rounds: int = 3, agent: bool = False) -> ConcurrencyResult:
    result = ConcurrencyResult(pods, backend, agent=agent)
    with bench_node(plugin_argv) as node, Cleanup() as cleanup:
        specs = [node.api.add_pod(workload("meshed-pod", name=f"bench-conc-{i}"))
                 for i in range(pods)]
        serving = (serve_plugin_calls(cleanup, node.run_dir, kubernetes_api_client(node.api))
                   if agent else None)
        for _ in range(rounds):
            one_round(node, pods, backend, result, specs, serving)
    return result


def table(r: ConcurrencyResult) -> Table:
    t = Table(f"{r.pods} concurrent ADDs {'through the agent' if r.agent else 'with no agent'} "
              f"on {r.pods} netns ({r.backend}, {len(r.walls)} rounds)")
    ok = not r.failures and r.in_place == r.calls
    t.add(Row("ADDs succeeded (exit 0, rules in place)", r.calls,
              f"{r.calls - len(r.failures)} ok, {r.in_place} in place", "", "", "all", ok))
    if r.agent:
        t.add(Row("ADDs served by the agent (none refused, none fell back)", r.calls,
                  f"{r.served} served, {r.not_served} not", "", "", "all",
                  r.served == r.calls and r.not_served == 0))
    else:
        t.add(Row("  ADD events received on log.sock (best effort, 100 ms)", r.calls,
                  str(r.redirected), "", "", "", None))
    w = Stats.of(r.walls)
    t.add(Row("wall time, barrier → last exit", w.n, ms(w.median), ms(max(r.walls)), "", "",
              None))
    t.add(timing_row("per-ADD latency under concurrency", r.latencies))
    for f in r.failures[:5]:
        t.notes.append(f"failure: {f}")
    t.notes.append("wall time: the p99 column shows the slowest round")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=None, help="default 50, with --agent 120")
    ap.add_argument("--backend", default="nft")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--agent", action="store_true",
                    help="the node agent serves the ADDs (cni.sock, its watch cache)")
    args = ap.parse_args()
    pods = args.pods or (AGENT_PODS if args.agent else PODS)
    from bench.common import print_machine, stage_frozen_plugin

    print_machine()
    with tempfile.TemporaryDirectory(prefix="icni-bench-") as tmp:
        plugin = stage_frozen_plugin(Path(tmp))
        r = measure([str(plugin)], pods, args.backend, args.rounds, args.agent)
    table(r).print()


if __name__ == "__main__":
    main()
