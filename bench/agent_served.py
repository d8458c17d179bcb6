"""Pod start through the warm node agent, against true floors, interleaved in one run.

    .venv/bin/python bench/agent_served.py [-n 100] [--plugin dist/istio-cni/istio-cni]

The API stand-in speaks TLS and requires a bearer token, as a real kube-apiserver does, so every
figure that touches the API pays the handshake (and the plugin the `ssl` import). Each iteration,
in a rotating order:

- the bare interpreter the plugin was frozen from: `python -I -S -c pass` (a Python process's
  floor: anything above it is ours);
- the stock-tool floor of a redirected ADD: `nsenter --net=NS iptables-nft-restore --noflush`
  of the pod's payload plus one `curl` GET of the pod over TLS with the token;
- a redirected ADD (nft) of the frozen plugin, served by the agent (`<run dir>/cni.sock`, the
  agent's real server and watch cache, running in this process);
- the same ADD with no agent (another run dir: the plugin alone, TLS GET and apply);
- the frozen plugin's VERSION, a skipped ADD (excluded namespace) and a DEL.

Pod GETs are counted at the API per ADD. The agent's own phase split (lookup, rules, apply) is
read from its metrics (mean per served ADD). Netns are made and removed outside timed regions.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    FROZEN_PLUGIN,
    Row,
    Stats,
    Table,
    check_ok,
    load,
    make_pod_netns,
    ms,
    pod_ip,
    print_machine,
    stage_frozen_plugin,
    timed_run,
    timing_row,
)
from testbed.agent import serve_plugin_calls  # noqa: E402
from testbed.cleanup import Cleanup  # noqa: E402
from testbed.cnirun import Runtime, k8s_args  # noqa: E402
from testbed.kubeapi import (  # noqa: E402
    KubeApiServer,
    kubernetes_api_client,
    make_tls_material,
    write_kubeconfig,
)
from testbed.netns import path  # noqa: E402
from testbed.pods import workload  # noqa: E402

TOKEN = "bench-token-not-a-secret"
SKIPPED_NS = "kube-system"


def bare_interpreter() -> str:
    """The interpreter the frozen plugin was built from (this venv's base interpreter)."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


class Bench:
    """The variants of one run; `plugin` is the plugin's argv (the frozen binary, or the
    source entry for the smoke test)."""

    def __init__(self, plugin: list[str], api: KubeApiServer, work: Path,
                 cleanup: Cleanup) -> None:
        self.plugin, self.api = plugin, api
        self.served_dir, self.alone_dir = work / "served", work / "alone"
        for run_dir in (self.served_dir, self.alone_dir):
            run_dir.mkdir()
            write_kubeconfig(run_dir, api)
        self.agent = serve_plugin_calls(cleanup, self.served_dir, kubernetes_api_client(api))
        self.runtime = Runtime(binaries={"istio-cni": plugin})
        self.pod = api.add_pod(workload("meshed-pod"))
        self.skipped_pod = workload("meshed-pod", namespace=SKIPPED_NS)
        from cni.pipeline import plan, rules_for

        [family] = [f for f in rules_for(plan(self.pod)[2], ipv6=False).families()
                    if not f.ipv6]
        self.payload = family.restore_payload().encode()
        meta = self.pod["metadata"]
        self.pod_url = f"{api.url}/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        self.ca = str(api.tls.ca_file) if api.tls else ""
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.gets: dict[str, list[int]] = defaultdict(list)
        self.seq = 0

    def _call(self, run_dir: Path, command: str, ns: str, pod: dict, ip: str) -> float:
        conf = {"cniVersion": "1.0.0", "name": "bench", "type": "istio-cni",
                "plugin_log_level": "info", "cni_agent_run_dir": str(run_dir),
                "exclude_namespaces": [SKIPPED_NS], "pod_namespace": "istio-system",
                "iptables_backend": "nft",
                "prevResult": {"cniVersion": "1.0.0",
                               "interfaces": [{"name": "eth0", "sandbox": path(ns)}],
                               "ips": [{"address": f"{ip}/24", "interface": 0}]}}
        meta = pod["metadata"]
        t0 = time.perf_counter()
        # K8S_POD_UID as containerd passes it: what lets the agent answer from its cache
        call = self.runtime.call("istio-cni", command, path(ns), f"c-{ns}", conf,
                                 k8s_args(meta["namespace"], meta["name"], meta.get("uid", "")))
        elapsed = time.perf_counter() - t0
        check_ok(call, f"{command} ({run_dir.name})")
        return elapsed

    def _pod_gets(self) -> int:
        return self.api.count("GET", r"^/api/v1/namespaces/[^/]+/pods/[^/]+$")

    def redirected(self, run_dir: Path, name: str, record: bool) -> None:
        self.seq += 1
        ip = pod_ip(self.seq)
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, ip, "agent")
            before = self._pod_gets()
            t = self._call(run_dir, "ADD", ns, self.pod, ip)
            gets = self._pod_gets() - before
            td = self._call(run_dir, "DEL", ns, self.pod, ip)
        if record:
            self.samples[name].append(t)
            self.gets[name].append(gets)
            if run_dir == self.alone_dir:
                self.samples["DEL"].append(td)

    def skipped(self, record: bool) -> None:
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, pod_ip(0), "skip")
            t = self._call(self.alone_dir, "ADD", ns, self.skipped_pod, pod_ip(0))
        if record:
            self.samples["skipped ADD"].append(t)

    def floor(self, record: bool) -> None:
        self.seq += 1
        env = {**os.environ, "XTABLES_LOCKFILE": "/proc/self/ns/net"}
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, pod_ip(self.seq), "floor")
            t_restore, proc = timed_run(["nsenter", f"--net={path(ns)}",
                                         "iptables-nft-restore", "--noflush"],
                                        input=self.payload, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"floor restore: {proc.stderr.decode().strip()}")
        t_curl, proc = timed_run(["curl", "-sf", "--cacert", self.ca, "-H",
                                  f"Authorization: Bearer {TOKEN}", "-H",
                                  "Accept: application/json", self.pod_url])
        if proc.returncode != 0:
            raise RuntimeError(f"floor curl: exit {proc.returncode}")
        if record:
            self.samples["floor"].append(t_restore + t_curl)

    def process(self, name: str, argv: list[str], env: dict[str, str] | None,
                record: bool) -> None:
        t, proc = timed_run(argv, input=b"", env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{name}: exit {proc.returncode}")
        if record:
            self.samples[name].append(t)

    def variants(self) -> list:
        plain_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
        return [
            lambda r: self.process("bare interpreter", [bare_interpreter(), "-I", "-S", "-c",
                                                        "pass"], plain_env, r),
            lambda r: self.process("VERSION", self.plugin,
                                   {**plain_env, "CNI_COMMAND": "VERSION"}, r),
            self.floor,
            lambda r: self.redirected(self.served_dir, "ADD via the agent", r),
            lambda r: self.redirected(self.alone_dir, "ADD, no agent", r),
            self.skipped,
        ]

    def run(self, n: int, warmup: int, max_seconds: float) -> int:
        variants = self.variants()
        deadline = time.monotonic() + max_seconds
        for i in range(warmup + n):
            if time.monotonic() > deadline:
                return i - warmup
            rot = i % len(variants)
            for v in variants[rot:] + variants[:rot]:
                v(i >= warmup)
        return n

    def tables(self) -> list[Table]:
        s = self.samples
        floor = Stats.of(s["floor"])
        bare = Stats.of(s["bare interpreter"])
        via, alone = Stats.of(s["ADD via the agent"]), Stats.of(s["ADD, no agent"])
        t = Table("Redirected ADD (nft) via the agent, with no agent, and the floors")
        t.add(timing_row("floor: nsenter iptables-nft-restore + curl GET (TLS, token)",
                         s["floor"]))
        t.add(timing_row("ADD via the agent", s["ADD via the agent"], floor.median,
                         "p50 <= 2.5x floor, p99 <= 4x floor",
                         via.median <= 2.5 * floor.median and via.p99 <= 4 * floor.p99))
        t.add(timing_row("ADD, no agent (fallback path)", s["ADD, no agent"], floor.median,
                         "p50 <= 5x floor", alone.median <= 5 * floor.median))
        t.notes.append(f"p99 ratio via the agent: {via.p99 / floor.p99:.2f}x the floor's p99")
        b = Table("Process start against the bare interpreter")
        b.add(timing_row("bare interpreter: python -I -S -c pass", s["bare interpreter"]))
        for name in ("VERSION", "skipped ADD", "DEL"):
            st = Stats.of(s[name])
            b.add(timing_row(f"frozen {name}", s[name], bare.median, "p50 <= 1.5x bare",
                             st.median <= 1.5 * bare.median))
        g = Table("Pod GETs per ADD (at the API)", headers=(
            "measurement", "n", "GETs per ADD", "", "", "target", "result"))
        for name, target in (("ADD via the agent", 0), ("ADD, no agent", 1)):
            got = self.gets[name]
            worst = max(got) if got else -1
            g.add(Row(name, len(got), str(worst), target=f"{target}",
                      ok=bool(got) and worst == target))
        p = Table("Inside the agent: mean per served ADD", headers=(
            "phase", "n", "mean ms", "", "", "", ""))
        m = self.agent.metrics
        for phase in ("lookup", "rules", "apply", "total"):
            count = m.value("istio_cni_plugin_add_duration_seconds_count", phase=phase)
            total = m.value("istio_cni_plugin_add_duration_seconds_sum", phase=phase)
            p.add(Row(phase, int(count), ms(total / count) if count else "-"))
        p.notes.append("the rest of 'ADD via the agent' is the plugin process: frozen start, "
                       "config parse, the round trip over cni.sock")
        return [t, b, g, p]


def run(plugin: list[str], n: int, warmup: int = 3, max_seconds: float = 1200.0) -> list[Table]:
    """One interleaved run against a fresh TLS API stand-in; its tables."""
    with tempfile.TemporaryDirectory(prefix="icni-bench-") as tmp:
        work = Path(tmp)
        tls = make_tls_material(work / "tls")
        with KubeApiServer(tls=tls, token=TOKEN) as api, Cleanup() as cleanup:
            bench = Bench(plugin, api, work, cleanup)
            before = load()
            done = bench.run(n, warmup, max_seconds)
            print(f"iterations: {done} recorded (+{warmup} warm-up); load average "
                  f"{before} -> {load()}\n")
            return bench.tables()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=100, help="recorded iterations (default 100)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=1200.0)
    ap.add_argument("--plugin", type=Path, default=FROZEN_PLUGIN,
                    help="the frozen plugin (default dist/istio-cni/istio-cni)")
    args = ap.parse_args(argv)
    print_machine()
    with tempfile.TemporaryDirectory(prefix="icni-bench-") as tmp:
        plugin = [str(stage_frozen_plugin(Path(tmp), args.plugin))]
        for table in run(plugin, args.n, args.warmup, args.max_seconds):
            table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
