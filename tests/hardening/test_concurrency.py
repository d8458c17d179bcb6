"""Concurrency: 50 ADDs in parallel on 50 pod netns while another process holds the host's
xtables lock for the whole run, as kube-proxy does for long stretches.

Each ADD is the full chain (the real bridge + host-local, then istio-cni) through the CNI
protocol in a sandboxed node. The legacy backend takes an xtables lock; the plugin points it at
the pod netns (`XTABLES_LOCKFILE=/proc/self/ns/net`), so no ADD ever waits for the host's
`/run/xtables.lock`: had one waited, its `iptables-restore --wait=30` would have failed with
"Another app is currently holding the xtables lock" (a control below proves the lock is really
held). `auto` (nft here, no lock at all) runs the same way, and so does native nftables mode,
both ways of talking to nftables (`libnftables` in-process, the host's `nft -f -`): no xtables
lock at all, each pod's tables in one transaction of its own netns. No timing is asserted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from cni import nft_exec
from testbed import netns as nsutil
from testbed.kubeapi import KubeApiServer
from testbed.node import Node, missing_prerequisites, sandboxed_node
from testbed.pods import workload

pytestmark = pytest.mark.root
PODS = 50
HOST_LOCK = "/run/xtables.lock"
NFT_WAYS = ("libnftables", "nft")
MODES = {
    "legacy": {"iptables_backend": "legacy"},
    "auto": {"iptables_backend": "auto"},
    **{f"nftables-{way}": {"native_nftables": True, "nftables_backend": way}
       for way in NFT_WAYS},
}
"""The plugin config keys of each mode under test, by test id."""
COUNTER = re.compile(r"counter packets \d+ bytes \d+")
HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o600)  # create if missing, never write
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()  # hold it until the test closes our stdin
"""


@contextmanager
def host_xtables_lock_held() -> Iterator[subprocess.Popen]:
    """Another process holds an exclusive flock on the host's xtables lock until we are done."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, HOST_LOCK], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)


def needs_way(mode: dict) -> None:
    """Skip an nftables mode whose way (or the `nft` the test lists tables with) is missing."""
    if not mode.get("native_nftables"):
        return
    if nft_exec.NftBinary.find() is None:
        pytest.skip("nft not installed (the test lists the pod's tables with it)")
    if mode["nftables_backend"] == "libnftables" and nft_exec.LibNftables.load() is None:
        pytest.skip(f"{nft_exec.LIBRARY} not installed")


@pytest.fixture(params=list(MODES))
def node(request, tmp_path: Path, kube_api: KubeApiServer) -> Iterator[Node]:
    if reason := missing_prerequisites():
        pytest.skip(reason)
    needs_way(MODES[request.param])
    istio = {"plugin_log_level": "info", **MODES[request.param],
             "pod_lookup_deadline_seconds": 50}
    with sandboxed_node(tmp_path, kube_api, prefix="icni-h", subnet_index=8,
                        subnet_v4="10.98.8.0/24", istio=istio) as node:
        for _ in range(PODS):
            node.new_pod_netns()
        yield node


def saved(pod_ns: str, backend: str) -> str:
    """Our rules in the pod netns as the host's tools list them (counter values dropped)."""
    if backend == "nftables":
        text = nsutil.ns_exec(pod_ns, "nft", "list", "ruleset")
        return COUNTER.sub("counter", text)
    tool = "iptables-legacy-save" if backend == "legacy" else "iptables-nft-save"
    lines = nsutil.ns_exec(pod_ns, tool).splitlines()
    return "\n".join(ln.split(" [", 1)[0] for ln in lines if "ISTIO" in ln)


def test_parallel_adds_while_the_host_xtables_lock_is_held(node: Node):
    entry = node.istio_entry()
    backend = "nftables" if entry.get("native_nftables") else entry["iptables_backend"]
    pods = [node.api.add_pod(workload("meshed-pod", name=f"app-{i}", namespace="load"))
            for i in range(PODS)]
    with host_xtables_lock_held():
        # control: a legacy writer that uses the host lock really is shut out right now
        control = subprocess.run(
            ["ip", "netns", "exec", node.pods[0], "iptables-legacy", "-w", "1", "-t", "filter",
             "-N", "ICNI_H_CONTROL"], capture_output=True, text=True, check=False)
        assert control.returncode != 0 and "xtables lock" in control.stderr, control.stderr

        with ThreadPoolExecutor(max_workers=PODS) as pool:
            results = list(pool.map(node.add, node.pods, pods))

    failures = [(ns, calls[-1].stdout, calls[-1].stderr[-500:])
                for ns, calls in zip(node.pods, results, strict=True)
                if [c.status for c in calls] != [0, 0]]
    assert failures == [], failures
    rules = {saved(ns, backend) for ns in node.pods}
    assert len(rules) == 1, "every pod got the same rules"
    [one] = rules
    if backend == "nftables":  # upstream's tables, and no iptables rules at all
        assert "table inet istio-proxy-nat" in one and "jump istio-output" in one, one
        assert "meta l4proto tcp counter jump istio-inbound" in one, one
        assert "redirect to :15001" in one and "redirect to :15006" in one, one
        assert {saved(ns, "auto") for ns in node.pods} == {""}
    else:
        assert "-A OUTPUT -j ISTIO_OUTPUT" in one and "-A PREROUTING -p tcp -j ISTIO_INBOUND" in one
    # and each pod reads as in sync to CHECK
    checks = [node.call_istio(ns, pod, "CHECK", prev=calls[-1].result)
              for ns, pod, calls in zip(node.pods[:5], pods, results, strict=False)]
    assert [(c.status, c.stdout) for c in checks] == [(0, "")] * 5
