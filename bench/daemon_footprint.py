"""Memory and CPU of the node daemon (repair controller, agent-served ADD socket) with 1,000
pods on its node, and over 5,000 ADDs it serves.

    .venv/bin/python bench/daemon_footprint.py [--pods 1000] [--churn-seconds 10] [--rate 50]
                                               [--served 5000]

The API stand-in (testbed.kubeapi) runs in this process; the controller runs in a child process
(the real `kubernetes` client, informer, queue and worker, label mode, drift off) so its RSS and
CPU are its own, sampled with psutil. Phases: idle (no pods), after listing/watching N pods of
its node (plus N on another node, filtered out server-side), under churn (status updates at
`--rate` per second, one in ten making a pod broken, which the controller then labels), and
`--served` redirected ADDs served over its `cni.sock` (each a cached meshed pod with its UID,
into a fresh netns of its own, programmed for real: the thin client's request sent from this
process), RSS sampled ten times along the way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

if TYPE_CHECKING:
    from bench.common import Table

NODE = "bench-node"
FLAT_MIB = 2.0
"""How much RSS may grow over the served ADDs after the first tenth (modules loaded, caches
warm) and still be called flat."""


def child(kubeconfig: str, run_dir: str) -> None:
    """The daemon side: a repair controller and the agent-served ADD socket (`run_dir`) on its
    cache (so the figure includes the plugin's stages the agent loads to serve ADDs); answers
    "count" with its cache size and the ADDs it served."""
    from node_daemon.cni_server import CniServer, CniService
    from node_daemon.config import RepairConfig
    from node_daemon.kubeapi import PodApi, load_api_client
    from testbed.cleanup import Cleanup
    from testbed.controller import start_controller

    cfg = RepairConfig(node_name=NODE, label_pods=True)
    with Cleanup() as cleanup:
        client = load_api_client(kubeconfig)
        c = start_controller(cleanup, client, cfg, synced_within=None)
        metrics = c.metrics  # type: ignore[attr-defined]
        service = CniService(metrics, lambda: (True, ""), c.informer.current, PodApi(client))
        cleanup.add("stop cni.sock", CniServer(Path(run_dir) / "cni.sock", service).stop)
        import cni.plugin  # noqa: F401 - what serving the first ADD loads
        for line in sys.stdin:
            if line.strip() == "count":
                labelled = metrics.value("istio_cni_repair_pods_repaired_total", type="label",
                                         result="success")
                served = {result: metrics.value("istio_cni_agent_served_total", command="ADD",
                                                result=result)
                          for result in ("ok", "error", "fallback")}
                print(json.dumps({"cached": len(c.informer.cache), "labelled": labelled,
                                  "synced": c.synced, "served": served}), flush=True)


def pod(i: int, node: str, broken: bool = False) -> dict[str, Any]:
    """Pod `i` of the run: the meshed workload on `node`, Running, a unique IP."""
    from testbed.pods import BROKEN_WAITING, COMPLETED, make_pod

    return make_pod(f"app-{i}", namespace=f"ns-{i % 20}", node=node,
                    init_status=BROKEN_WAITING if broken else COMPLETED,
                    ip=f"10.{200 + i // 65536}.{i // 256 % 256}.{i % 256}", phase="Running")


class Daemon:
    """The daemon child process, asked over stdin/stdout; sampled with psutil."""

    def __init__(self, kubeconfig: Path, run_dir: Path) -> None:
        import psutil

        self.run_dir = run_dir
        self.proc = subprocess.Popen([sys.executable, __file__, "--child", str(kubeconfig),
                                      "--run-dir", str(run_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ps = psutil.Process(self.proc.pid)

    def ask(self) -> dict:
        """The child's state: cached pods, pods labelled, synced."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def wait(self, pred: Callable[[dict], Any], what: str, timeout: float = 120) -> dict:
        """Bounded poll of the child's state until `pred` holds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.ask()
            if pred(state):
                return state
            time.sleep(0.05)
        raise SystemExit(f"timed out waiting for {what}")

    def cpu(self) -> float:
        """User + system CPU seconds of the child so far."""
        t = self.ps.cpu_times()
        return t.user + t.system

    def rss_mib(self) -> float:
        """Resident set size of the child, MiB."""
        return self.ps.memory_info().rss / 2**20

    def stop(self) -> None:
        """End the child (EOF on its stdin) and wait for it."""
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def measure(daemon: Daemon, seconds: float,
            work: Callable[[float], None] | None = None) -> tuple[float, float]:
    """(CPU % of one core, peak RSS MiB) over `seconds`, running `work(elapsed)` meanwhile."""
    c0, t0, peak = daemon.cpu(), time.monotonic(), daemon.rss_mib()
    while (elapsed := time.monotonic() - t0) < seconds:
        if work:
            work(elapsed)
        else:
            time.sleep(0.1)
        peak = max(peak, daemon.rss_mib())
    return 100 * (daemon.cpu() - c0) / (time.monotonic() - t0), peak


@dataclass
class Footprint:
    """One footprint run: per-phase (name, pods, RSS MiB, CPU %, API requests so far) and the
    daemon's API usage."""

    pods: int
    rows: list[tuple[str, int, float, float, int]] = field(default_factory=list)
    load_seconds: float = 0.0
    sent: int = 0
    broken: int = 0
    labelled: float = 0.0
    served: list[tuple[int, float]] = field(default_factory=list)
    """(served ADDs so far, RSS MiB then), sampled along the served phase."""
    served_results: dict[str, float] = field(default_factory=dict)
    served_seconds: float = 0.0
    watch_requests: int = 0
    """WATCH requests the daemon made over the whole run (one stream expected)."""
    list_requests: int = 0
    api_connections: int = 0
    """Established TCP connections from the daemon to the API at the end of the run."""

    def row(self, phase: str) -> tuple[str, int, float, float, int]:
        return next(r for r in self.rows if r[0].startswith(phase))


def _is_watch(request: object) -> bool:
    query = getattr(request, "query", {})
    return str(query.get("watch", "")).lower() in ("1", "true")


class ServedAdds:
    """Redirected ADDs sent to the daemon's `cni.sock` as the thin client sends them
    (`cni.agent_client.call`), each with a fresh anonymous netns (`cni.netns.scratch_netns`:
    no name, no mount; it goes when the last descriptor does)."""

    def __init__(self, api: Any, run_dir: Path, pods: int) -> None:
        self.api, self.run_dir, self.pods = api, run_dir, pods
        self.sent = 0

    def one(self) -> None:
        from cni import agent_client, wire
        from cni.netns import scratch_netns

        i = self.sent % self.pods
        meta = self.api.get_pod(f"ns-{i % 20}", f"app-{i}")["metadata"]
        with scratch_netns():
            fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            _pod_interface(f"10.{220 + self.sent // 65536 % 30}.{self.sent // 256 % 256}."
                           f"{self.sent % 254 + 1}")
        try:
            env = {b"CNI_COMMAND": b"ADD", b"CNI_CONTAINERID": f"c-{self.sent}".encode(),
                   b"CNI_NETNS": f"/proc/{os.getpid()}/fd/{fd}".encode(),
                   b"CNI_IFNAME": b"eth0", b"CNI_PATH": b"/opt/cni/bin",
                   b"CNI_ARGS": (f"K8S_POD_NAMESPACE={meta['namespace']};K8S_POD_NAME="
                                 f"{meta['name']};K8S_POD_UID={meta['uid']}").encode()}
            conf = {"cniVersion": "1.0.0", "name": "bench", "type": "istio-cni",
                    "cni_agent_run_dir": str(self.run_dir), "iptables_backend": "nft"}
            answer = agent_client.call(agent_client.socket_path(str(self.run_dir)),
                                       wire.request(env, json.dumps(conf).encode()), fd, 30.0)
        finally:
            os.close(fd)
        if not isinstance(answer, agent_client.Answer) or answer.status != 0:
            raise SystemExit(f"served ADD {self.sent} not served: "
                             f"{getattr(answer, 'reason', None) or answer.stdout!r}")
        self.sent += 1


def _pod_interface(ip: str) -> None:
    """eth0 (one end of a veth pair, both ends in this thread's netns) holding `ip`/24, up:
    what the pod's IP family is read from."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("add", ifname="eth0", kind="veth", peer="eth0-peer")
        index = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=index, address=ip, prefixlen=24)
        ipr.link("set", index=index, state="up")


def run_footprint(pods: int = 1000, churn_seconds: float = 10.0, idle_seconds: float = 3.0,
                  rate: float = 50.0, served: int = 5000) -> Footprint:
    """Start the daemon child against the API stand-in and measure it through the phases."""
    from testbed.kubeapi import KubeApiServer, write_kubeconfig
    from testbed.pods import BROKEN_WAITING

    out = Footprint(pods)
    with KubeApiServer() as api, tempfile.TemporaryDirectory(prefix="icni-bench-") as tmp:
        run_dir = Path(tmp) / "run"
        daemon = Daemon(write_kubeconfig(Path(tmp), api), run_dir)
        try:
            daemon.wait(lambda s: s["synced"], "initial sync")
            cpu, rss = measure(daemon, idle_seconds)
            out.rows.append(("idle, 0 pods", 0, rss, cpu, len(api.requests)))

            t0 = time.monotonic()
            for i in range(pods):
                api.add_pod(pod(i, NODE))
                api.add_pod(pod(pods + i, "other-node"))
            daemon.wait(lambda s: s["cached"] == pods, f"{pods} pods cached")
            out.load_seconds = time.monotonic() - t0
            cpu, rss = measure(daemon, idle_seconds)
            out.rows.append((f"watching {pods} pods, idle", pods, rss, cpu, len(api.requests)))

            def churn(elapsed: float) -> None:
                while out.sent < elapsed * rate:
                    i = out.sent % pods
                    if out.sent % 10 == 9:
                        status = {"initContainerStatuses": [BROKEN_WAITING]}
                        out.broken += 1
                    else:
                        status = {"message": f"tick {out.sent}"}
                    api.update_pod(f"ns-{i % 20}", f"app-{i}", {"status": status})
                    out.sent += 1
                time.sleep(0.01)

            cpu, rss = measure(daemon, churn_seconds, churn)
            out.rows.append((f"churn {rate:g} updates/s", pods, rss, cpu, len(api.requests)))
            final = daemon.wait(lambda s: s["labelled"] > 0, "broken pods labelled")
            out.labelled = final["labelled"]
            if served:
                adds = ServedAdds(api, run_dir, pods)
                t0 = time.monotonic()
                out.served.append((0, daemon.rss_mib()))
                for k in range(1, 11):
                    while adds.sent < served * k // 10:
                        adds.one()
                    out.served.append((adds.sent, daemon.rss_mib()))
                out.served_seconds = time.monotonic() - t0
                out.served_results = daemon.ask()["served"]
            port = api.port
            out.api_connections = sum(
                1 for c in daemon.ps.net_connections(kind="tcp")
                if c.raddr and c.raddr.port == port and c.status == "ESTABLISHED")
            requests = api.requests
            out.watch_requests = sum(1 for r in requests if _is_watch(r))
            out.list_requests = sum(1 for r in requests if r.method == "GET"
                                    and r.path == "/api/v1/pods" and not _is_watch(r))
        finally:
            daemon.stop()
    return out


def table(fp: Footprint) -> Table:
    """RSS and CPU per phase, with the targets (RSS ≤ 100 MB at N pods, idle CPU ≤ 1 %)."""
    from bench.common import Row, Table  # not at module level: the child must stay lean

    t = Table(f"Node daemon footprint (repair controller; {fp.pods} pods on its node, "
              f"{fp.pods} elsewhere; load+sync {fp.load_seconds:.1f} s)",
              headers=("phase", "pods", "RSS MiB", "CPU % of a core", "API requests",
                       "target", "result"))
    for phase, n, rss, cpu, reqs in fp.rows:
        target, ok = "", None
        if phase.startswith("idle"):
            target, ok = "CPU ≤ 1 %", cpu <= 1.0
        elif phase.startswith("watching"):
            target, ok = "RSS ≤ 100 MB, CPU ≤ 1 %", rss * 2**20 <= 100e6 and cpu <= 1.0
        elif phase.startswith("churn"):
            target, ok = "RSS ≤ 100 MB", rss * 2**20 <= 100e6
        t.add(Row(phase, n, f"{rss:.1f}", f"{cpu:.1f}", str(reqs), target, ok))
    if fp.served:
        (warm_n, warm), (last_n, last) = fp.served[1], fp.served[-1]
        t.add(Row(f"after {last_n} served ADDs", fp.pods, f"{last:.1f}", "", "",
                  "RSS ≤ 100 MB", last * 2**20 <= 100e6))
        t.add(Row(f"  growth from served ADD {warm_n} to {last_n}", fp.pods,
                  f"{last - warm:+.1f}", "", "", f"flat: ≤ +{FLAT_MIB:g} MiB",
                  last - warm <= FLAT_MIB))
        t.notes.append("RSS MiB along the served ADDs: " + ", ".join(
            f"{n}: {rss:.1f}" for n, rss in fp.served) + f" ({fp.served_seconds:.0f} s; "
            f"answers ok/error/fallback: " + "/".join(
                f"{fp.served_results.get(k, 0):.0f}" for k in ("ok", "error", "fallback")) + ")")
    t.notes.append(f"churn: {fp.sent} status updates sent, {fp.broken} made a pod broken, "
                   f"{fp.labelled:.0f} pods labelled by the end")
    t.notes.append("RSS MiB is the peak over the phase; CPU is user+system over the phase "
                   "(psutil), in % of one core")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--churn-seconds", type=float, default=10.0)
    ap.add_argument("--idle-seconds", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=50.0, help="pod updates per second")
    ap.add_argument("--served", type=int, default=5000,
                    help="redirected ADDs served over cni.sock after the churn (0: none)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.run_dir)
        return
    from bench.common import print_machine

    print_machine()
    fp = run_footprint(args.pods, args.churn_seconds, args.idle_seconds, args.rate, args.served)
    table(fp).print()


if __name__ == "__main__":
    main()
