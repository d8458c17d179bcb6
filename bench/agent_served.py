"""Pod start through the warm node agent, against a compiled plugin doing the same work,
interleaved in one run.

    .venv/bin/python bench/agent_served.py [-n 100] [--plugin dist/istio-cni/istio-cni]

The API stand-in speaks TLS and requires a bearer token, as a real kube-apiserver does, so every
figure that touches the API pays the handshake (and the plugin the `ssl` import). Each
iteration, in a rotating order:

- the compiled yardstick (`bench/yardstick/`, Go, standard library only): a redirected ADD of
  the pod (netconf, kubeconfig, one pod GET over TLS with the token, setns, one
  `iptables-nft-restore --noflush` of the payload our rules module builds for the pod) and an
  ADD in an excluded namespace (no API call): the reference every ADD is a multiple of;
- a redirected ADD (nft) of the frozen plugin, served by the agent (`<run dir>/cni.sock`, the
  agent's real server and watch cache, running in this process);
- the same ADD with no agent (another run dir: the plugin alone, TLS GET and apply);
- the frozen plugin's VERSION, a skipped ADD (excluded namespace) and a DEL;
- further rows: the bare interpreter the plugin was frozen from (`python -I -S -c pass`) and
  one stock `nsenter --net=NS iptables-nft-restore --noflush` of the payload.

Pod GETs are counted at the API per ADD. The agent's own phase split (lookup, rules, apply) is
read from its metrics (mean per served ADD). Netns are made and removed outside timed regions.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    SKIPPED_NS,
    Row,
    Stats,
    Table,
    Yardstick,
    bare_interpreter,
    bench_args,
    build_yardstick,
    check_ok,
    interleave,
    load,
    make_pod_netns,
    ms,
    pod_ip,
    prev_result,
    print_machine,
    staged_plugin,
    stock_tool,
    timed_run,
    timing_row,
    tls_api,
)
from testbed.agent import serve_plugin_calls  # noqa: E402
from testbed.cleanup import Cleanup  # noqa: E402
from testbed.cnirun import Runtime, k8s_args  # noqa: E402
from testbed.kubeapi import KubeApiServer, kubernetes_api_client, write_kubeconfig  # noqa: E402
from testbed.netns import ns_exec, path  # noqa: E402
from testbed.pods import workload  # noqa: E402

RESTORE = ["iptables-nft-restore", "--noflush"]


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
        self.yardstick = Yardstick(build_yardstick(), self.alone_dir, work)
        self.payload_file = self.yardstick.payload("restore-v4", family.restore_payload())
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.gets: dict[str, list[int]] = defaultdict(list)
        self.seq = 0

    def _call(self, run_dir: Path, command: str, ns: str, pod: dict, ip: str) -> float:
        conf = {"cniVersion": "1.0.0", "name": "bench", "type": "istio-cni",
                "plugin_log_level": "info", "cni_agent_run_dir": str(run_dir),
                "exclude_namespaces": [SKIPPED_NS], "pod_namespace": "istio-system",
                "iptables_backend": "nft", "prevResult": prev_result(ns, ip)}
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

    def yardstick_add(self, record: bool) -> None:
        """The yardstick's redirected ADD in a fresh netns, checked (untimed) for its rules."""
        self.seq += 1
        ip = pod_ip(self.seq)
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, ip, "yard")
            before = self._pod_gets()
            t = self.yardstick.add(ns, self.pod, RESTORE, self.payload_file, ip)
            gets = self._pod_gets() - before
            if "ISTIO_INBOUND" not in ns_exec(ns, "iptables-nft-save"):
                raise RuntimeError("the yardstick's ADD left no rules")
        if record:
            self.samples["yardstick"].append(t)
            self.gets["compiled yardstick"].append(gets)

    def yardstick_skipped(self, record: bool) -> None:
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, pod_ip(0), "skip")
            before = self._pod_gets()
            t = self.yardstick.add(ns, self.skipped_pod, RESTORE, self.payload_file, pod_ip(0))
            if self._pod_gets() != before:
                raise RuntimeError("the yardstick's excluded-namespace ADD asked the API")
        if record:
            self.samples["yardstick, excluded namespace"].append(t)

    def stock(self, record: bool) -> None:
        self.seq += 1
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, pod_ip(self.seq), "stock")
            t = stock_tool(ns, RESTORE, self.payload)
        if record:
            self.samples["stock restore"].append(t)

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
            self.yardstick_add,
            self.yardstick_skipped,
            self.stock,
            lambda r: self.redirected(self.served_dir, "ADD via the agent", r),
            lambda r: self.redirected(self.alone_dir, "ADD, no agent", r),
            self.skipped,
        ]

    def run(self, n: int, warmup: int, max_seconds: float) -> int:
        return interleave(self.variants(), n, warmup, max_seconds, "agent_served")

    def tables(self) -> list[Table]:
        s = self.samples
        yard = Stats.of(s["yardstick"])
        bare = Stats.of(s["bare interpreter"])
        via, alone = Stats.of(s["ADD via the agent"]), Stats.of(s["ADD, no agent"])
        t = Table("Redirected ADD (nft) via the agent and with no agent, against the compiled "
                  "yardstick (TLS API)")
        t.add(timing_row("compiled yardstick, meshed pod", s["yardstick"]))
        t.add(timing_row("ADD via the agent", s["ADD via the agent"], yard.median,
                         "p50 ≤ 2x, p99 ≤ 2.5x yardstick",
                         via.median <= 2 * yard.median and via.p99 <= 2.5 * yard.p99))
        t.add(timing_row("ADD, no agent (fallback path)", s["ADD, no agent"], yard.median,
                         "ratio to the yardstick"))
        t.add(timing_row("stock tool: nsenter iptables-nft-restore --noflush (one spawn)",
                         s["stock restore"], yard.median, "ratio to the yardstick"))
        t.notes.append(f"p99 ratio via the agent: {via.p99 / yard.p99:.2f}x the yardstick's "
                       f"p99; with no agent {alone.p99 / yard.p99:.2f}x")
        t.notes.append("the yardstick: bench/yardstick/ (Go, standard library), the necessary "
                       "work of a redirected ADD: netconf, kubeconfig, one pod GET over TLS, "
                       "setns, one restore of the same payload")
        b = Table("Skipped ADD, VERSION and DEL against the bare interpreter")
        b.add(timing_row("bare interpreter: python -I -S -c pass", s["bare interpreter"]))
        b.add(timing_row("compiled yardstick, excluded namespace",
                         s["yardstick, excluded namespace"], bare.median, "ratio to bare"))
        for name in ("VERSION", "skipped ADD", "DEL"):
            st = Stats.of(s[name])
            b.add(timing_row(f"frozen {name}", s[name], bare.median, "p50 ≤ 1.3x bare",
                             st.median <= 1.3 * bare.median))
        b.add(timing_row("  skipped ADD over the yardstick's", s["skipped ADD"],
                         Stats.of(s["yardstick, excluded namespace"]).median,
                         "ratio to the yardstick, excluded"))
        g = Table("Pod GETs per ADD (at the API)", headers=(
            "measurement", "n", "GETs per ADD", "", "", "target", "result"))
        for name, target in (("ADD via the agent", 0), ("ADD, no agent", 1),
                             ("compiled yardstick", 1)):
            got = self.gets[name]
            worst = max(got) if got else -1
            g.add(Row(name, len(got), str(worst), target=f"{target}",
                      ok=bool(got) and worst == target))
        p = Table("Inside the agent: mean per served ADD", headers=(
            "phase", "n", "mean ms", "", "ratio", "target", ""))
        m = self.agent.metrics
        restore = Stats.of(s["stock restore"]).median
        for phase in ("lookup", "rules", "apply", "total"):
            count = m.value("istio_cni_plugin_add_duration_seconds_count", phase=phase)
            total = m.value("istio_cni_plugin_add_duration_seconds_sum", phase=phase)
            mean = total / count if count else float("nan")
            apply = phase == "apply" and count
            p.add(Row(phase, int(count), ms(mean) if count else "-",
                      ratio=f"{mean / restore:.2f}x" if apply else "",
                      target="ratio to one restore spawn" if apply else ""))
        p.notes.append("the rest of 'ADD via the agent' is the plugin process: frozen start, "
                       "config parse, the round trip over cni.sock")
        return [t, b, g, p]


def run(plugin: list[str], n: int, warmup: int = 3, max_seconds: float = 1200.0) -> list[Table]:
    """One interleaved run against a fresh TLS API stand-in; its tables."""
    with tempfile.TemporaryDirectory(prefix="icni-bench-") as tmp:
        work = Path(tmp)
        with tls_api(work) as api, Cleanup() as cleanup:
            bench = Bench(plugin, api, work, cleanup)
            before = load()
            done = bench.run(n, warmup, max_seconds)
            print(f"iterations: {done} recorded (+{warmup} warm-up); load average "
                  f"{before} -> {load()}\n")
            return bench.tables()


def main(argv: list[str] | None = None) -> int:
    args = bench_args(__doc__, 100, argv)
    print_machine()
    with staged_plugin(args.plugin) as plugin:
        for table in run(plugin, args.n, args.warmup, args.max_seconds):
            table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
