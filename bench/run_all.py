"""Every benchmark in one run, printing every table (markdown).

    .venv/bin/python bench/run_all.py            # the full run (about 10-15 min on 2 cores)
    .venv/bin/python bench/run_all.py --quick    # a smoke run, under 2 minutes

Root is needed (network namespaces, iptables). The frozen plugin is `dist/istio-cni/istio-cni`
(build it with `scripts/build-frozen.sh`), copied privately for the run; the frozen hello-world
is built once into build/bench-hello/. Sizes of the full run: 200 interleaved iterations of
the plugin variants, 20 fresh interpreters for the in-process phases, the daemon watching
1,000 pods with 10 s of churn and 5,000 ADDs it serves, 20 repairs, 50 re-insertions, 3 rounds
of 50 concurrent ADDs with no agent and 3 of 120 through the agent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import (  # noqa: E402
    api_load,
    concurrency,
    daemon_footprint,
    daemon_latency,
    phases,
    plugin_latency,
)
from bench.common import (  # noqa: E402
    Table,
    build_hello,
    leftover_netns,
    load,
    print_machine,
    stage_frozen_plugin,
)


@dataclass(frozen=True)
class Sizes:
    """How much of everything one run measures."""

    iterations: int = 200
    warmup: int = 3
    interpreters: int = 20
    pods: int = 1000
    churn_seconds: float = 10.0
    idle_seconds: float = 3.0
    repairs: int = 20
    reinserts: int = 50
    concurrent: int = 50
    rounds: int = 3
    served: int = 5000
    """ADDs served over the daemon's cni.sock in the footprint run (RSS flat?)."""
    agent_concurrent: int = 120
    """Concurrent ADDs through the agent (all served?)."""


FULL = Sizes()
QUICK = Sizes(iterations=5, warmup=1, interpreters=3, pods=100, churn_seconds=2.0,
              idle_seconds=1.0, repairs=3, reinserts=5, concurrent=10, rounds=1, served=50,
              agent_concurrent=10)


def run(sizes: Sizes, plugin_argv: list[str], hello_argv: list[str],
        echo: bool = True) -> list[Table]:
    """Run every benchmark with `sizes`; the tables, in order (printed as they come)."""
    out: list[Table] = []

    def emit(table: Table) -> None:
        out.append(table)
        if echo:
            table.print()

    latency = plugin_latency.measure(plugin_argv, hello_argv, sizes.iterations, sizes.warmup)
    for t in plugin_latency.tables(latency):
        emit(t)
    emit(phases.table(latency, phases.inprocess(sizes.interpreters), phases.importtime()))
    footprint = daemon_footprint.run_footprint(sizes.pods, sizes.churn_seconds,
                                               sizes.idle_seconds, served=sizes.served)
    emit(daemon_footprint.table(footprint))
    emit(api_load.table(latency, footprint))
    emit(daemon_latency.table(daemon_latency.measure(sizes.repairs, sizes.reinserts)))
    emit(concurrency.table(concurrency.measure(plugin_argv, sizes.concurrent, "nft",
                                               sizes.rounds)))
    emit(concurrency.table(concurrency.measure(plugin_argv, sizes.agent_concurrent, "nft",
                                               sizes.rounds, agent=True)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    ap.add_argument("--plugin", type=Path, help="the frozen plugin (default dist/istio-cni)")
    ap.add_argument("--source", action="store_true",
                    help="run the plugin from source (python -m cni) instead of frozen")
    ap.add_argument("-n", type=int, help="override the plugin iterations")
    args = ap.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.n:
        from dataclasses import replace

        sizes = replace(sizes, iterations=args.n)
    started = time.monotonic()
    print(f"# istio-cni-py benchmarks ({'quick' if args.quick else 'full'} run)\n")
    print_machine()
    with tempfile.TemporaryDirectory(prefix="icni-bench-") as tmp:
        if args.source:
            from bench.common import source_plugin_argv

            plugin_argv = source_plugin_argv()
        else:
            plugin_argv = [str(stage_frozen_plugin(Path(tmp),
                                                   *([args.plugin] if args.plugin else [])))]
        run(sizes, plugin_argv, [str(build_hello())])
    left = leftover_netns()
    print(f"done in {time.monotonic() - started:.0f} s; load average now {load()}"
          + (f"; LEFTOVER NETNS: {left}" if left else ""))


if __name__ == "__main__":
    main()
