"""One drift pass over a node's pods: the /proc scan, then a CHECK of each pod in its netns.

    .venv/bin/python bench/drift_pass.py [--pods 50] [--passes 10]

`--pods` pod netns (`icni-bench-drift-*`, a veth with a unique 10.219.x.y and a "pause"
process inside), each programmed with the meshed workload's rules; each sample is one
`DriftChecker.check_all` over all of them (every pod in sync, nothing written), timed with
`perf_counter`. Also printed: descriptors open before and after the passes (the scan's held
netns descriptors must all be closed again).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import NETNS_PREFIX, Stats  # noqa: E402
from testbed.cleanup import Cleanup  # noqa: E402
from testbed.netns import create_netns  # noqa: E402

NODE = "bench-node"


def drift_passes(pods: int, passes: int) -> tuple[list[float], int, int]:
    """(seconds per pass, open descriptors before, after)."""
    from cni.pipeline import plan, program_pod
    from node_daemon.actions import Reporter
    from node_daemon.config import RepairConfig
    from node_daemon.drift import DriftChecker
    from node_daemon.metrics import Metrics
    from node_daemon.netns_finder import NetnsFinder
    from testbed.pods import COMPLETED, make_pod

    with Cleanup() as cleanup:
        objs = []
        for i in range(pods):
            ip = f"10.219.{i // 250 % 250}.{i % 250 + 2}"
            ns = create_netns(cleanup, f"{NETNS_PREFIX}-drift", v4=ip, pause=True)
            pod = make_pod(f"bench-{i}", node=NODE, ip=ip, init_status=COMPLETED,
                           phase="Running")
            program_pod(ns.path, plan(pod)[2])
            objs.append(pod)
        checker = DriftChecker(RepairConfig(node_name=NODE), Reporter(None, Metrics(), NODE),
                               NetnsFinder(Path("/proc")), fix=False)
        before = len(os.listdir("/proc/self/fd"))
        out = []
        for _ in range(passes):
            t0 = time.perf_counter()
            results = checker.check_all(objs)
            out.append(time.perf_counter() - t0)
            bad = [r for r in results if r.result != "in_sync"]
            if bad or len(results) != pods:
                raise RuntimeError(f"expected {pods} pods in sync, got {bad or len(results)}")
        return out, before, len(os.listdir("/proc/self/fd"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--pods", type=int, default=50)
    ap.add_argument("--passes", type=int, default=10)
    args = ap.parse_args()
    samples, before, after = drift_passes(args.pods, args.passes)
    s = Stats.of(samples)
    print(f"drift pass over {args.pods} pods: n={s.n} median {s.median * 1000:.0f} ms "
          f"(min {min(samples) * 1000:.0f}, max {max(samples) * 1000:.0f}); "
          f"open descriptors before {before}, after {after}")


if __name__ == "__main__":
    main()
