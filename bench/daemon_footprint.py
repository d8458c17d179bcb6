"""Memory and CPU of the node daemon's repair controller with 1,000 pods on its node.

    .venv/bin/python bench/daemon_footprint.py [--pods 1000] [--churn-seconds 10] [--rate 50]

The API stand-in (tests/kubeapi) runs in this process; the controller runs in a child process
(the real `kubernetes` client, informer, queue and worker, label mode, drift off) so its RSS and
CPU are its own, sampled with psutil. Phases: idle (no pods), after listing/watching N pods of
its node (plus N on another node, filtered out server-side), and under churn (status updates at
`--rate` per second, one in ten making a pod broken, which the controller then labels).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

NODE = "bench-node"


def child(kubeconfig: str) -> None:
    """The daemon side: a repair controller; answers "count" with its cache size."""
    from node_daemon.actions import Actions, Reporter
    from node_daemon.config import RepairConfig
    from node_daemon.controller import RepairController
    from node_daemon.kubeapi import PodApi, load_api_client
    from node_daemon.metrics import Metrics

    api = PodApi(load_api_client(kubeconfig))
    cfg = RepairConfig(node_name=NODE, label_pods=True)
    metrics = Metrics()
    c = RepairController(api, cfg, Actions(cfg, api, Reporter(api, metrics, NODE)), None)
    c.start()
    for line in sys.stdin:
        if line.strip() == "count":
            labelled = metrics.value("istio_cni_repair_pods_repaired_total", type="label",
                                     result="success")
            print(json.dumps({"cached": len(c.informer.cache), "labelled": labelled,
                              "synced": c.synced}), flush=True)
    c.stop()


def pod(i: int, node: str, broken: bool = False) -> dict:
    from tests.node_daemon.conftest import BROKEN_WAITING, COMPLETED, make_pod

    return make_pod(f"app-{i}", namespace=f"ns-{i % 20}", node=node,
                    init_status=BROKEN_WAITING if broken else COMPLETED,
                    ip=f"10.{200 + i // 65536}.{i // 256 % 256}.{i % 256}", phase="Running")


class Daemon:
    def __init__(self, kubeconfig: Path) -> None:
        import psutil

        self.proc = subprocess.Popen([sys.executable, __file__, "--child", str(kubeconfig)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ps = psutil.Process(self.proc.pid)

    def ask(self) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def wait(self, pred, what: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.ask()
            if pred(state):
                return state
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for {what}")

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss_mib(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def stop(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def measure(daemon: Daemon, seconds: float, work=None) -> tuple[float, float]:
    """(CPU % of one core, peak RSS MiB) over `seconds`, running `work(elapsed)` meanwhile."""
    c0, t0, peak = daemon.cpu(), time.monotonic(), daemon.rss_mib()
    while (elapsed := time.monotonic() - t0) < seconds:
        if work:
            work(elapsed)
        else:
            time.sleep(0.1)
        peak = max(peak, daemon.rss_mib())
    return 100 * (daemon.cpu() - c0) / (time.monotonic() - t0), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--churn-seconds", type=float, default=10.0)
    ap.add_argument("--idle-seconds", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=50.0, help="pod updates per second")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return

    from tests.kubeapi.fixtures import write_kubeconfig
    from tests.kubeapi.server import KubeApiServer
    from tests.node_daemon.conftest import BROKEN_WAITING

    rows = []
    with KubeApiServer() as api, tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(write_kubeconfig(Path(tmp), api))
        try:
            daemon.wait(lambda s: s["synced"], "initial sync")
            cpu, rss = measure(daemon, args.idle_seconds)
            rows.append(("idle, 0 pods", 0, rss, cpu, len(api.requests)))

            t0 = time.monotonic()
            for i in range(args.pods):
                api.add_pod(pod(i, NODE))
                api.add_pod(pod(args.pods + i, "other-node"))
            daemon.wait(lambda s: s["cached"] == args.pods, f"{args.pods} pods cached")
            load = time.monotonic() - t0
            cpu, rss = measure(daemon, args.idle_seconds)
            rows.append((f"watching {args.pods} pods, idle", args.pods, rss, cpu,
                         len(api.requests)))

            sent = {"n": 0, "broken": 0}

            def churn(elapsed: float) -> None:
                while sent["n"] < elapsed * args.rate:
                    i = sent["n"] % args.pods
                    if sent["n"] % 10 == 9:
                        status = {"initContainerStatuses": [BROKEN_WAITING]}
                        sent["broken"] += 1
                    else:
                        status = {"message": f"tick {sent['n']}"}
                    api.update_pod(f"ns-{i % 20}", f"app-{i}", {"status": status})
                    sent["n"] += 1
                time.sleep(0.01)

            cpu, rss = measure(daemon, args.churn_seconds, churn)
            rows.append((f"churn {args.rate:g} updates/s", args.pods, rss, cpu,
                         len(api.requests)))
            final = daemon.wait(lambda s: s["labelled"] > 0, "broken pods labelled")
        finally:
            daemon.stop()

    print(f"repair controller footprint ({args.pods} pods on its node, {args.pods} elsewhere; "
          f"initial load+sync {load:.1f}s)")
    print(f"{'phase':<32} {'pods':>6} {'RSS MiB':>8} {'CPU %':>7} {'API requests':>13}")
    for phase, n, rss, cpu, reqs in rows:
        print(f"{phase:<32} {n:>6} {rss:>8.1f} {cpu:>7.1f} {reqs:>13}")
    print(f"churn: {sent['n']} updates sent, {sent['broken']} made a pod broken; "
          f"{final['labelled']:.0f} pods labelled so far")


if __name__ == "__main__":
    main()
