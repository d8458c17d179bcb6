"""Pod-start cost of the frozen plugin against the physical floor, side by side in one run.

    .venv/bin/python bench/plugin_latency.py [-n 200] [--plugin dist/istio-cni/istio-cni]

Each iteration, in a rotating order (so drift and noise hit every variant alike):

- per backend (`nft`, `legacy`, `python-iptables`): a fresh pod netns (a dummy eth0 with an
  IPv4 address, made outside the timed region), then a timed ADD of the meshed pod (exec →
  result on stdout → exit, through the CNI protocol, the API stand-in on loopback), a timed
  CHECK and a timed DEL of it; the netns is deleted outside the timed region;
- a skipped pod: a timed ADD of a pod in an excluded namespace (no API call, no rules);
- the floor, per iptables variant (nft, legacy): in a fresh netns, `nsenter --net=NS
  iptables-restore --noflush` of the same payload the plugin applies, plus one `curl` GET of
  the same pod from the API stand-in, timed together;
- the start of a frozen hello-world built the same way (bench/hello.spec) and of the frozen
  plugin's `CNI_COMMAND=VERSION` (start + the plugin's entry imports).

The plugin reports its own phases (lookup, rules, apply, total) to `<run dir>/log.sock`; they
are collected per ADD. API GETs are counted per call at the API stand-in.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    BACKENDS,
    BenchNode,
    Stats,
    Table,
    bench_node,
    build_hello,
    check_ok,
    load,
    make_pod_netns,
    pod_ip,
    print_machine,
    stage_frozen_plugin,
    timed_run,
    timing_row,
)
from testbed.cleanup import Cleanup  # noqa: E402
from testbed.netns import path  # noqa: E402
from testbed.pods import workload  # noqa: E402

FLOORS = {"nft": "iptables-nft-restore", "legacy": "iptables-legacy-restore"}
FLOOR_OF = {"nft": "nft", "legacy": "legacy", "python-iptables": "legacy"}
"""Which floor each backend is compared with (libiptc programs the legacy tables)."""
SKIPPED_NS = "kube-system"


@dataclass
class LatencyResult:
    """Raw samples (seconds) of one run; the tables are computed from these."""

    add: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    check: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    delete: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    skipped: list[float] = field(default_factory=list)
    floor: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    floor_restore: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    floor_curl: list[float] = field(default_factory=list)
    hello: list[float] = field(default_factory=list)
    version: list[float] = field(default_factory=list)
    phases: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    """backend → phase (lookup, rules, apply, total) → samples, as the plugin reported them."""
    gets: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    """call kind (redirected ADD, skipped ADD, CHECK, DEL) → pod GETs seen by the API."""
    iterations: int = 0
    load_before: str = ""
    load_after: str = ""


def restore_payload(pod: dict) -> str:
    """The IPv4 `iptables-restore` payload the plugin programs for `pod` (an IPv4-only pod)."""
    from cni.pipeline import plan, rules_for

    ruleset = rules_for(plan(pod)[2], ipv6=False)
    [family] = [f for f in ruleset.families() if not f.ipv6]
    return family.restore_payload()


class Runner:
    """One bench node and the variants measured against it."""

    def __init__(self, node: BenchNode, hello_argv: list[str], result: LatencyResult,
                 cleanup: Cleanup) -> None:
        self.node = node
        self.hello_argv = hello_argv
        self.r = result
        self.pod = workload("meshed-pod")
        node.api.add_pod(self.pod)
        self.skipped_pod = workload("meshed-pod", namespace=SKIPPED_NS)
        self.payload = restore_payload(self.pod)
        meta = self.pod["metadata"]
        self.pod_url = f"{node.api.url}/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        self.skip_ns = make_pod_netns(cleanup, pod_ip(0), "skip")
        self.seq = 1

    def _gets(self, kind: str, before: int, record: bool) -> None:
        if record:
            self.r.gets[kind].append(self.node.pod_gets() - before)

    def redirected(self, backend: str, record: bool = True) -> None:
        """ADD, CHECK and DEL of the meshed pod in a fresh netns, with `backend`."""
        self.seq += 1
        ip = pod_ip(self.seq)
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, ip)
            gets = self.node.pod_gets()
            t, call = self.node.call("ADD", ns, self.pod, backend, ip)
            check_ok(call, f"ADD ({backend})")
            self._gets("redirected ADD", gets, record)
            event = self.node.sink.take()
            gets = self.node.pod_gets()
            tc, ccall = self.node.call("CHECK", ns, self.pod, backend, ip)
            check_ok(ccall, f"CHECK ({backend})")
            self._gets("CHECK", gets, record)
            gets = self.node.pod_gets()
            td, dcall = self.node.call("DEL", ns, self.pod, backend, ip)
            check_ok(dcall, f"DEL ({backend})")
            self._gets("DEL", gets, record)
        if record:
            self.r.add[backend].append(t)
            self.r.check[backend].append(tc)
            self.r.delete[backend].append(td)
            if event and event.get("outcome") == "redirected":
                for phase, seconds in event["phases"].items():
                    self.r.phases[backend][phase].append(seconds)

    def skipped(self, record: bool = True) -> None:
        gets = self.node.pod_gets()
        t, call = self.node.call("ADD", self.skip_ns, self.skipped_pod, "nft", pod_ip(0))
        check_ok(call, "skipped ADD")
        self._gets("skipped ADD", gets, record)
        event = self.node.sink.take()
        if record:
            self.r.skipped.append(t)
            if event:
                self.r.phases["skipped"]["total"].append(event["phases"].get("total", 0.0))

    def floor(self, variant: str, record: bool = True) -> None:
        """`nsenter --net=NS <variant>-restore --noflush < payload` + `curl` GET of the pod."""
        self.seq += 1
        env = {**os.environ, "XTABLES_LOCKFILE": "/proc/self/ns/net"}  # as the plugin's legacy
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, pod_ip(self.seq), "floor")
            t_restore, proc = timed_run(
                ["nsenter", f"--net={path(ns)}", FLOORS[variant], "--noflush"],
                input=self.payload.encode(), env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"floor {variant}: {proc.stderr.decode().strip()}")
            t_curl, proc = timed_run(["curl", "-sf", "-H", "Authorization: Bearer bench",
                                      "-H", "Accept: application/json", self.pod_url])
            if proc.returncode != 0:
                raise RuntimeError(f"floor curl: exit {proc.returncode}")
        if record:
            self.r.floor[variant].append(t_restore + t_curl)
            self.r.floor_restore[variant].append(t_restore)
            self.r.floor_curl.append(t_curl)

    def hello(self, record: bool = True) -> None:
        t, proc = timed_run(self.hello_argv)
        if proc.returncode != 0:
            raise RuntimeError(f"hello-world: exit {proc.returncode}")
        if record:
            self.r.hello.append(t)

    def version(self, record: bool = True) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": "VERSION"}
        t, proc = timed_run(self.node.plugin_argv, input=b"", env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"VERSION: exit {proc.returncode}")
        if record:
            self.r.version.append(t)

    def variants(self) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = [
            (f"redirected {b}", lambda rec, b=b: self.redirected(b, rec)) for b in BACKENDS]
        out += [("skipped", self.skipped)]
        out += [(f"floor {v}", lambda rec, v=v: self.floor(v, rec)) for v in FLOORS]
        out += [("hello", self.hello), ("version", self.version)]
        return out


def measure(plugin_argv: list[str], hello_argv: list[str], n: int, warmup: int = 3,
            max_seconds: float = 1800.0) -> LatencyResult:
    """Run `warmup` unrecorded then up to `n` recorded iterations (at most `max_seconds`)."""
    result = LatencyResult(load_before=load())
    with bench_node(plugin_argv) as node, Cleanup() as cleanup:
        runner = Runner(node, hello_argv, result, cleanup)
        variants = runner.variants()
        deadline = time.monotonic() + max_seconds
        for i in range(warmup + n):
            if time.monotonic() > deadline:
                print(f"plugin_latency: time budget reached after {result.iterations} "
                      "iterations", file=sys.stderr)
                break
            k = i % len(variants)
            for _, fn in variants[k:] + variants[:k]:
                fn(i >= warmup)  # type: ignore[operator]
            if i >= warmup:
                result.iterations += 1
    result.load_after = load()
    return result


def _median(samples: list[float]) -> float:
    return Stats.of(samples).median


def tables(r: LatencyResult) -> list[Table]:
    """The latency table (with targets) and the API-calls-per-call table."""
    hello = _median(r.hello)
    floors = {v: _median(r.floor[v]) for v in FLOORS}
    t = Table("ADD / CHECK / DEL latency of the frozen plugin vs the floor "
              f"({r.iterations} interleaved iterations; load {r.load_before} → {r.load_after})")
    t.add(timing_row("floor nft: nsenter iptables-nft-restore + curl GET", r.floor["nft"]))
    t.add(timing_row("  of which iptables-nft-restore", r.floor_restore["nft"]))
    t.add(timing_row("floor legacy: nsenter iptables-legacy-restore + curl GET",
                     r.floor["legacy"]))
    t.add(timing_row("  of which iptables-legacy-restore", r.floor_restore["legacy"]))
    t.add(timing_row("  of which curl GET", r.floor_curl))
    t.add(timing_row("frozen hello-world start", r.hello))
    t.add(timing_row("frozen plugin VERSION (start + imports)", r.version, hello))
    for b in BACKENDS:
        floor = floors[FLOOR_OF[b]]
        s = Stats.of(r.add[b])
        ok = s.n > 0 and s.median <= 4 * floor and s.p99 <= 0.150
        t.add(timing_row(f"redirected ADD, {b}", r.add[b], floor,
                         f"p50 ≤ 4x floor {FLOOR_OF[b]}, p99 ≤ 150", ok))
    s = Stats.of(r.skipped)
    t.add(timing_row("skipped ADD (excluded namespace)", r.skipped, hello,
                     "p50 ≤ 1.2x hello", s.n > 0 and s.median <= 1.2 * hello))
    for b in BACKENDS:
        c, a = _median(r.check[b]), _median(r.add[b])
        t.add(timing_row(f"CHECK, {b}", r.check[b], a, "p50 ≤ ADD p50 (ratio to ADD)",
                         bool(r.check[b]) and c <= a))
    for b in BACKENDS:
        d = _median(r.delete[b])
        t.add(timing_row(f"DEL, {b}", r.delete[b], hello, "p50 ≤ 1.2x hello",
                         bool(r.delete[b]) and d <= 1.2 * hello))
    t.notes.append("ratio: the median over the floor named in the target (redirected ADD), "
                   "over the hello-world (VERSION, skipped ADD, DEL), over ADD (CHECK)")
    t.notes.append("python-iptables is compared with the legacy floor: libiptc programs the "
                   "legacy tables")
    return [t]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=200, help="recorded iterations (default 200)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--plugin", type=Path, help="the frozen plugin (default dist/istio-cni)")
    ap.add_argument("--max-seconds", type=float, default=1800.0)
    args = ap.parse_args()
    print_machine()
    with tempfile.TemporaryDirectory(prefix="icni-bench-") as tmp:
        plugin = stage_frozen_plugin(Path(tmp), *([args.plugin] if args.plugin else []))
        r = measure([str(plugin)], [str(build_hello())], args.n, args.warmup, args.max_seconds)
    for table in tables(r):
        table.print()


if __name__ == "__main__":
    main()
