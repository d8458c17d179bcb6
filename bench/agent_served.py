"""Pod start through the warm node agent, against a compiled plugin doing the same work, and
every served call against the bare interpreter, interleaved in one run.

    .venv/bin/python bench/agent_served.py [-n 100] [--plugin dist/istio-cni/istio-cni]

The API stand-in speaks TLS and requires a bearer token, as a real kube-apiserver does, so every
figure that touches the API pays the handshake (and the plugin the `ssl` import). Each
iteration, in a rotating order:

- the compiled yardstick (`bench/yardstick/`, Go, standard library only): a redirected ADD of
  the pod (netconf, kubeconfig, one pod GET over TLS with the token, setns, one restore of the
  text our rules module builds for the pod) with `iptables-nft-restore --noflush`, the same
  with `nft -f -` (native nftables mode's transaction), and an ADD in an excluded namespace
  (no API call): the references every ADD is a multiple of;
- a redirected ADD of the frozen plugin served by the agent (`<run dir>/cni.sock`, the agent's
  real server and watch cache, running in this process), in iptables mode (nft backend, then
  a CHECK of that pod) and in native nftables mode (libnftables); the same iptables-mode ADD
  with no agent (another run dir: the plugin alone, TLS GET and apply);
- served calls that program nothing: an ADD in an excluded namespace, an ADD and a CHECK of a
  pod without a sidecar (cached); the frozen plugin's VERSION and DEL;
- further rows: the bare interpreter the plugin was frozen from (`python -I -S -c pass`), run
  exactly as the plugin is (same runtime, environment and stdin), and one stock `nsenter
  --net=NS iptables-nft-restore --noflush` and one `nsenter --net=NS nft -f -` of the payloads.

Pod GETs are counted at the API per ADD. The agent's own phases (lookup, rules, apply) are read
per served ADD from the event it counts into its metrics; the apply phase is compared with the
stock restore (iptables mode) and the stock `nft -f` (nftables mode) of the same run. Netns are
made and removed outside timed regions.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

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
    pod_ip,
    prev_result,
    print_machine,
    staged_plugin,
    stock_tool,
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
NFT = ["nft", "-f", "-"]
IPTABLES_MODE = {"iptables_backend": "nft"}
NFTABLES_MODE = {"native_nftables": True, "nftables_backend": "libnftables"}
SERVED = "served"
ALONE = "alone"
PHASES = ("lookup", "rules", "apply", "total")


class Bench:
    """The variants of one run; `plugin` is the plugin's argv (the frozen binary, or the
    source entry for the smoke test)."""

    def __init__(self, plugin: list[str], api: KubeApiServer, work: Path,
                 cleanup: Cleanup) -> None:
        self.plugin, self.api = plugin, api
        self.dirs = {SERVED: work / SERVED, ALONE: work / ALONE}
        for run_dir in self.dirs.values():
            run_dir.mkdir()
            write_kubeconfig(run_dir, api)
        self.pod = api.add_pod(workload("meshed-pod"))
        self.plain_pod = api.add_pod(workload("plain-pod"))
        self.skipped_pod = workload("meshed-pod", namespace=SKIPPED_NS)
        self.agent = serve_plugin_calls(cleanup, self.dirs[SERVED], kubernetes_api_client(api))
        self.events: list[dict[str, Any]] = []
        counted = self.agent.service.count

        def count(served: Any, command: str) -> None:  # the agent's per-ADD event, kept
            if served.event is not None:
                self.events.append(served.event)
            counted(served, command)

        self.agent.service.count = count  # type: ignore[method-assign]
        self.runtime = Runtime(binaries={"istio-cni": plugin, "bare": [
            bare_interpreter(), "-I", "-S", "-c", "pass"]})
        from cni.pipeline import plan, rules_for

        redirect = plan(self.pod)[2]
        [family] = [f for f in rules_for(redirect, ipv6=False).families() if not f.ipv6]
        transaction = rules_for(redirect, ipv6=False, native_nftables=True).transaction()  # type: ignore[union-attr]
        self.payloads = {"restore": family.restore_payload(), "nft": transaction}
        self.yardstick = Yardstick(build_yardstick(), self.dirs[ALONE], work)
        self.payload_files = {tool: self.yardstick.payload(f"payload-{tool}", text)
                              for tool, text in self.payloads.items()}
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.gets: dict[str, list[int]] = defaultdict(list)
        self.phases: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.seq = 0

    def _call(self, ptype: str, where: str, command: str, ns: str, pod: dict, ip: str,
              mode: dict[str, Any] | None = None) -> float:
        """One timed call through the CNI runtime (exec → result on stdout → exit)."""
        conf = {"cniVersion": "1.0.0", "name": "bench", "type": "istio-cni",
                "plugin_log_level": "info", "cni_agent_run_dir": str(self.dirs[where]),
                "exclude_namespaces": [SKIPPED_NS], "pod_namespace": "istio-system",
                **(mode or IPTABLES_MODE), "prevResult": prev_result(ns, ip)}
        meta = pod["metadata"]
        t0 = time.perf_counter()
        # K8S_POD_UID as containerd passes it: what lets the agent answer from its cache
        call = self.runtime.call(ptype, command, path(ns), f"c-{ns}", conf,
                                 k8s_args(meta["namespace"], meta["name"], meta.get("uid", "")))
        elapsed = time.perf_counter() - t0
        check_ok(call, f"{ptype} {command} ({where})")
        return elapsed

    def _pod_gets(self) -> int:
        return self.api.count("GET", r"^/api/v1/namespaces/[^/]+/pods/[^/]+$")

    def _agent_event(self, name: str, record: bool) -> None:
        """The phases of the served ADD just made (its event, counted before the answer)."""
        event = self.events.pop() if self.events else None
        if event is None or event["outcome"] != "redirected":
            raise RuntimeError(f"{name}: the agent counted no redirected ADD ({event})")
        if record:
            for phase in PHASES:
                self.phases[name][phase].append(event["phases"].get(phase, 0.0))

    def redirected(self, where: str, name: str, mode: dict[str, Any], record: bool) -> None:
        """A redirected ADD (then, served in iptables mode, a CHECK of the pod), and a DEL."""
        self.seq += 1
        ip = pod_ip(self.seq)
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, ip, "agent")
            before = self._pod_gets()
            t = self._call("istio-cni", where, "ADD", ns, self.pod, ip, mode)
            gets = self._pod_gets() - before
            if where == SERVED:
                self._agent_event(name, record)
            tc = (self._call("istio-cni", where, "CHECK", ns, self.pod, ip, mode)
                  if where == SERVED and mode is IPTABLES_MODE else None)
            td = self._call("istio-cni", where, "DEL", ns, self.pod, ip, mode)
        if record:
            self.samples[name].append(t)
            self.gets[name].append(gets)
            if tc is not None:
                self.samples["CHECK via the agent, redirected pod"].append(tc)
            if where == ALONE:
                self.samples["DEL"].append(td)

    def unprogrammed(self, name: str, ptype: str, command: str, pod: dict,
                     record: bool) -> None:
        """A call that programs nothing (served by the agent unless it is DEL or the bare
        interpreter), in a fresh netns."""
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, pod_ip(0), "skip")
            t = self._call(ptype, SERVED, command, ns, pod, pod_ip(0))
        if record:
            self.samples[name].append(t)

    def yardstick_add(self, tool: str, record: bool) -> None:
        """The yardstick's redirected ADD in a fresh netns, checked (untimed) for its rules."""
        self.seq += 1
        ip = pod_ip(self.seq)
        argv = RESTORE if tool == "restore" else NFT
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, ip, "yard")
            before = self._pod_gets()
            t = self.yardstick.add(ns, self.pod, argv, self.payload_files[tool], ip)
            gets = self._pod_gets() - before
            listed = ns_exec(ns, *(["iptables-nft-save"] if tool == "restore"
                                   else ["nft", "list", "tables"]))
            if ("ISTIO_INBOUND" if tool == "restore" else "istio-proxy-nat") not in listed:
                raise RuntimeError(f"the yardstick's ADD ({tool}) left no rules")
        if record:
            self.samples[f"yardstick, {tool}"].append(t)
            if tool == "restore":
                self.gets["compiled yardstick"].append(gets)

    def yardstick_skipped(self, record: bool) -> None:
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, pod_ip(0), "skip")
            before = self._pod_gets()
            t = self.yardstick.add(ns, self.skipped_pod, RESTORE, self.payload_files["restore"],
                                   pod_ip(0))
            if self._pod_gets() != before:
                raise RuntimeError("the yardstick's excluded-namespace ADD asked the API")
        if record:
            self.samples["yardstick, excluded namespace"].append(t)

    def stock(self, tool: str, record: bool) -> None:
        self.seq += 1
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, pod_ip(self.seq), "stock")
            t = stock_tool(ns, RESTORE if tool == "restore" else NFT,
                           self.payloads[tool].encode())
        if record:
            self.samples[f"stock {tool}"].append(t)

    def version(self, record: bool) -> None:
        with Cleanup() as cleanup:
            ns = make_pod_netns(cleanup, pod_ip(0), "skip")
            t = self._call("istio-cni", SERVED, "VERSION", ns, self.plain_pod, pod_ip(0))
        if record:
            self.samples["VERSION"].append(t)

    def variants(self) -> list:
        return [
            lambda r: self.unprogrammed("bare interpreter", "bare", "ADD", self.plain_pod, r),
            self.version,
            lambda r: self.yardstick_add("restore", r),
            lambda r: self.yardstick_add("nft", r),
            self.yardstick_skipped,
            lambda r: self.stock("restore", r),
            lambda r: self.stock("nft", r),
            lambda r: self.redirected(SERVED, "ADD via the agent", IPTABLES_MODE, r),
            lambda r: self.redirected(SERVED, "ADD via the agent, nftables mode",
                                      NFTABLES_MODE, r),
            lambda r: self.redirected(ALONE, "ADD, no agent", IPTABLES_MODE, r),
            lambda r: self.unprogrammed("skipped ADD (excluded namespace)", "istio-cni", "ADD",
                                        self.skipped_pod, r),
            lambda r: self.unprogrammed("ADD of a pod without a sidecar", "istio-cni", "ADD",
                                        self.plain_pod, r),
            lambda r: self.unprogrammed("CHECK of a pod without a sidecar", "istio-cni",
                                        "CHECK", self.plain_pod, r),
        ]

    def run(self, n: int, warmup: int, max_seconds: float) -> int:
        return interleave(self.variants(), n, warmup, max_seconds, "agent_served")

    def tables(self) -> list[Table]:
        s = self.samples
        yard, yard_nft = Stats.of(s["yardstick, restore"]), Stats.of(s["yardstick, nft"])
        bare = Stats.of(s["bare interpreter"])
        t = Table("Redirected ADD via the agent and with no agent, against the compiled "
                  "yardstick (TLS API)")
        t.add(timing_row("compiled yardstick, meshed pod (iptables-nft-restore)",
                         s["yardstick, restore"]))
        t.add(timing_row("compiled yardstick, meshed pod (nft -f)", s["yardstick, nft"]))
        for name, ref in (("ADD via the agent", yard),
                          ("ADD via the agent, nftables mode", yard_nft)):
            st = Stats.of(s[name])
            t.add(timing_row(f"{name} ({'libnftables' if 'nftables' in name else 'nft backend'})",
                             s[name], ref.median, "p50 ≤ 2x, p99 ≤ 2.5x yardstick",
                             st.median <= 2 * ref.median and st.p99 <= 2.5 * ref.p99))
            t.notes.append(f"p99 ratio, {name}: {st.p99 / ref.p99:.2f}x the yardstick's p99")
        t.add(timing_row("ADD, no agent (fallback path)", s["ADD, no agent"], yard.median,
                         "ratio to the yardstick"))
        t.add(timing_row("stock tool: nsenter iptables-nft-restore --noflush (one spawn)",
                         s["stock restore"], yard.median, "ratio to the yardstick"))
        t.add(timing_row("stock tool: nsenter nft -f - (one spawn)", s["stock nft"],
                         yard_nft.median, "ratio to the yardstick (nft -f)"))
        t.notes.append("the yardstick: bench/yardstick/ (Go, standard library), the necessary "
                       "work of a redirected ADD: netconf, kubeconfig, one pod GET over TLS, "
                       "setns, one restore (or nft -f) of the same text")
        b = Table("Calls that program nothing, VERSION and DEL, against the bare interpreter "
                  "(run the same way)")
        b.add(timing_row("bare interpreter: python -I -S -c pass", s["bare interpreter"]))
        b.add(timing_row("compiled yardstick, excluded namespace",
                         s["yardstick, excluded namespace"], bare.median, "ratio to bare"))
        for name in ("VERSION", "skipped ADD (excluded namespace)",
                     "ADD of a pod without a sidecar", "CHECK of a pod without a sidecar", "DEL",
                     "CHECK via the agent, redirected pod"):
            st = Stats.of(s[name])
            target = name != "VERSION" and "redirected" not in name
            b.add(timing_row(f"frozen {name}", s[name], bare.median,
                             "p50 ≤ 1.3x bare" if target else "ratio to bare",
                             st.median <= 1.3 * bare.median if target else None))
        b.notes.append("served by the agent: the skipped ADD, the ADD and CHECK of a pod "
                       "without a sidecar (cached, K8S_POD_UID given), the CHECK of a "
                       "redirected pod; DEL never involves the agent")
        b.notes.append("the bare interpreter runs through the same CNI runtime as the plugin: "
                       "the same environment and netconf on stdin")
        g = Table("Pod GETs per ADD (at the API)", headers=(
            "measurement", "n", "GETs per ADD", "", "", "target", "result"))
        for name, target in (("ADD via the agent", 0), ("ADD via the agent, nftables mode", 0),
                             ("ADD, no agent", 1), ("compiled yardstick", 1)):
            got = self.gets[name]
            worst = max(got) if got else -1
            g.add(Row(name, len(got), str(worst), target=f"{target}",
                      ok=bool(got) and worst == target))
        p = Table("Inside the agent: phases per served ADD (its own timings)")
        for name, tool in (("ADD via the agent", "restore"),
                           ("ADD via the agent, nftables mode", "nft")):
            spawn = Stats.of(s[f"stock {tool}"])
            label = ("iptables mode" if tool == "restore" else "nftables mode")
            for phase in PHASES:
                got = self.phases[name][phase]
                if phase != "apply":
                    p.add(timing_row(f"{label}: {phase}", got))
                    continue
                st = Stats.of(got)
                p.add(timing_row(f"{label}: apply", got, spawn.median,
                                 f"p50 ≤ 1.5x one {'restore' if tool == 'restore' else 'nft -f'}"
                                 " spawn", st.median <= 1.5 * spawn.median))
        p.notes.append("the apply phase against the stock tool's row of the same run (nsenter "
                       "+ the tool, one spawn); the rest of a served ADD is the plugin process "
                       "(start, the netns check, the round trip over cni.sock) and the agent's "
                       "parse and decision")
        return [t, b, g, p]


def run(plugin: list[str], n: int, warmup: int = 3, max_seconds: float = 1800.0) -> list[Table]:
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
