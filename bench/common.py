"""Shared pieces of the benchmarks: statistics, tables, the machine, the pod-start benches'
command line and interleaved loop, a bench node (the API stand-in over TLS, a run dir and a node
agent's log socket, from `testbed`), the frozen plugin, the frozen hello-world, the bare
interpreter, the stock tools and the compiled yardstick (`bench/yardstick/`, Go).

Every network namespace made here is named `icni-bench-*` and registered on a
`testbed.cleanup.Cleanup` the moment it exists; every process started here is waited for or
killed by its own handle.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testbed import netns as nsutil  # noqa: E402
from testbed.cleanup import Cleanup  # noqa: E402
from testbed.cnirun import CniCall, Runtime, k8s_args  # noqa: E402
from testbed.kubeapi import KubeApiServer, make_tls_material, write_kubeconfig  # noqa: E402
from testbed.netns import create_netns, path  # noqa: E402

FROZEN_PLUGIN = ROOT / "dist" / "istio-cni" / "istio-cni"
HELLO_SPEC = Path(__file__).with_name("hello.spec")
HELLO_BUILD = ROOT / "build" / "bench-hello"
YARDSTICK_SOURCE = Path(__file__).with_name("yardstick")
YARDSTICK_BUILD = ROOT / "build" / "bench-yardstick"
NETNS_PREFIX = "icni-bench"
BACKENDS = ("nft", "legacy", "python-iptables")
TOKEN = "bench-token-not-a-secret"
"""The bearer token the API stand-in requires (a real API server's is a secret; this is not)."""
SKIPPED_NS = "kube-system"
"""The excluded namespace of every bench config: an ADD there makes no API call."""
PLUGIN_LOCKFILE_ENV = {"XTABLES_LOCKFILE": "/proc/self/ns/net"}
"""What our plugin sets for iptables-legacy (>= 1.8.6): a pod-scoped xtables lock."""


# --- statistics and tables ----------------------------------------------------------------------

def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Stats:
    """n, median and p99 of a list of durations (seconds)."""

    n: int
    median: float
    p99: float
    mean: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        if not samples:
            return cls(0, math.nan, math.nan, math.nan)
        return cls(len(samples), statistics.median(samples), percentile(samples, 99),
                   statistics.fmean(samples))


@dataclass
class Row:
    """One line of a result table: a measurement, its numbers and its target."""

    name: str
    n: int
    median: str
    p99: str = ""
    ratio: str = ""
    target: str = ""
    ok: bool | None = None

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else ("PASS" if self.ok else "MISS")


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def timing_row(name: str, samples: Sequence[float], reference: float | None = None,
               target: str = "", ok: bool | None = None) -> Row:
    """A row of durations: median and p99 in ms, the median's ratio to `reference` if given."""
    s = Stats.of(samples)
    ratio = (f"{s.median / reference:.2f}x" if reference and not math.isnan(s.median)
             else "")
    return Row(name, s.n, ms(s.median), ms(s.p99), ratio, target, ok)


@dataclass
class Table:
    """A titled table of rows, printed as GitHub markdown (readable in a terminal too)."""

    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    headers: tuple[str, ...] = ("measurement", "n", "median ms", "p99 ms", "ratio",
                                "target", "result")

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def render(self) -> str:
        cells = [list(self.headers)] + [
            [r.name, str(r.n), r.median, r.p99, r.ratio, r.target, r.verdict] for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(self.headers))]
        lines = [f"### {self.title}", ""]
        for i, c in enumerate(cells):
            lines.append("| " + " | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True))
                         + " |")
            if i == 0:
                lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def print(self) -> None:
        print(self.render(), flush=True)


# --- the pod-start benches' command line and loop -----------------------------------------------

def bench_args(doc: str, default_n: int, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """-n, --warmup, --plugin and --max-seconds, as every pod-start bench takes them; `doc` is
    the bench's module docstring (its first paragraph is the description)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=default_n,
                    help=f"recorded iterations (default {default_n})")
    ap.add_argument("--warmup", type=int, default=3, help="unrecorded iterations first")
    ap.add_argument("--plugin", type=Path, default=FROZEN_PLUGIN,
                    help="the frozen plugin (default dist/istio-cni/istio-cni)")
    ap.add_argument("--max-seconds", type=float, default=1800.0,
                    help="stop recording after this long (default 1800)")
    return ap.parse_args(argv)


def interleave(variants: Sequence[Callable[[bool], None]], n: int, warmup: int,
               max_seconds: float, what: str) -> int:
    """`warmup` unrecorded, then up to `n` recorded iterations (within `max_seconds`), each
    running every variant once, starting one further along each time so that drift and noise
    hit every variant alike. A variant is called with `record`. Returns the iterations
    recorded."""
    deadline = time.monotonic() + max_seconds
    for i in range(warmup + n):
        if time.monotonic() > deadline:
            print(f"{what}: time budget reached after {max(0, i - warmup)} iterations",
                  file=sys.stderr)
            return max(0, i - warmup)
        k = i % len(variants)
        for fn in [*variants[k:], *variants[:k]]:
            fn(i >= warmup)
    return n


# --- the machine --------------------------------------------------------------------------------

def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
        else "n/a"


def machine() -> dict[str, str]:
    """What the numbers were measured on, plus the load average right now."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import PyInstaller

        pyinstaller = PyInstaller.__version__
    except ImportError:
        pyinstaller = "n/a"
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "pyinstaller": pyinstaller,
        "iptables": _first_line(["iptables", "--version"]),
        "iptables-legacy": _first_line(["iptables-legacy", "--version"]),
        "load average": load(),
    }


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_machine() -> None:
    print("### machine\n")
    for key, value in machine().items():
        print(f"- {key}: {value}")
    print(flush=True)


# --- network namespaces -------------------------------------------------------------------------

def make_pod_netns(cleanup: Cleanup, ip: str, tag: str = "pod") -> str:
    """A fresh `icni-bench-<tag>-*` netns with lo up and a veth eth0 (peer inside) holding
    `ip`/24; deleted when `cleanup` closes."""
    return create_netns(cleanup, f"{NETNS_PREFIX}-{tag}", v4=ip, ifname="eth0").name


def pod_ip(i: int) -> str:
    return f"10.217.{i // 250 % 250}.{i % 250 + 2}"


def leftover_netns() -> list[str]:
    """The `icni-bench-*` netns that exist now (none should outlive a benchmark)."""
    return nsutil.leftover_netns(f"{NETNS_PREFIX}-")


# --- the node agent's log socket ----------------------------------------------------------------

class EventSink:
    """The node agent's own log socket server on `<run dir>/log.sock`, collecting the plugin's
    ADD events as they arrive."""

    def __init__(self, run_dir: Path) -> None:
        from node_daemon.logsink import LogSink
        from node_daemon.metrics import Metrics

        self.path = run_dir / "log.sock"
        self.events: list[dict[str, Any]] = []
        self._arrived = threading.Condition()
        self._sink = LogSink(self.path, Metrics(), on_report=self._report)

    def _report(self, path: str, body: Any) -> None:
        if path == "/event":
            with self._arrived:
                self.events.append(body)
                self._arrived.notify_all()

    def take(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The oldest unread event, waiting briefly for it (the plugin posts it at exit)."""
        with self._arrived:
            self._arrived.wait_for(lambda: bool(self.events), timeout=timeout)
            return self.events.pop(0) if self.events else None

    def stop(self) -> None:
        self._sink.stop()


# --- the plugin and the hello-world -------------------------------------------------------------

@contextmanager
def staged_plugin(source: Path = FROZEN_PLUGIN) -> Iterator[list[str]]:
    """The argv of a private copy of the frozen plugin, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="icni-bench-") as tmp:
        yield [str(stage_frozen_plugin(Path(tmp), source))]


def stage_frozen_plugin(dest: Path, source: Path = FROZEN_PLUGIN) -> Path:
    """A private copy of the onedir bundle (others may rebuild dist/ while we measure)."""
    if not source.exists():
        raise SystemExit(f"{source} not found: build it with scripts/build-frozen.sh "
                         "(or ISTIO_CNI_PLUGIN_ONLY=1 scripts/build-frozen.sh)")
    target = dest / "istio-cni"
    shutil.copytree(source.parent, target, symlinks=True)
    return target / source.name


def build_hello(force: bool = False) -> Path:
    """The frozen hello-world (bench/hello.spec: onedir, the plugin's EXE/COLLECT options),
    built once into build/bench-hello/ and reused."""
    exe = HELLO_BUILD / "dist" / "hello" / "hello"
    if exe.exists() and not force:
        return exe
    pyinstaller = Path(sys.executable).with_name("pyinstaller")
    subprocess.run([str(pyinstaller), "--noconfirm", "--clean", "--log-level", "WARN",
                    "--distpath", str(HELLO_BUILD / "dist"),
                    "--workpath", str(HELLO_BUILD / "work"), str(HELLO_SPEC)],
                   check=True, cwd=ROOT, timeout=600)
    return exe


def bare_interpreter() -> str:
    """The interpreter the frozen plugin is built from (this venv's base interpreter): run as
    `python -I -S -c pass`, the floor of any Python process."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def build_yardstick() -> Path:
    """The compiled yardstick (`bench/yardstick/`: a reference CNI plugin in Go, standard
    library only), built with the distribution's Go into
    `build/bench-yardstick/<hash of its source>/` and reused while the source is unchanged.

    Go comes from `bench/setup.sh` (Debian's golang-go); nothing is downloaded: modules off,
    no toolchain switch, cgo off."""
    go = shutil.which("go")
    if go is None:
        raise SystemExit("the compiled yardstick needs Go: run bench/setup.sh "
                         "(it installs the distribution's golang-go)")
    files = sorted(p for p in YARDSTICK_SOURCE.iterdir() if p.suffix == ".go"
                   or p.name == "go.mod")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    exe = YARDSTICK_BUILD / digest.hexdigest()[:16] / "yardstick"
    if exe.exists():
        return exe
    exe.parent.mkdir(parents=True, exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(YARDSTICK_BUILD),
           "GOCACHE": str(YARDSTICK_BUILD / "gocache"), "GOPATH": str(YARDSTICK_BUILD / "gopath"),
           "GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    tmp = exe.with_name(f".yardstick-{os.getpid()}")
    proc = subprocess.run([go, "build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "."],
                          cwd=YARDSTICK_SOURCE, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"go build of the yardstick failed: {proc.stderr.strip()}")
    os.replace(tmp, exe)
    return exe


def stock_tool(netns: str, argv: Sequence[str], payload: bytes,
               env: dict[str, str] | None = None) -> float:
    """One spawn of a stock tool in `netns` (`nsenter --net=NS argv < payload`), timed; what a
    plugin that only shells out would pay for its apply."""
    t, proc = timed_run(["nsenter", f"--net={path(netns)}", *argv], input=payload,
                        env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.decode().strip()}")
    return t


def source_plugin_argv() -> list[str]:
    """The plugin from source, as `python -m cni` (for smoke runs without a frozen build)."""
    return [sys.executable, "-m", "cni"]


def timed_run(argv: list[str], input: bytes | None = None,
              env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of one child process, exec to exit (its output captured)."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, input=input, capture_output=True, env=env, check=False,
                          timeout=120)
    return time.perf_counter() - t0, proc


def prev_result(netns: str, ip: str) -> dict[str, Any]:
    """What bridge + host-local would hand on to a chained plugin (DEL and CHECK get it too)."""
    return {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": path(netns)}],
            "ips": [{"address": f"{ip}/24", "interface": 0}]}


@dataclass
class Yardstick:
    """The compiled reference plugin, run through the same CNI runtime as ours (exec →
    result on stdout → exit), against the same API stand-in and kubeconfig."""

    exe: Path
    run_dir: Path
    """Where the kubeconfig is (the run dir our plugin reads it from too)."""
    payloads: Path
    """A directory for the payload files it applies."""

    def __post_init__(self) -> None:
        self.runtime = Runtime(binaries={"yardstick": [str(self.exe)]})

    def payload(self, name: str, text: str) -> Path:
        """Write what our rules module builds (for one pod and one tool) where it reads it."""
        file = self.payloads / name
        file.write_text(text)
        return file

    def add(self, netns: str, pod: dict[str, Any], apply: Sequence[str], payload: Path,
            ip: str, env: dict[str, str] | None = None) -> float:
        """One timed ADD; `apply` is the tool's argv, fed `payload` inside the pod netns."""
        conf = {"cniVersion": "1.0.0", "name": "bench", "type": "yardstick",
                "cni_agent_run_dir": str(self.run_dir), "exclude_namespaces": [SKIPPED_NS],
                "yardstick": {"apply": list(apply), "payload_file": str(payload),
                              "env": [f"{k}={v}" for k, v in (env or {}).items()]},
                "prevResult": prev_result(netns, ip)}
        meta = pod["metadata"]
        t0 = time.perf_counter()
        call = self.runtime.call("yardstick", "ADD", path(netns), f"y-{netns}", conf,
                                 k8s_args(meta["namespace"], meta["name"]))
        elapsed = time.perf_counter() - t0
        check_ok(call, f"yardstick ADD ({' '.join(apply)})")
        if call.result.get("ips") != conf["prevResult"]["ips"]:
            raise RuntimeError(f"yardstick ADD printed {call.stdout!r}, not its prevResult")
        return elapsed


@contextmanager
def tls_api(work: Path) -> Iterator[KubeApiServer]:
    """The API stand-in over TLS, requiring `TOKEN`, as a real kube-apiserver (certificates
    made with the openssl CLI in `work`)."""
    with KubeApiServer(tls=make_tls_material(work / "tls"), token=TOKEN) as api:
        yield api


@dataclass
class BenchNode:
    """The API stand-in on loopback (TLS, bearer token), a run dir (kubeconfig + log.sock),
    the CNI runtime and the compiled yardstick."""

    api: KubeApiServer
    run_dir: Path
    sink: EventSink
    runtime: Runtime
    plugin_argv: list[str]
    work: Path
    """A scratch directory removed with the node."""
    _yardstick: Yardstick | None = None

    @property
    def yardstick(self) -> Yardstick:
        """The compiled yardstick on this node (built on first use: `build_yardstick`)."""
        if self._yardstick is None:
            self._yardstick = Yardstick(build_yardstick(), self.run_dir, self.work)
        return self._yardstick

    def conf(self, backend: str = "nft", **extra: Any) -> dict[str, Any]:
        """The plugin's entry of the conflist, as the runtime hands it over (cniVersion 1.0)."""
        return {
            "cniVersion": "1.0.0", "name": "bench", "type": "istio-cni",
            "plugin_log_level": "info", "cni_agent_run_dir": str(self.run_dir),
            "exclude_namespaces": [SKIPPED_NS], "pod_namespace": "istio-system",
            "iptables_backend": backend, "pod_lookup_attempts": 3,
            "pod_lookup_interval_seconds": 0.05, "pod_lookup_deadline_seconds": 10, **extra,
        }

    def call(self, command: str, netns: str, pod: dict[str, Any], backend: str = "nft",
             ip: str = "10.217.0.2", **extra: Any) -> tuple[float, CniCall]:
        """One timed CNI call of the plugin (exec → result on stdout → exit); `extra` adds or
        overrides config keys (e.g. `native_nftables`)."""
        conf = self.conf(backend, **extra)
        conf["prevResult"] = prev_result(netns, ip)
        meta = pod["metadata"]
        t0 = time.perf_counter()
        result = self.runtime.call("istio-cni", command, path(netns), f"c-{netns}", conf,
                                   k8s_args(meta["namespace"], meta["name"], meta.get("uid", "")))
        return time.perf_counter() - t0, result

    def pod_gets(self) -> int:
        return self.api.count("GET", r"^/api/v1/namespaces/[^/]+/pods/[^/]+$")


@contextmanager
def bench_node(plugin_argv: list[str]) -> Iterator[BenchNode]:
    """API stand-in (TLS) + run dir + log socket (+ the yardstick, when asked for); everything
    stopped and removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="icni-bench-") as tmp, tls_api(Path(tmp)) as api:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        write_kubeconfig(run_dir, api)
        sink = EventSink(run_dir)
        runtime = Runtime(binaries={"istio-cni": plugin_argv})
        try:
            yield BenchNode(api, run_dir, sink, runtime, plugin_argv, Path(tmp))
        finally:
            sink.stop()


def check_ok(call: CniCall, what: str) -> None:
    if call.status != 0:
        raise RuntimeError(f"{what} failed (exit {call.status}): {call.stdout.strip()} "
                           f"{call.stderr.strip()[-500:]}")
