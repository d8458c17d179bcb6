"""Redirected ADD in native nftables mode next to iptables mode, against a compiled plugin
doing the same work with the same tool, in one interleaved run.

    .venv/bin/python bench/nftables_latency.py [-n 100] [--plugin dist/istio-cni/istio-cni]

The API stand-in speaks TLS and requires a bearer token. Each iteration, in a rotating order
(so drift and noise hit every variant alike), each in a fresh pod netns (a veth eth0 with an
IPv4 address, made and deleted outside the timed region):

- a timed ADD of the meshed pod by the frozen plugin through the CNI protocol (exec → result
  on stdout → exit, one pod GET), in three modes: native nftables mode talking to nftables
  through libnftables in-process (the library bundled in the frozen plugin), native nftables
  mode through the host's `nft -f -`, and iptables mode with the `nft` backend
  (`iptables-nft-restore`, today's default on most hosts); after each ADD, outside the timed
  region, the netns is checked to hold that mode's rules;
- the compiled yardstick (`bench/yardstick/`, Go, standard library only) doing the same ADD's
  necessary work (netconf, kubeconfig, one pod GET over TLS, setns) with each tool: `nft -f -`
  of the exact transaction the plugin sends, and `iptables-nft-restore --noflush` of the exact
  payload;
- the stock tools alone: one `nsenter --net=NS nft -f -` and one `nsenter --net=NS
  iptables-nft-restore --noflush` of the same text.

Ratios: each ADD over the yardstick using its mode's tool, and each nftables-mode ADD over the
iptables-mode ADD of the same run. The plugin's own phases (lookup, rules, apply) come from its
events on `<run dir>/log.sock`.
"""

from __future__ import annotations

import sys
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
    bench_args,
    bench_node,
    check_ok,
    interleave,
    load,
    make_pod_netns,
    pod_ip,
    print_machine,
    staged_plugin,
    stock_tool,
    timing_row,
)
from testbed.cleanup import Cleanup  # noqa: E402
from testbed.netns import ns_exec  # noqa: E402
from testbed.pods import workload  # noqa: E402

IPTABLES = "iptables mode, nft backend"
MODES: dict[str, dict[str, Any]] = {
    "nftables mode, libnftables": {"native_nftables": True, "nftables_backend": "libnftables"},
    "nftables mode, nft": {"native_nftables": True, "nftables_backend": "nft"},
    IPTABLES: {"iptables_backend": "nft"},
}
"""The plugin config keys of each mode measured, by the name the tables use."""
TOOLS = {"nft -f": ["nft", "-f", "-"],
         "iptables-nft-restore": ["iptables-nft-restore", "--noflush"]}
"""The stock tools, by the name the tables use: what the yardstick applies with, and what the
stock rows spawn."""
TOOL_OF = {"nftables mode, libnftables": "nft -f", "nftables mode, nft": "nft -f",
           IPTABLES: "iptables-nft-restore"}
PHASES = ("lookup", "rules", "apply", "total")


@dataclass
class NftLatency:
    """Raw samples (seconds) of one run; the tables are computed from these."""

    add: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    yardstick: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    """tool → the compiled yardstick's redirected ADD applying with it."""
    tool: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    """tool → one stock spawn of it in a pod netns."""
    phases: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    iterations: int = 0
    load_before: str = ""
    load_after: str = ""


def payloads(pod: dict) -> dict[str, str]:
    """What the plugin sends for `pod` (an IPv4-only pod): the nftables transaction and the
    IPv4 `iptables-restore` payload, by tool name."""
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
        self.payload_files = {tool: node.yardstick.payload(f"payload-{i}", text)
                              for i, (tool, text) in enumerate(self.payloads.items())}
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

    def yardstick(self, tool: str, record: bool = True) -> None:
        """The yardstick's redirected ADD applying with `tool`, checked (untimed) for rules."""
        self.seq += 1
        ip = pod_ip(self.seq)
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, ip, "yard")
            t = self.node.yardstick.add(ns, self.pod, TOOLS[tool], self.payload_files[tool], ip)
            mode = "nftables mode, nft" if tool == "nft -f" else IPTABLES
            if not programmed(ns, mode):
                raise RuntimeError(f"the yardstick's ADD ({tool}) left no rules")
        if record:
            self.r.yardstick[tool].append(t)

    def stock(self, record: bool = True) -> None:
        """Each stock tool once, each in a fresh netns."""
        for tool, argv in TOOLS.items():
            self.seq += 1
            with Cleanup() as cleanup:
                ns = make_pod_netns(cleanup, pod_ip(self.seq), "stock")
                t = stock_tool(ns, argv, self.payloads[tool].encode())
            if record:
                self.r.tool[tool].append(t)

    def variants(self) -> list[Any]:
        return [*(lambda rec, m=m: self.add(m, rec) for m in MODES),
                *(lambda rec, t=t: self.yardstick(t, rec) for t in TOOLS), self.stock]


def measure(plugin_argv: list[str], n: int, warmup: int = 3,
            max_seconds: float = 1800.0) -> NftLatency:
    """Run `warmup` unrecorded then up to `n` recorded iterations (at most `max_seconds`)."""
    result = NftLatency(load_before=load())
    with bench_node(plugin_argv) as node:
        runner = Runner(node, result)
        result.iterations = interleave(runner.variants(), n, warmup, max_seconds,
                                       "nftables_latency")
    result.load_after = load()
    return result


def tables(r: NftLatency) -> list[Table]:
    """Latency with ratios to the yardstick (same tool) and to iptables mode; the phases."""
    t = Table("Redirected ADD: native nftables mode vs iptables mode vs the compiled yardstick "
              f"({r.iterations} interleaved iterations, TLS API; load {r.load_before} → "
              f"{r.load_after})")
    yard = {tool: Stats.of(r.yardstick[tool]).median for tool in TOOLS}
    for tool in TOOLS:
        t.add(timing_row(f"compiled yardstick ADD, {tool}", r.yardstick[tool]))
    for tool in TOOLS:
        t.add(timing_row(f"stock tool: nsenter {tool} (one spawn)", r.tool[tool], yard[tool],
                         f"ratio to the yardstick, {tool}"))
    ipt = Stats.of(r.add[IPTABLES]).median
    for mode in MODES:
        t.add(timing_row(f"redirected ADD, {mode}", r.add[mode], yard[TOOL_OF[mode]],
                         f"ratio to the yardstick, {TOOL_OF[mode]}"))
    for mode in MODES:
        if mode != IPTABLES:
            t.add(timing_row(f"  {mode} over iptables mode", r.add[mode], ipt,
                             "ratio to iptables-mode ADD"))
    t.notes.append("the yardstick (bench/yardstick/, Go, standard library) does the ADD's "
                   "necessary work (netconf, kubeconfig, one pod GET over TLS, setns) and "
                   "applies the exact text the plugin sends with the tool named")
    t.notes.append("libnftables is the library bundled in the frozen plugin; nft is the "
                   "host's binary, run by the plugin as `nft -f -` in the pod netns")

    p = Table("The plugin's own phases of a redirected ADD, by mode (from its log.sock events)")
    for phase in PHASES:
        for mode in MODES:
            p.add(timing_row(f"{phase}, {mode}", r.phases[mode][phase]))
    return [t, p]


def main(argv: list[str] | None = None) -> None:
    args = bench_args(__doc__, 100, argv)
    print_machine()
    with staged_plugin(args.plugin) as plugin:
        r = measure(plugin, args.n, args.warmup, args.max_seconds)
    for table in tables(r):
        table.print()


if __name__ == "__main__":
    main()
