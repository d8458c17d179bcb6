"""Redirected ADD in native nftables mode next to iptables mode, against the stock tools, in
one interleaved run.

    .venv/bin/python bench/nftables_latency.py [-n 100] [--plugin dist/istio-cni/istio-cni]

Each iteration, in a rotating order (so drift and noise hit every variant alike), each in a
fresh pod netns (a veth eth0 with an IPv4 address, made and deleted outside the timed region):

- a timed ADD of the meshed pod by the frozen plugin through the CNI protocol (exec → result
  on stdout → exit, one pod GET from the API stand-in on loopback), in three modes: native
  nftables mode talking to nftables through libnftables in-process (the library bundled in
  the frozen plugin), native nftables mode through the host's `nft -f -`, and iptables mode
  with the `nft` backend (`iptables-nft-restore`, today's default on most hosts); after each
  ADD, outside the timed region, the netns is checked to hold that mode's rules;
- the stock-tool floors of the same work: `nsenter --net=NS nft -f -` of the exact
  transaction the plugin sends, and `nsenter --net=NS iptables-nft-restore --noflush` of the
  exact payload, each plus one `curl` GET of the same pod (the plugin's lookup), timed apart
  and reported as tool + GET.

Ratios: each ADD over its own mode's floor, and each nftables-mode ADD over the iptables-mode
ADD of the same run. The plugin's own phases (lookup, rules, apply) come from its events on
`<run dir>/log.sock`.
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
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    BenchNode,
    Stats,
    Table,
    bench_node,
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
from testbed.netns import ns_exec, path  # noqa: E402
from testbed.pods import workload  # noqa: E402

IPTABLES = "iptables mode, nft backend"
MODES: dict[str, dict[str, Any]] = {
    "nftables mode, libnftables": {"native_nftables": True, "nftables_backend": "libnftables"},
    "nftables mode, nft": {"native_nftables": True, "nftables_backend": "nft"},
    IPTABLES: {"iptables_backend": "nft"},
}
"""The plugin config keys of each mode measured, by the name the tables use."""
FLOORS = {"nft -f": ["nft", "-f", "-"],
          "iptables-nft-restore": ["iptables-nft-restore", "--noflush"]}
FLOOR_OF = {"nftables mode, libnftables": "nft -f", "nftables mode, nft": "nft -f",
            IPTABLES: "iptables-nft-restore"}
PHASES = ("lookup", "rules", "apply", "total")


@dataclass
class NftLatency:
    """Raw samples (seconds) of one run; the tables are computed from these."""

    add: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    tool: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    curl: list[float] = field(default_factory=list)
    phases: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    iterations: int = 0
    load_before: str = ""
    load_after: str = ""

    def floor(self, tool: str) -> list[float]:
        """tool + GET per iteration (both measured in that iteration)."""
        return [t + c for t, c in zip(self.tool[tool], self.curl, strict=False)]


def payloads(pod: dict) -> dict[str, str]:
    """What the plugin sends for `pod` (an IPv4-only pod): the nftables transaction and the
    IPv4 `iptables-restore` payload, by floor name."""
    from cni.pipeline import plan, rules_for

    redirect = plan(pod)[2]
    assert redirect is not None, "the bench pod must be redirected"
    nft = rules_for(redirect, ipv6=False, native_nftables=True)
    ipt = rules_for(redirect, ipv6=False)
    [family] = [f for f in ipt.families() if not f.ipv6]  # type: ignore[union-attr]
    return {"nft -f": nft.transaction(),  # type: ignore[union-attr]
            "iptables-nft-restore": family.restore_payload()}


def programmed(ns: str, mode: str) -> bool:
    """Does the netns hold `mode`'s rules (and not the other mode's)?"""
    tables = ns_exec(ns, "nft", "list", "tables")
    nft = "table inet istio-proxy-nat" in tables
    return nft if MODES[mode].get("native_nftables") else (not nft and "table ip nat" in tables)


class Runner:
    """One bench node and the variants measured against it."""

    def __init__(self, node: BenchNode, result: NftLatency) -> None:
        self.node = node
        self.r = result
        self.pod = workload("meshed-pod")
        node.api.add_pod(self.pod)
        self.payloads = payloads(self.pod)
        meta = self.pod["metadata"]
        self.pod_url = f"{node.api.url}/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
        self.seq = 1

    def add(self, mode: str, record: bool = True) -> None:
        self.seq += 1
        ip = pod_ip(self.seq)
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, ip, "nft")
            t, call = self.node.call("ADD", ns, self.pod, ip=ip, **MODES[mode])
            check_ok(call, f"ADD ({mode})")
            event = self.node.sink.take()
            if not programmed(ns, mode):
                raise RuntimeError(f"ADD ({mode}) succeeded but the netns lacks its rules")
        if record:
            self.r.add[mode].append(t)
            if event and event.get("outcome") == "redirected":
                for phase, seconds in event["phases"].items():
                    self.r.phases[mode][phase].append(seconds)

    def floor(self, record: bool = True) -> None:
        """Each tool in a fresh netns, then one `curl` GET of the pod."""
        times: dict[str, float] = {}
        for tool, argv in FLOORS.items():
            self.seq += 1
            with Cleanup() as cleanup:
                ns = make_pod_netns(cleanup, pod_ip(self.seq), "floor")
                times[tool], proc = timed_run(["nsenter", f"--net={path(ns)}", *argv],
                                              input=self.payloads[tool].encode(),
                                              env=dict(os.environ))
                if proc.returncode != 0:
                    raise RuntimeError(f"floor {tool}: {proc.stderr.decode().strip()}")
        t_curl, proc = timed_run(["curl", "-sf", "-H", "Authorization: Bearer bench",
                                  "-H", "Accept: application/json", self.pod_url])
        if proc.returncode != 0:
            raise RuntimeError(f"floor curl: exit {proc.returncode}")
        if record:
            for tool, t in times.items():
                self.r.tool[tool].append(t)
            self.r.curl.append(t_curl)

    def variants(self) -> list[Any]:
        return [*(lambda rec, m=m: self.add(m, rec) for m in MODES), self.floor]


def measure(plugin_argv: list[str], n: int, warmup: int = 3,
            max_seconds: float = 1800.0) -> NftLatency:
    """Run `warmup` unrecorded then up to `n` recorded iterations (at most `max_seconds`)."""
    result = NftLatency(load_before=load())
    with bench_node(plugin_argv) as node:
        runner = Runner(node, result)
        variants = runner.variants()
        deadline = time.monotonic() + max_seconds
        for i in range(warmup + n):
            if time.monotonic() > deadline:
                print(f"nftables_latency: time budget reached after {result.iterations} "
                      "iterations", file=sys.stderr)
                break
            k = i % len(variants)
            for fn in variants[k:] + variants[:k]:
                fn(i >= warmup)
            if i >= warmup:
                result.iterations += 1
    result.load_after = load()
    return result


def tables(r: NftLatency) -> list[Table]:
    """Latency with ratios to each mode's floor and to iptables mode; the plugin's phases."""
    t = Table("Redirected ADD: native nftables mode vs iptables mode vs the stock tools "
              f"({r.iterations} interleaved iterations; load {r.load_before} → {r.load_after})")
    floors = {tool: Stats.of(r.floor(tool)).median for tool in FLOORS}
    for tool in FLOORS:
        t.add(timing_row(f"floor: nsenter {tool} + curl GET", r.floor(tool)))
        t.add(timing_row(f"  of which nsenter {tool}", r.tool[tool]))
    t.add(timing_row("  of which curl GET", r.curl))
    ipt = Stats.of(r.add[IPTABLES]).median
    for mode in MODES:
        t.add(timing_row(f"redirected ADD, {mode}", r.add[mode], floors[FLOOR_OF[mode]],
                         f"ratio to floor {FLOOR_OF[mode]}"))
    for mode in MODES:
        if mode != IPTABLES:
            t.add(timing_row(f"  {mode} over iptables mode", r.add[mode], ipt,
                             "ratio to iptables-mode ADD"))
    t.notes.append("each floor is the stock tool fed the exact text the plugin sends, in a "
                   "fresh netns through nsenter, plus one curl GET of the same pod")
    t.notes.append("libnftables is the library bundled in the frozen plugin; nft is the "
                   "host's binary, run by the plugin as `nft -f -` in the pod netns")

    p = Table("The plugin's own phases of a redirected ADD, by mode (from its log.sock events)")
    for phase in PHASES:
        for mode in MODES:
            p.add(timing_row(f"{phase}, {mode}", r.phases[mode][phase]))
    return [t, p]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=100, help="recorded iterations (default 100)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--plugin", type=Path, help="the frozen plugin (default dist/istio-cni)")
    ap.add_argument("--max-seconds", type=float, default=1800.0)
    args = ap.parse_args()
    print_machine()
    with tempfile.TemporaryDirectory(prefix="icni-bench-") as tmp:
        plugin = stage_frozen_plugin(Path(tmp), *([args.plugin] if args.plugin else []))
        r = measure([str(plugin)], args.n, args.warmup, args.max_seconds)
    for table in tables(r):
        table.print()


if __name__ == "__main__":
    main()
