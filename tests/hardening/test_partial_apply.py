"""Partial application: the plugin is SIGKILLed while it programs a pod, and the pod is never
left silently half-redirected.

The pod needs the largest rule set we make: dual stack (iptables and ip6tables), DNS capture
(raw table), TPROXY (mangle table, `ip rule` + `ip route` per family), INVALID drop and `::6` on
lo. The plugin runs as a real process under the CNI protocol; it is killed with a real SIGKILL
(no finally, no atexit, nothing flushed), at

- **deterministic kill points**: a child interpreter counts the plugin's side effects (every
  iptables binary it runs, every netlink add) and SIGKILLs itself before operation N, after it,
  or (binaries) right after spawning it, so the orphaned `iptables-restore` finishes on its own
  as it would when a runtime kills the plugin; every N of an uninterrupted run is a kill point;
- **seeded random moments**: an external SIGKILL after a delay drawn from a seeded RNG over the
  length of an uninterrupted run (fault injection, not synchronisation: the assertions hold for
  every outcome).

After each kill (and once every process of the plugin's session has exited), the netns state is
observed independently, then:

1. CHECK (through the protocol) succeeds exactly when the netns holds the complete rule set (the
   state of an uninterrupted ADD, observed in a reference netns), and otherwise fails with 104
   listing what is missing;
2. ADD again on the same netns either succeeds, and the netns then holds exactly the complete
   rule set and CHECK agrees, or fails with a clear CNI error (102/103) and CHECK still says 104.

The same runs cover native nftables mode, both ways of talking to nftables: there the side
effects are every nftables command batch (libnftables in-process; the host's `nft -f -`, which
can be orphaned like `iptables-restore`) and the same netlink adds. nftables applies a batch as
one kernel transaction, so one more assertion holds there: after any kill, our `inet
istio-proxy-*` tables are either absent or exactly the complete ones, never a part of them.

Under HYPOTHESIS_PROFILE=ci every kill point runs; locally a seeded sample of them.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cni import nft_exec
from cni.plugin import Plugin
from cni.protocol import dispatch
from testbed import netns as nsutil
from testbed.cleanup import Cleanup
from testbed.cnirun import k8s_args
from testbed.kubeapi import KubeApiServer, write_kubeconfig
from testbed.pods import REPO, workload
from testbed.wait import wait_for

pytestmark = pytest.mark.root
CI = os.environ.get("HYPOTHESIS_PROFILE") == "ci" or bool(os.environ.get("CI"))
SEED = int(os.environ.get("PARTIAL_APPLY_SEED", "20240611"))
DEV_SAMPLE = 6
RANDOM_KILLS = 24 if CI else 3
POD_V4, POD_V6 = "10.97.0.5/24", "fd00:97::5/64"
SAVE_TOOLS = ("iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save",
              "ip6tables-legacy-save")
TPROXY_TABLE = "133"
NFT_MODE = "nftables:"
"""A `backend` parameter `nftables:<way>` runs native nftables mode with that way."""
BACKENDS = ["auto", "legacy", f"{NFT_MODE}libnftables", f"{NFT_MODE}nft"]
COUNTER = re.compile(r"counter packets \d+ bytes \d+")

# The plugin's own entry point, with its side effects counted and a SIGKILL at one of them.
CHILD = r"""
import os, signal, subprocess, sys
sys.path.insert(0, os.environ["ICNI_REPO"])
kill_at, mode = int(sys.argv[1]), sys.argv[2]
count = [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def point(thunk, spawn=None):
    count[0] += 1
    sys.stderr.write(f"\nICNI-OP {count[0]}\n")  # where an external kill lands
    sys.stderr.flush()
    hit = count[0] == kill_at
    if hit and mode == "before":
        die()
    if hit and mode == "spawned" and spawn is not None:
        spawn()
        die()
    out = thunk()
    if hit:
        die()
    return out

from cni.backends import restore
real_run = restore.run

def run(argv, stdin=None, env=None):
    def spawn():
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, env=env, text=True)
        child.stdin.write(stdin or "")
        child.stdin.close()
    return point(lambda: real_run(argv, stdin, env), spawn)

restore.run = run
from cni import nft_exec
real_lib_run = nft_exec.LibNftables.run
real_bin_run = nft_exec.NftBinary.run

def lib_run(self, commands, json=False):  # in-process: nothing can outlive the kill
    return point(lambda: real_lib_run(self, commands, json))

def bin_run(self, commands, json=False):
    def spawn():
        child = subprocess.Popen([self.path, "-f", "-"], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        child.stdin.write(b"" if json else commands.encode())
        child.stdin.close()
    return point(lambda: real_bin_run(self, commands, json), spawn)

nft_exec.LibNftables.run = lib_run
nft_exec.NftBinary.run = bin_run
from pyroute2 import IPRoute
real_getattr = IPRoute.__getattr__  # pyroute2 0.9 resolves its API methods here

def getattr_(self, name):
    attr = real_getattr(self, name)
    if name not in ("rule", "route", "addr"):
        return attr
    def op(command, *args, **kwargs):
        if command != "add":
            return attr(command, *args, **kwargs)
        return point(lambda: attr(command, *args, **kwargs))
    return op

IPRoute.__getattr__ = getattr_
import posix
_real_exit = posix._exit
def _exit(status):  # the plugin ends with posix._exit: report the count on the way out
    sys.stderr.write(f"\nICNI-OPS={count[0]}\n")
    sys.stderr.flush()
    _real_exit(status)
posix._exit = _exit
from cni.__main__ import main
main()
"""


@dataclass
class Pod:
    spec: dict
    run_dir: Path

    def conf(self, backend: str) -> dict:
        mode = ({"native_nftables": True, "nftables_backend": backend.removeprefix(NFT_MODE)}
                if backend.startswith(NFT_MODE) else {"iptables_backend": backend})
        return {"cniVersion": "1.0.0", "name": "icni-h", "type": "istio-cni",
                "cni_agent_run_dir": str(self.run_dir), "plugin_log_level": "debug",
                **mode, "pod_lookup_attempts": 2,
                "pod_lookup_interval_seconds": 0.01, "pod_lookup_deadline_seconds": 10,
                "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}],
                               "ips": [{"address": POD_V4, "interface": 0},
                                       {"address": POD_V6, "interface": 0}]}}

    def env(self, command: str, ns: str) -> dict[str, str]:
        meta = self.spec["metadata"]
        return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "CNI_COMMAND": command, "CNI_CONTAINERID": f"c-{ns}",
                "CNI_NETNS": nsutil.path(ns), "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
                "CNI_ARGS": k8s_args(meta["namespace"], meta["name"]), "ICNI_REPO": str(REPO)}


class StaticSource:
    def __init__(self, pod: dict) -> None:
        self.pod = pod

    def get_pod(self, namespace: str, name: str) -> dict:
        return self.pod


def in_process(pod: Pod, backend: str, command: str, ns: str) -> tuple[int, dict]:
    """One CNI call exactly as the binary makes it (`dispatch`), in this process."""
    plugin = Plugin(pod_source_factory=lambda conf: StaticSource(pod.spec))
    out, _, status = dispatch(pod.env(command, ns), json.dumps(pod.conf(backend)).encode(),
                              plugin)
    return status, json.loads(out) if out.strip() else {}


@pytest.fixture
def pod(tmp_path: Path, kube_api: KubeApiServer) -> Iterator[Pod]:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_kubeconfig(run_dir, kube_api)
    spec = kube_api.add_pod(workload(
        "meshed-pod", annotations={"sidecar.istio.io/interceptionMode": "TPROXY"},
        proxy_env={"ISTIO_DUAL_STACK": "true", "ISTIO_META_DNS_CAPTURE": "true",
                   "INVALID_DROP": "true"}))
    logging.disable(logging.CRITICAL)  # the in-process calls' log lines are not under test
    try:
        yield Pod(spec, run_dir)
    finally:
        logging.disable(logging.NOTSET)


@pytest.fixture
def pod_netns(cleanup: Cleanup) -> Callable[[], str]:
    """Makes pod netns (lo up, a veth eth0 with an IPv4 and an IPv6 address); deleted after
    the test."""

    def make() -> str:
        return nsutil.create_netns(cleanup, "icni-h-pa", v4=POD_V4.split("/")[0],
                                   v6=POD_V6.split("/")[0], ifname="eth0").name

    return make


def nft_tables(ns: str) -> list[str]:
    """Our nftables tables in the netns as the host's `nft` lists them, counter values dropped
    (the test's netns see no traffic, but a count is not state)."""
    if shutil.which("nft") is None:
        return []
    text = nsutil.ns_exec(ns, "nft", "list", "ruleset", "inet", check=False)
    return [f"nft: {COUNTER.sub('counter', ln.strip())}" for ln in text.splitlines()
            if ln.strip()]


def state(ns: str) -> str:
    """Everything of ours in the netns, observed with the host's tools (not the plugin's)."""
    out: list[str] = nft_tables(ns)
    for tool in SAVE_TOOLS:
        for line in nsutil.ns_exec(ns, tool, check=False).splitlines():
            if "ISTIO" in line and not line.startswith("#"):
                out.append(f"{tool}: {line.split(' [', 1)[0]}")
    for fam in ("-4", "-6"):
        out += [f"ip {fam} rule: {ln.split(':', 1)[1].strip()}"
                for ln in nsutil.ns_exec(ns, "ip", fam, "rule", "show").splitlines()
                if "fwmark" in ln]
        out += [f"ip {fam} route table {TPROXY_TABLE}: {ln}" for ln in nsutil.ns_exec(
            ns, "ip", fam, "route", "show", "table", TPROXY_TABLE, check=False).splitlines()]
    if "::6/128" in nsutil.ns_exec(ns, "ip", "-6", "addr", "show", "dev", "lo"):
        out.append("lo ::6/128")
    return "\n".join(out)


def session_alive(sid: int) -> bool:
    """Is any process of session `sid` still running (e.g. an orphaned iptables-restore)?"""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            return True
    return False


def wait_session_gone(sid: int) -> None:
    deadline = time.monotonic() + 30
    while session_alive(sid):
        assert time.monotonic() < deadline, f"processes of session {sid} still running"
        time.sleep(0.005)


def run_plugin(pod: Pod, backend: str, ns: str, kill_at: int = 0, mode: str = "never",
               kill_after: float | None = None) -> tuple[int, str]:
    """ADD in a real process (its own session); returns (status, stderr) once every process
    of that session, orphans included, has exited.

    `kill_after`: an external SIGKILL that many seconds after the ADD's first side effect
    began (the child reports each one on stderr; it is waited for with a generous deadline),
    so that the kill lands in the ADD, not in Python's start on a loaded machine."""
    proc = spawn_add(pod, backend, ns, kill_at, mode)
    assert proc.stderr is not None
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    if kill_after is not None:
        wait_for(lambda: b"ICNI-OP 1\n" in lines or proc.poll() is not None, timeout=60,
                 what="the ADD's first side effect")
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)  # an external SIGKILL at a random moment
        proc.wait()
    reader.join(timeout=30)
    proc.stderr.close()
    wait_session_gone(proc.pid)
    return proc.returncode, b"".join(lines).decode(errors="replace")


def ops_begun(err: str) -> int:
    """How many side effects the child had begun (its ICNI-OP reports)."""
    return max([0, *(int(m) for m in re.findall(r"^ICNI-OP (\d+)$", err, re.MULTILINE))])


@dataclass
class Tally:
    kills: int = 0
    """Runs that really died of SIGKILL (a random moment may come after the run ended)."""
    complete_after_kill: int = 0
    tables_complete_after_kill: int = 0
    tables_absent_after_kill: int = 0
    """nftables mode: real kills after which our tables were all there, or none at all (the
    only two outcomes the test allows)."""
    completed_by_readd: int = 0
    refused_by_readd: int = 0
    random_kills_at_op: list[int] = field(default_factory=list)
    """The side effect each external random kill landed at or after (the ADD had begun it)."""


def spawn_add(pod: Pod, backend: str, ns: str, kill_at: int = 0,
              mode: str = "never") -> subprocess.Popen:
    """The ADD's child process, in its own session, its config sent; stderr to read."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(kill_at), mode],
                            env=pod.env("ADD", ns), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(pod.conf(backend)).encode())
    proc.stdin.close()
    return proc


def timed_side_effects(pod: Pod, backend: str, ns: str) -> float:
    """Seconds from an uninterrupted ADD's first side effect to its exit."""
    start: list[float] = []
    proc = spawn_add(pod, backend, ns)
    assert proc.stderr is not None
    for line in proc.stderr:
        if line == b"ICNI-OP 1\n":
            start.append(time.monotonic())
    proc.wait(timeout=60)
    proc.stderr.close()
    wait_session_gone(proc.pid)
    assert proc.returncode == 0 and start, "the uninterrupted ADD failed"
    return time.monotonic() - start[0]


def verify_after_kill(pod: Pod, backend: str, ns: str, reference: str, tally: Tally,
                      where: str, killed: bool = True) -> None:
    observed = state(ns)
    complete = observed == reference
    if backend.startswith(NFT_MODE):  # one kernel transaction: all of our tables or none
        tables = nft_tables(ns)
        assert tables in ([], nft_tables_of(reference)), f"{where}: partial tables {tables}"
        tally.tables_complete_after_kill += killed and bool(tables)
        tally.tables_absent_after_kill += killed and not tables
    status, err = in_process(pod, backend, "CHECK", ns)
    if complete:
        assert status == 0, f"{where}: complete state but CHECK says {err}"
        tally.complete_after_kill += 1
    else:
        assert status == 1 and err["code"] == 104, f"{where}: incomplete state, CHECK: {err}"
        assert "missing" in err.get("details", "") or "extra" in err.get("details", ""), err

    status, err = in_process(pod, backend, "ADD", ns)
    if status == 0:
        assert state(ns) == reference, f"{where}: ADD succeeded on a half-programmed netns"
        assert in_process(pod, backend, "CHECK", ns)[0] == 0, where
        if not complete:
            tally.completed_by_readd += 1
    else:
        assert err["code"] in (102, 103), f"{where}: {err}"
        assert nsutil.path(ns) in err["msg"], err
        assert in_process(pod, backend, "CHECK", ns)[1].get("code") == 104, where
        tally.refused_by_readd += 1


def nft_tables_of(state_text: str) -> list[str]:
    return [ln for ln in state_text.splitlines() if ln.startswith("nft: ")]


def needs_way(backend: str) -> None:
    """Skip an nftables mode whose way (or the `nft` the observer lists tables with) is
    missing here."""
    if not backend.startswith(NFT_MODE):
        return
    if nft_exec.NftBinary.find() is None:
        pytest.skip("nft not installed (the observer lists the pod's tables with it)")
    if backend == f"{NFT_MODE}libnftables" and nft_exec.LibNftables.load() is None:
        pytest.skip(f"{nft_exec.LIBRARY} not installed")


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.replace(":", "-"))
def test_sigkill_at_every_side_effect_then_check_and_readd(pod: Pod, pod_netns, backend: str,
                                                           record_property):
    needs_way(backend)
    reference_ns = pod_netns()
    status, err = run_plugin(pod, backend, reference_ns)
    assert status == 0, err
    ops = int(err.rsplit("ICNI-OPS=", 1)[1].split()[0])
    reference = state(reference_ns)
    needles = (("table inet istio-proxy-nat", "table inet istio-proxy-mangle",
                "table inet istio-proxy-raw", "chain istio-divert", "chain istio-output",
                "ip6 saddr ::6")
               if backend.startswith(NFT_MODE) else ("ip6tables-", "ISTIO_DIVERT", "ISTIO_OUTPUT"))
    for needle in (*needles, "fwmark", f"table {TPROXY_TABLE}", "lo ::6/128"):
        assert needle in reference, (needle, reference)
    if backend.startswith(NFT_MODE):
        assert not any("ISTIO" in ln for ln in reference.splitlines()
                       if not ln.startswith("nft: ")), reference  # no iptables rules at all
    assert in_process(pod, backend, "CHECK", reference_ns)[0] == 0

    points = [(n, mode) for n in range(1, ops + 1) for mode in ("before", "spawned", "after")]
    rng = random.Random(f"{SEED}-{backend}")
    if not CI:
        points = sorted(rng.sample(points, min(DEV_SAMPLE, len(points))))
    tally = Tally()
    for kill_at, mode in points:
        ns = pod_netns()
        status, err = run_plugin(pod, backend, ns, kill_at, mode)
        assert status == -signal.SIGKILL, f"op {kill_at} ({mode}) was not reached: {err}"
        tally.kills += 1
        verify_after_kill(pod, backend, ns, reference, tally, f"kill {mode} op {kill_at}")
        nsutil.delete_netns(ns)

    # external SIGKILLs at seeded random moments over the length of an uninterrupted run's
    # side effects (counted from the first one: the kill lands inside the ADD)
    full = timed_side_effects(pod, backend, pod_netns())
    for i in range(RANDOM_KILLS):
        ns = pod_netns()
        status, err = run_plugin(pod, backend, ns, kill_after=rng.uniform(0.0, full))
        killed = status == -signal.SIGKILL
        if killed:
            begun = ops_begun(err)
            assert 1 <= begun <= ops, f"random kill {i} landed outside the ADD: {begun} ops"
            tally.random_kills_at_op.append(begun)
        tally.kills += killed
        verify_after_kill(pod, backend, ns, reference, tally, f"random kill {i}", killed)
        nsutil.delete_netns(ns)

    record_property("partial_apply", {"ops": ops, **tally.__dict__})
    print(f"\npartial-apply[{backend}]: {ops} side effects per ADD, {tally}")
    assert tally.kills >= len(points)
    if backend.startswith(NFT_MODE):
        assert tally.tables_complete_after_kill + tally.tables_absent_after_kill == tally.kills
