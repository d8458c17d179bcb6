"""API load: pod GETs per plugin call, and watch connections per node for the daemon.

    .venv/bin/python bench/api_load.py [-n 20] [--pods 100]

Counted at the API stand-in (every request it serves is recorded), never estimated:

- GETs of the pod per redirected ADD (target exactly 1), per skipped ADD (target 0), per CHECK
  and per DEL, over a short plugin_latency run of the frozen plugin;
- the node daemon (repair controller, in its own process) watching `--pods` pods of its node
  under churn: WATCH requests made over the run and TCP connections it holds to the API at the
  end (target 1 watch per node), plus its LIST requests.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Row, Table  # noqa: E402
from bench.daemon_footprint import Footprint  # noqa: E402
from bench.plugin_latency import LatencyResult  # noqa: E402

TARGETS = {"redirected ADD": 1, "skipped ADD": 0}


def table(latency: LatencyResult, footprint: Footprint) -> Table:
    """Counts per call (min/max over the calls) and the daemon's watch usage."""
    t = Table("API load", headers=("measurement", "n", "per call (median)", "min / max",
                                   "", "target", "result"))
    for kind in ("redirected ADD", "skipped ADD", "CHECK", "DEL"):
        counts = latency.gets.get(kind, [])
        if not counts:
            continue
        lo, hi = min(counts), max(counts)
        want = TARGETS.get(kind)
        t.add(Row(f"pod GETs per {kind}", len(counts), str(sorted(counts)[len(counts) // 2]),
                  f"{lo} / {hi}", "", "" if want is None else f"exactly {want}",
                  None if want is None else lo == hi == want))
    t.add(Row(f"daemon WATCH requests over the run ({footprint.pods} pods, churn)", 1,
              str(footprint.watch_requests), "", "", "1 per node",
              footprint.watch_requests == 1))
    t.add(Row("daemon TCP connections to the API at the end", 1,
              str(footprint.api_connections), "", "", "", None))
    t.add(Row("daemon LIST requests over the run", 1, str(footprint.list_requests), "", "",
              "", None))
    t.notes.append("CHECK re-reads the pod (the rules it compares depend on the pod's spec); "
                   "DEL never calls the API")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20, help="plugin iterations")
    ap.add_argument("--pods", type=int, default=100, help="pods the daemon watches")
    ap.add_argument("--churn-seconds", type=float, default=3.0)
    args = ap.parse_args()
    from bench.common import build_hello, print_machine, stage_frozen_plugin
    from bench.daemon_footprint import run_footprint
    from bench.plugin_latency import measure

    print_machine()
    with tempfile.TemporaryDirectory(prefix="icni-bench-") as tmp:
        plugin = stage_frozen_plugin(Path(tmp))
        latency = measure([str(plugin)], [str(build_hello())], args.n, warmup=1)
    footprint = run_footprint(args.pods, args.churn_seconds, idle_seconds=1.0)
    table(latency, footprint).print()


if __name__ == "__main__":
    main()
