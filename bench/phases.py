"""Where a redirected ADD's time goes: process start, imports, config parse, pod lookup,
decision, rule rendering, apply.

    .venv/bin/python bench/phases.py [-k 20]

Three sources, all measured from outside the product code (no timestamps in the plugin):

- external, frozen: the frozen hello-world's start (process start) and the frozen plugin's
  `VERSION` (start + the entry point's imports), from bench/plugin_latency.py's run;
- the plugin's own phase report (`lookup`, `rules`, `apply`, `total`, POSTed to log.sock);
- in-process, source: `k` fresh interpreters each time the stages the plugin runs, cold (first
  call, lazy imports included), with `time.perf_counter`: config parse, log setup, the lookup
  stage's imports, kubeconfig load, decision, the rule stage's imports, rendering; plus
  `python -X importtime` of the ADD path's imports, largest first.

Run standalone it does a short plugin_latency run (n=20) for the external and reported parts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, Row, Stats, Table, ms  # noqa: E402
from bench.plugin_latency import LatencyResult  # noqa: E402

CHILD = Path(__file__).with_name("phase_child.py")
ADD_PATH_IMPORTS = ("import cni.plugin, cni.protocol, cni.kubeconfig, cni.podlookup, cni.podinfo, "
                    "cni.redirect, cni.rules, cni.apply, cni.backends.restore, "
                    "logging.handlers")


def inprocess(k: int) -> dict[str, list[float]]:
    """`k` fresh source interpreters running bench/phase_child.py; stage → samples (s)."""
    samples: dict[str, list[float]] = {}
    for _ in range(k):
        proc = subprocess.run([sys.executable, str(CHILD)], capture_output=True,
                              text=True, check=True, timeout=60, cwd=ROOT)
        for stage, seconds in json.loads(proc.stdout).items():
            samples.setdefault(stage, []).append(seconds)
    return samples


def importtime(top: int = 10) -> list[tuple[str, float]]:
    """`python -X importtime` of the ADD path's imports: (module, cumulative s), largest first,
    only modules not already loaded by a bare interpreter."""
    def cumulative(code: str) -> dict[str, float]:
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                              capture_output=True, text=True, check=True, timeout=60, cwd=ROOT)
        found: dict[str, float] = {}
        for line in proc.stderr.splitlines():
            if not line.startswith("import time:") or "cumulative" in line:
                continue
            _, cum_us, raw = line.split("|")
            depth = (len(raw) - len(raw.lstrip()) - 1) // 2  # " name" is top level
            if depth <= 1:  # the ADD path's own modules and what they import directly
                found[raw.strip()] = int(cum_us) / 1e6
        return found

    bare = cumulative("pass")  # the interpreter's own start (site, encodings, ...)
    mods = {m: s for m, s in cumulative(ADD_PATH_IMPORTS).items() if m not in bare}
    ranked = sorted(mods.items(), key=lambda kv: kv[1], reverse=True)
    return ranked[:top]


def table(latency: LatencyResult, stages: dict[str, list[float]],
          imports: list[tuple[str, float]], backend: str = "nft") -> Table:
    """The breakdown of a redirected ADD with `backend`, medians in ms."""
    med = {name: Stats.of(s).median for name, s in stages.items()}
    hello = Stats.of(latency.hello).median
    version = Stats.of(latency.version).median
    add = Stats.of(latency.add[backend]).median
    reported = {p: Stats.of(s).median for p, s in latency.phases[backend].items()}
    total = reported.get("total", float("nan"))

    def share(x: float) -> str:
        return f"{100 * x / add:.0f}%" if add == add and x == x else ""

    t = Table(f"Phase breakdown of a redirected ADD ({backend}; medians)",
              headers=("phase", "n", "median ms", "", "share of ADD", "measured by", ""))

    def row(name: str, n: int, value: float, how: str) -> None:
        t.add(Row(name, n, ms(value), "", share(value), how))

    row("ADD, exec → exit (wall)", len(latency.add[backend]), add, "plugin_latency")
    row("process start (frozen hello-world)", len(latency.hello), hello, "external")
    row("entry imports (frozen VERSION − hello)", len(latency.version), version - hello,
        "external")
    row("pod lookup (kubeconfig, GET, decision)", len(latency.phases[backend]["lookup"]),
        reported.get("lookup", float("nan")), "plugin's phase report")
    row("rules (netns enter, IPv6 detection, render)", len(latency.phases[backend]["rules"]),
        reported.get("rules", float("nan")), "plugin's phase report")
    row("apply (backend detection, save, restore)", len(latency.phases[backend]["apply"]),
        reported.get("apply", float("nan")), "plugin's phase report")
    row("in add(), not in a phase (config, logging setup)", len(latency.phases[backend]["total"]),
        total - sum(reported.get(p, 0.0) for p in ("lookup", "rules", "apply")),
        "plugin's phase report")
    row("outside add() (stdin, dispatch, exit, log.sock posts)", len(latency.add[backend]),
        add - version - total, "wall − VERSION − total")
    for name, value in med.items():
        row(f"  source, cold: {name}", len(stages[name]), value, "in-process, fresh python")
    for name, seconds in imports:
        t.notes.append(f"import {name}: {seconds * 1000:.1f} ms cumulative (-X importtime, "
                       "source)")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", type=int, default=20, help="fresh interpreters for in-process stages")
    ap.add_argument("-n", type=int, default=20, help="plugin_latency iterations")
    args = ap.parse_args()
    from bench.common import build_hello, print_machine, stage_frozen_plugin
    from bench.plugin_latency import measure

    print_machine()
    with tempfile.TemporaryDirectory(prefix="icni-bench-") as tmp:
        plugin = stage_frozen_plugin(Path(tmp))
        latency = measure([str(plugin)], [str(build_hello())], args.n)
    table(latency, inprocess(args.k), importtime()).print()


if __name__ == "__main__":
    main()
