"""Pods set up without istio-cni while the primary CNI rewrites its config: chained vs owned.

A writer process rewrites the primary's conflist in a loop, as Calico's install-cni does on
restart (truncate, then write in place) or as the AWS VPC CNI does (write elsewhere, rename
into place), alternating between two versions of the network (`mtu` 1440 / 1450). Meanwhile
pods are ADDed one after another through `testbed.cnirun.Runtime`, each with the config the
runtime would load at that instant: the first valid `.conf`/`.conflist`/`.json` in byte order,
validated from the very bytes then used (`installer.discovery`, libcni's rules), a `.conf`
wrapped as a list. The plugins are small stub executables that print a CNI result: what is
measured is which config a pod gets, not what the plugins do.

The installer's watch loop runs in this process, as in the agent: in chained mode
(ISTIO_OWNED_CNI_CONFIG=false) it re-inserts its entry into the primary after each rewrite; in
owned mode (true) it keeps `02-istio-cni.conflist` following the primary.

Counted per mode and writer style:
- **without istio-cni**: the pod was set up by a config that has no istio-cni entry (it would
  start outside the mesh; the goal is 0);
- **no config**: no valid config at that instant (the runtime fails the sandbox and retries);
- **stale network**: the pod's network was the version the writer had already replaced (our
  file not yet following the primary's last write).

    .venv/bin/python bench/owned_config.py [--pods 300] [--interval 0.02] [--pace 0.01]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from installer import Installer, atomic, conflist, discovery, gojson  # noqa: E402
from installer.watcher import FightDetector, watch  # noqa: E402
from testbed.cnirun import Runtime, k8s_args  # noqa: E402
from testbed.nodedirs import GOLDEN, make_node_dirs  # noqa: E402
from testbed.wait import wait_for  # noqa: E402

PRIMARY = "10-calico.conflist"
STYLES = ("in-place", "rename")
MODES = (("chained", False), ("owned", True))
MTUS = (1440, 1450)
SEED = 12
STUB = """#!/bin/sh
cat >/dev/null
echo '{"cniVersion":"0.3.1","interfaces":[],"ips":[]}'
"""


def versions() -> tuple[str, str]:
    """The primary's two versions: Calico's golden conflist with each MTU."""
    text = (GOLDEN / "calico.conflist").read_text()
    return text, text.replace('"mtu": 1440', '"mtu": 1450')


def writer(path: str, style: str, interval: float, stop: multiprocessing.synchronize.Event,
           version: multiprocessing.sharedctypes.Synchronized) -> None:
    """Another CNI's installer: rewrite `path` every `interval` s; `version` is the count of
    complete writes (its parity says which MTU is current)."""
    texts = versions()
    n = 0
    while not stop.is_set():
        n += 1
        text = texts[n % 2]
        if style == "in-place":
            with open(path, "w") as f:  # truncate, then write: Calico's install-cni
                f.write(text)
        else:
            staged = path + ".staged"  # no config suffix: libcni ignores it
            with open(staged, "w") as f:
                f.write(text)
            os.rename(staged, path)  # aws-node: MOVED_TO
        version.value = n
        stop.wait(interval)


def pick(net_dir: Path) -> dict | None:
    """The network the runtime loads now (libcni ConfFiles + sort + first valid), each file
    read once and validated from those bytes; a `.conf` becomes a one-plugin list."""
    for name in discovery.config_files(net_dir):
        path = net_dir / name
        try:
            data = atomic.read_bytes(path)
        except OSError:
            continue
        if data is None:
            continue
        text = gojson.text_of(data)
        if discovery.check_text(path, text) is not None:
            continue
        doc = json.loads(text)
        if name.endswith(".conflist"):
            return doc
        return {"name": doc.get("name", ""), "cniVersion": doc.get("cniVersion", ""),
                "plugins": [doc]}
    return None


@dataclass
class Outcome:
    mode: str
    style: str
    pods: int = 0
    without: int = 0
    no_config: int = 0
    stale: int = 0
    rewrites: int = 0


def run_mode(mode: str, owned: bool, style: str, pods: int, interval: float,
             pace: float) -> Outcome:
    out = Outcome(mode, style)
    with tempfile.TemporaryDirectory(prefix="icni-bench-owned-") as tmp:
        dirs = make_node_dirs(Path(tmp))
        stub = dirs.root / "stub-plugin"
        stub.write_text(STUB)
        stub.chmod(0o755)
        types = ["calico", "portmap", "bandwidth", conflist.ISTIO_TYPE]
        runtime = Runtime(binaries={t: [str(stub)] for t in types}, cni_path=[])
        primary = dirs.put(PRIMARY, text=versions()[0])
        installer = Installer(replace(dirs.config(owned_config=owned), plugin_log_level="info"))
        installer.install()
        stop_watch = threading.Event()
        detector = FightDetector(threshold=10**6)  # measure the loop, not its throttle
        thread = threading.Thread(target=watch, args=(installer, stop_watch, detector),
                                  name="installer-watch", daemon=True)
        thread.start()
        wait_for(lambda: installer.ready, 10, "installed")
        ctx = multiprocessing.get_context("spawn")
        stop_writer = ctx.Event()
        version = ctx.Value("q", 0)
        proc = ctx.Process(target=writer, args=(str(primary), style, interval, stop_writer,
                                                version), daemon=True)
        proc.start()
        try:
            wait_for(lambda: version.value > 0, 30, "writer started")
            rng = random.Random(SEED)
            due = time.monotonic()
            for i in range(pods):
                # Pods arrive at random (Poisson, mean gap `pace`), whatever the last one's
                # outcome: a schedule locked to the writer's timer, or a failed sandbox retried
                # at once, would sample the same phase of the writer's cycle again and again.
                due += rng.expovariate(1 / pace)
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                before = version.value
                net = pick(dirs.net_dir)
                after = version.value
                out.pods += 1
                if net is None:
                    out.no_config += 1
                    continue
                plugins = [p["type"] for p in net["plugins"]]
                calls = runtime.run_list(net, "ADD", "/proc/self/ns/net", f"pod-{i}",
                                         k8s_args("default", f"pod-{i}"))
                assert all(c.status == 0 for c in calls), [c.error for c in calls]
                if conflist.ISTIO_TYPE not in plugins:
                    out.without += 1
                mtu = next(p.get("mtu") for p in net["plugins"] if p["type"] == "calico")
                current = {MTUS[before % 2], MTUS[after % 2]}
                if mtu not in current:
                    out.stale += 1
        finally:
            stop_writer.set()
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
            out.rewrites = version.value
            stop_watch.set()
            thread.join(timeout=10)
            installer.uninstall()
    return out


HEADERS = ("mode", "writer", "primary rewrites", "pods", "without istio-cni", "no config",
           "stale network", "goal", "result")


def render(outcomes: list[Outcome], interval: float, pace: float) -> str:
    """The result table (GitHub markdown), one row per mode and writer style."""
    cells = [list(HEADERS)] + [
        [o.mode, o.style, str(o.rewrites), str(o.pods), str(o.without), str(o.no_config),
         str(o.stale), "0 without", "PASS" if o.without == 0 else "MISS"] for o in outcomes]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADERS))]
    lines = ["### Pods set up while the primary CNI rewrites its config", ""]
    for i, c in enumerate(cells):
        lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True))
                     + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["", f"- the writer rewrites {PRIMARY} every {interval * 1000:.0f} ms (MTU "
              "1440/1450 in turn); pods arrive at random, "
              f"{pace * 1000:.0f} ms apart on average (later while the last one runs), each "
              "ADDed through the runtime with the config libcni would load at that instant",
              "- without istio-cni: the pod would start outside the mesh (goal 0); no config: "
              "the runtime fails the sandbox and retries; stale network: the pod got the MTU "
              "the writer had already replaced"]
    return "\n".join(lines) + "\n"


def measure(pods: int, interval: float, pace: float,
            styles: tuple[str, ...] = STYLES) -> list[Outcome]:
    quiet = logging.getLogger("installer")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the chained loop logs every re-insertion
    try:
        return [run_mode(mode, owned, style, pods, interval, pace)
                for style in styles for mode, owned in MODES]
    finally:
        quiet.setLevel(level)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=300, help="pods per mode and writer style")
    ap.add_argument("--interval", type=float, default=0.02,
                    help="seconds between the writer's rewrites")
    ap.add_argument("--pace", type=float, default=0.01,
                    help="seconds between pod arrivals (a pod starts late if the last is slow)")
    ap.add_argument("--style", choices=STYLES, action="append",
                    help="writer style (default: both)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    for key, value in machine().items():
        print(f"- {key}: {value}")
    print()
    outcomes = measure(args.pods, args.interval, args.pace, tuple(args.style or STYLES))
    print(render(outcomes, args.interval, args.pace), flush=True)


if __name__ == "__main__":
    main()
