"""The demo (`python -m companions.demo`, what `scripts/demo.sh` runs) as its user sees it.

The demo is run as a subprocess, and its output is the contract. It must show the meshed pod
redirected, the proxy seeing the original destination, the probe passing, the plain pod
skipped, the race pod failing with 126 and then passing after repair, and the primary config
restored: in iptables mode, and again in native nftables mode (`--native-nftables`, both ways
of talking to nftables), where the rules shown are our `inet istio-proxy-*` tables. It must
exit 0 and leave nothing behind: no netns, no temp dir, and no process in any of its
namespaces. The same cleanup must happen when SIGINT arrives mid-run.

Nothing is slept on: the output is read line by line, and a line is the signal to act (take a
snapshot of the demo's netns, send SIGINT). `--no-build` keeps the tests from building into
dist/. Without a frozen build, the demo falls back to `python -m cni` and says so, and the tests
accept either, as long as the output says which.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NETNS_DIR = Path("/var/run/netns")
TIMEOUT = 240.0

pytestmark = pytest.mark.root


@pytest.fixture(autouse=True)
def _needs_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, iptables")
    for tool in ("ip", "iptables"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            pytest.skip(f"needs {tool} (scripts/setup.sh installs it)")


def _netns(prefix: str) -> set[str]:
    try:
        return {n for n in os.listdir(NETNS_DIR) if n.startswith(prefix)}
    except FileNotFoundError:
        return set()


@dataclass
class DemoRun:
    status: int
    lines: list[str]
    run_id: str = ""
    sandbox: Path | None = None
    inodes: set[int] = field(default_factory=set)
    """Inodes of the demo's netns, taken while it ran (to find processes left inside)."""

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def processes_left(self) -> list[int]:
        """Pids whose netns is one of the demo's: none may survive the demo."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}/ns/net").st_ino in self.inodes:
                        pids.append(int(entry))
                except OSError:
                    continue
        return pids


def run_demo(*args: str, snapshot_at: str, interrupt: bool = False) -> DemoRun:
    """Run the demo; at the first line starting with `snapshot_at`, record its netns inodes
    (and send SIGINT if `interrupt`); then read to the end."""
    proc = subprocess.Popen([sys.executable, "-m", "companions.demo", "--no-build", *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    run = DemoRun(status=-1, lines=[])
    deadline = time.monotonic() + TIMEOUT
    snapped = False
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"the demo did not finish in {TIMEOUT:.0f} s:\n{run.text}")
            if line is None:
                break
            run.lines.append(line)
            if m := re.match(r"  sandbox: (\S+), netns icni-demo-(\w+)-\*", line):
                run.sandbox, run.run_id = Path(m[1]), m[2]
            if not snapped and line.startswith(snapshot_at):
                snapped = True
                run.inodes = {os.stat(NETNS_DIR / n).st_ino
                              for n in _netns(f"icni-demo-{run.run_id}-")}
                if interrupt:
                    proc.send_signal(signal.SIGINT)
        run.status = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert snapped, f"the demo never printed {snapshot_at!r}:\n{run.text}"
    return run


def assert_nothing_left(run: DemoRun, netns_before: set[str]) -> None:
    assert run.run_id, run.text
    assert "  left behind: nothing" in run.lines, run.text
    assert not _netns(f"icni-demo-{run.run_id}-"), run.text
    assert not _netns("icni-d") - netns_before, "the demo left icni-d netns behind"
    assert run.inodes, "no netns snapshot was taken"
    assert run.processes_left() == [], "processes survived in the demo's netns"
    assert run.sandbox is not None and not run.sandbox.exists(), run.sandbox
    assert "Traceback" not in run.text, run.text


def assert_meshed_redirected(meshed: str) -> None:
    """Step 3 in either mode: the probe passes and the proxy gets both directions' traffic
    with the original destination."""
    assert "  decision: redirected: sidecar injected" in meshed, meshed
    assert "istio-validation (probe as uid 1337): exit 0: validation passed" in meshed, meshed
    gateway = re.search(r"echo server on the node at (\S+):8080", meshed)
    assert gateway, meshed
    outbound = re.search(r"proxy: outbound (\S+):\d+ -> (\S+):8080 ", meshed)
    assert outbound and outbound[2] == gateway[1], meshed
    assert "app got 'hello from the app' back" in meshed, meshed
    assert re.search(r"proxy: inbound \S+ -> \S+:9080", meshed), meshed
    assert "app server: connection from 127.0.0.6:" in meshed, meshed


def assert_race_repaired_and_uninstalled(out: str) -> None:
    """Steps 5 and 6 in either mode, and the summary."""
    race = out[out.index("== 5."):out.index("== 6.")]
    assert "CNI ADD through [bridge]" in race, race
    assert re.search(r"istio-validation \(probe as uid 1337\): exit 126: iptables validation "
                     r"failed; workload is not ready for Istio", race), race
    assert "event: Normal RepairBrokenPod on bookinfo/productpage-v1-7d9f8b6c5-race1" in race
    assert re.search(r"istio-validation again \(restarted\) \(probe as uid 1337\): exit 0: "
                     r"validation passed", race), race

    # uninstall: the primary config back byte for byte
    sums = re.search(r"sha256 before install (\w+), after uninstall (\w+): restored byte for "
                     r"byte", out)
    assert sums and sums[1] == sums[2], out
    assert "  net.d now holds: 10-demo-bridge.conflist" in out, out

    # timings: every step done, and a summary
    assert len(re.findall(r"^\[\s*\d+\.\d\d s\] .* done$", out, re.M)) == 6, out
    assert re.search(r"^  total\s+\d+\.\d\d s$", out, re.M), out
    assert "demo OK" in out


@pytest.mark.parametrize("primary", ["auto", "veth"])
def test_demo_runs_every_step_and_leaves_nothing(primary: str) -> None:
    before = _netns("icni-d")
    run = run_demo("--primary", primary, snapshot_at="== 6.")
    out = run.text
    assert run.status == 0, out

    # which plugin ran is always said
    assert ("plugin: frozen onedir build dist/istio-cni/istio-cni" in out
            or "FALLING BACK to python -m cni" in out), out
    # the installer inserted its entry into the primary conflist
    assert '+      "type": "istio-cni",' in out, out

    # meshed pod: redirected, rules, probe passes, the proxy saw the original destination
    meshed = out[out.index("== 3."):out.index("== 4.")]
    assert "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in meshed, meshed
    assert_meshed_redirected(meshed)

    # plain pod: skipped, untouched
    plain = out[out.index("== 4."):out.index("== 5.")]
    assert "decision: skipped: pod has no istio-proxy container" in plain, plain
    assert "no ISTIO chains" in plain and "-A ISTIO" not in plain, plain

    # race: 126 without the plugin, repaired in place, then the probe passes; uninstall
    assert_race_repaired_and_uninstalled(out)
    assert "demo OK (iptables mode)" in out
    assert_nothing_left(run, before)


@pytest.mark.parametrize("way", ["libnftables", "nft"])
def test_demo_in_native_nftables_mode(way: str) -> None:
    """The same demo with NATIVE_NFTABLES=true: the plugin (from the installer's conflist
    entry) and the repair controller program upstream's nftables tables, and the same probe
    and proxy prove the redirection."""
    if subprocess.run(["which", "nft"], capture_output=True).returncode != 0:
        pytest.skip("needs nft (the demo lists the pod's tables with it)")
    before = _netns("icni-d")
    run = run_demo("--native-nftables", "--nftables-backend", way, snapshot_at="== 6.")
    out = run.text
    assert run.status == 0, out
    assert (f"mode: native nftables mode (NATIVE_NFTABLES=true, NFTABLES_BACKEND={way})"
            in out), out
    assert '+      "native_nftables": true' in out, out  # the installer wrote the mode

    meshed = out[out.index("== 3."):out.index("== 4.")]
    assert "rules in the pod netns (nft list ruleset inet, our tables; no iptables rules):" \
        in meshed, meshed
    assert "    table inet istio-proxy-nat {" in meshed, meshed
    assert "meta l4proto tcp counter packets 0 bytes 0 redirect to :15001" in meshed, meshed
    assert "-A ISTIO" not in out, out
    assert_meshed_redirected(meshed)
    # the redirect rules counted the proxy's traffic: the app's and the probe's connections
    counters = meshed[meshed.index("the redirect rules' counters now (nft):"):]
    for port in (15001, 15006):
        hit = re.search(rf"counter packets (\d+) bytes \d+ redirect to :{port}", counters)
        assert hit and int(hit[1]) > 0, counters

    plain = out[out.index("== 4."):out.index("== 5.")]
    assert "decision: skipped: pod has no istio-proxy container" in plain, plain
    assert "no istio-proxy-* tables" in plain and "table inet" not in plain, plain

    assert_race_repaired_and_uninstalled(out)
    assert re.search(r"now holds [1-9]\d* rules in istio-proxy-\* tables", out), out
    assert "demo OK (native nftables mode)" in out
    assert_nothing_left(run, before)


def test_sigint_mid_run_cleans_up() -> None:
    """Ctrl-C while the proxy, the servers and the pause containers run: all are stopped, the
    netns deleted, the temp dir removed, and the exit status says it was interrupted."""
    before = _netns("icni-d")
    run = run_demo(snapshot_at="  proxy stand-in in the pod", interrupt=True)
    assert run.status == 130, run.text
    assert any(line.startswith("INTERRUPTED (SIGINT) during step 3. meshed pod")
               for line in run.lines), run.text
    assert "demo OK" not in run.text
    assert re.search(r"^  3\. meshed pod.*\(interrupted\)$", run.text, re.M), run.text
    assert_nothing_left(run, before)
