"""Pod-start cost of the frozen plugin against a compiled plugin doing the same work, side by
side in one run.

    .venv/bin/python bench/plugin_latency.py [-n 200] [--plugin dist/istio-cni/istio-cni]

The API stand-in speaks TLS and requires a bearer token, as a real kube-apiserver does. Each
iteration, in a rotating order (so drift and noise hit every variant alike):

- per backend (`nft`, `legacy`, `python-iptables`): a fresh pod netns (a veth eth0 with an
  IPv4 address, made outside the timed region), then a timed ADD of the meshed pod (exec →
  result on stdout → exit, through the CNI protocol, no node agent), a timed CHECK and a timed
  DEL of it; the netns is deleted outside the timed region;
- a skipped pod: a timed ADD of a pod in an excluded namespace (no API call, no rules);
- the compiled yardstick (`bench/yardstick/`, Go, standard library only) doing the necessary
  work of the same ADD: netconf, kubeconfig, one pod GET over TLS with the token, setns, one
  `iptables-{nft,legacy}-restore --noflush` of the payload our rules module builds for the
  pod; and its excluded-namespace ADD (no API call);
- the stock tools: one `nsenter --net=NS iptables-{nft,legacy}-restore --noflush` of that
  payload in a fresh netns;
- the bare interpreter the plugin is frozen from (`python -I -S -c pass`), the start of a
  frozen hello-world built the same way (bench/hello.spec), and the frozen plugin's
  `CNI_COMMAND=VERSION` (start + the plugin's entry imports).

Redirected ADDs are reported as multiples of the yardstick's (python-iptables against the
legacy one: libiptc programs the legacy tables); skipped ADD and DEL as multiples of the bare
interpreter. The plugin reports its own phases (lookup, rules, apply, total) to
`<run dir>/log.sock`; they are collected per ADD. API GETs are counted per call.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    BACKENDS,
    PLUGIN_LOCKFILE_ENV,
    SKIPPED_NS,
    BenchNode,
    Stats,
    Table,
    bare_interpreter,
    bench_args,
    bench_node,
    build_hello,
    check_ok,
    interleave,
    load,
    make_pod_netns,
    pod_ip,
    print_machine,
    staged_plugin,
    stock_tool,
    timed_run,
    timing_row,
)
from testbed.cleanup import Cleanup  # noqa: E402
from testbed.netns import ns_exec  # noqa: E402
from testbed.pods import workload  # noqa: E402

RESTORE = {"nft": "iptables-nft-restore", "legacy": "iptables-legacy-restore"}
"""The restore tool of each iptables variant (the yardstick's and the stock rows')."""
ENV = {"nft": {}, "legacy": PLUGIN_LOCKFILE_ENV}
"""As our plugin runs each: legacy with a pod-scoped xtables lock."""
SAVE = {"nft": "iptables-nft-save", "legacy": "iptables-legacy-save"}
VARIANT_OF = {"nft": "nft", "legacy": "legacy", "python-iptables": "legacy"}
"""Which yardstick each backend is compared with (libiptc programs the legacy tables)."""


@dataclass
class LatencyResult:
    """Raw samples (seconds) of one run; the tables are computed from these."""

    add: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    check: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    delete: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    skipped: list[float] = field(default_factory=list)
    yardstick: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    """variant (nft, legacy) → the compiled yardstick's redirected ADD."""
    yardstick_skipped: list[float] = field(default_factory=list)
    stock: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    """variant → one `nsenter … iptables-<variant>-restore --noflush` spawn."""
    bare: list[float] = field(default_factory=list)
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
        self.payload_file = node.yardstick.payload("restore-v4", self.payload)
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

    def yardstick(self, variant: str, record: bool = True) -> None:
        """The compiled yardstick's redirected ADD with `variant`'s restore, in a fresh netns;
        checked afterwards (untimed) to have programmed the pod."""
        self.seq += 1
        ip = pod_ip(self.seq)
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, ip, "yard")
            gets = self.node.pod_gets()
            t = self.node.yardstick.add(ns, self.pod, [RESTORE[variant], "--noflush"],
                                        self.payload_file, ip, ENV[variant])
            self._gets("yardstick ADD", gets, record)
            if "ISTIO_INBOUND" not in ns_exec(ns, SAVE[variant]):
                raise RuntimeError(f"yardstick ADD ({variant}) left no rules")
        if record:
            self.r.yardstick[variant].append(t)

    def yardstick_skipped(self, record: bool = True) -> None:
        gets = self.node.pod_gets()
        t = self.node.yardstick.add(self.skip_ns, self.skipped_pod, [RESTORE["nft"]],
                                    self.payload_file, pod_ip(0))
        if self.node.pod_gets() != gets:
            raise RuntimeError("the yardstick's excluded-namespace ADD asked the API")
        if record:
            self.r.yardstick_skipped.append(t)

    def stock(self, variant: str, record: bool = True) -> None:
        """One `nsenter --net=NS iptables-<variant>-restore --noflush` of the payload."""
        self.seq += 1
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, pod_ip(self.seq), "stock")
            t = stock_tool(ns, [RESTORE[variant], "--noflush"], self.payload.encode(),
                           ENV[variant])
        if record:
            self.r.stock[variant].append(t)

    def bare(self, record: bool = True) -> None:
        t, proc = timed_run([bare_interpreter(), "-I", "-S", "-c", "pass"])
        if proc.returncode != 0:
            raise RuntimeError(f"bare interpreter: exit {proc.returncode}")
        if record:
            self.r.bare.append(t)

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
        out += [(f"yardstick {v}", lambda rec, v=v: self.yardstick(v, rec)) for v in RESTORE]
        out += [("yardstick skipped", self.yardstick_skipped)]
        out += [(f"stock {v}", lambda rec, v=v: self.stock(v, rec)) for v in RESTORE]
        out += [("bare", self.bare), ("hello", self.hello), ("version", self.version)]
        return out


def measure(plugin_argv: list[str], hello_argv: list[str], n: int, warmup: int = 3,
            max_seconds: float = 1800.0) -> LatencyResult:
    """Run `warmup` unrecorded then up to `n` recorded iterations (at most `max_seconds`)."""
    result = LatencyResult(load_before=load())
    with bench_node(plugin_argv) as node, Cleanup() as cleanup:
        runner = Runner(node, hello_argv, result, cleanup)
        variants = [fn for _, fn in runner.variants()]
        result.iterations = interleave(variants, n, warmup, max_seconds,  # type: ignore[arg-type]
                                       "plugin_latency")
    result.load_after = load()
    return result


def _median(samples: list[float]) -> float:
    return Stats.of(samples).median


def tables(r: LatencyResult) -> list[Table]:
    """The latency table (with targets): ours against the yardstick and the bare interpreter."""
    bare = _median(r.bare)
    yard = {v: _median(r.yardstick[v]) for v in RESTORE}
    t = Table("ADD / CHECK / DEL latency of the frozen plugin vs the compiled yardstick "
              f"({r.iterations} interleaved iterations, TLS API; load {r.load_before} → "
              f"{r.load_after})")
    for v in RESTORE:
        t.add(timing_row(f"compiled yardstick ADD, {RESTORE[v]}", r.yardstick[v]))
    t.add(timing_row("compiled yardstick ADD, excluded namespace", r.yardstick_skipped))
    for v in RESTORE:
        t.add(timing_row(f"stock tool: nsenter {RESTORE[v]} --noflush (one spawn)",
                         r.stock[v], yard[v], "ratio to the yardstick ADD"))
    t.add(timing_row("bare interpreter: python -I -S -c pass", r.bare))
    t.add(timing_row("frozen hello-world start", r.hello, bare, "ratio to bare"))
    t.add(timing_row("frozen plugin VERSION (start + imports)", r.version, bare,
                     "ratio to bare"))
    for b in BACKENDS:
        t.add(timing_row(f"redirected ADD, {b} (no agent)", r.add[b], yard[VARIANT_OF[b]],
                         f"ratio to the yardstick, {RESTORE[VARIANT_OF[b]]}"))
    s = Stats.of(r.skipped)
    t.add(timing_row("skipped ADD (excluded namespace)", r.skipped, bare,
                     "p50 ≤ 1.3x bare", s.n > 0 and s.median <= 1.3 * bare))
    t.add(timing_row("  skipped ADD over the yardstick's", r.skipped,
                     _median(r.yardstick_skipped), "ratio to the yardstick, excluded"))
    for b in BACKENDS:
        c, a = _median(r.check[b]), _median(r.add[b])
        t.add(timing_row(f"CHECK, {b}", r.check[b], a, "p50 ≤ ADD p50 (ratio to ADD)",
                         bool(r.check[b]) and c <= a))
    for b in BACKENDS:
        d = _median(r.delete[b])
        t.add(timing_row(f"DEL, {b}", r.delete[b], bare, "p50 ≤ 1.3x bare",
                         bool(r.delete[b]) and d <= 1.3 * bare))
    t.notes.append("the yardstick: bench/yardstick/ (Go, standard library), the necessary work "
                   "of a redirected ADD (netconf, kubeconfig, one pod GET over TLS, setns, one "
                   "restore of the same payload); built by the bench with the distribution's Go")
    t.notes.append("python-iptables is compared with the legacy yardstick: libiptc programs "
                   "the legacy tables")
    return [t]


def main(argv: list[str] | None = None) -> None:
    args = bench_args(__doc__, 200, argv)
    print_machine()
    with staged_plugin(args.plugin) as plugin:
        r = measure(plugin, [str(build_hello())], args.n, args.warmup, args.max_seconds)
    for table in tables(r):
        table.print()


if __name__ == "__main__":
    main()
