"""The node agent's /proc scan alone: finding (and holding) pod netns among a node's.

    .venv/bin/python bench/netns_scan.py [--pods 50] [--scans 20]

`--pods` pod netns (`icni-bench-scan-*`, a veth with a unique 10.218.x.y and a "pause" process
inside); each sample is one `NetnsFinder.scan` and the lookup of the pods' netns in it, timed
with `perf_counter`, asking for every pod (a drift pass) or for the newest one only (repair in
place, `explain`: the pod the scan's order reaches last). Whatever else runs on this machine
is scanned too, as on a node.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import NETNS_PREFIX, Stats  # noqa: E402
from testbed.cleanup import Cleanup  # noqa: E402
from testbed.netns import create_netns  # noqa: E402


def scans(pods: int, count: int) -> dict[str, list[float]]:
    """Seconds per scan: {"all": asking for every pod, "one": for the newest only}."""
    from node_daemon.netns_finder import NetnsFinder

    with Cleanup() as cleanup:
        ips = [f"10.218.{i // 250 % 250}.{i % 250 + 2}" for i in range(pods)]
        for ip in ips:
            create_netns(cleanup, f"{NETNS_PREFIX}-scan", v4=ip, pause=True)
        finder = NetnsFinder(Path("/proc"))
        out: dict[str, list[float]] = {"all": [], "one": []}
        for _ in range(count):
            for label, wanted in (("all", ips), ("one", ips[-1:])):
                t0 = time.perf_counter()
                with finder.scan(wanted) as table:
                    found = [ip for ip in wanted if ip in table]
                out[label].append(time.perf_counter() - t0)
                if len(found) != len(wanted):
                    raise RuntimeError(f"found {len(found)} of {len(wanted)} pod IPs")
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--pods", type=int, default=50)
    ap.add_argument("--scans", type=int, default=20)
    args = ap.parse_args()
    for label, samples in scans(args.pods, args.scans).items():
        s = Stats.of(samples)
        print(f"scan among {args.pods} pod netns, asking for {label}: n={s.n} median "
              f"{s.median * 1000:.1f} ms (min {min(samples) * 1000:.1f}, "
              f"max {max(samples) * 1000:.1f})")


if __name__ == "__main__":
    main()
