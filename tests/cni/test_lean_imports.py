"""The plugin's hot path imports only what it needs (every import is paid on every pod start).

Each check runs in a fresh interpreter, the way the runtime starts the plugin.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("kubernetes", "click", "pyroute2", "iptc", "yaml", "urllib3", "requests", "psutil")

PROBE = r"""
import io, json, sys
from cni.plugin import Plugin
from cni.protocol import dispatch
env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/none",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": sys.argv[1]}
conf = {"cniVersion": "1.0.0", "name": "net", "type": "istio-cni",
        "exclude_namespaces": ["kube-system"], "pod_namespace": "istio-system",
        "cni_agent_run_dir": "/nonexistent-run-dir"}
out, err, status = dispatch(env, json.dumps(conf).encode(), Plugin())
print(json.dumps({"status": status, "out": out.decode(),
                  "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def run_probe(cni_args: str) -> dict:
    proc = subprocess.run([sys.executable, "-I", "-c", PROBE, cni_args], capture_output=True,
                          text=True, check=True, cwd=".")
    return json.loads(proc.stdout.splitlines()[-1])


def test_skipped_pod_imports_no_api_client_and_nothing_heavy():
    res = run_probe("IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1")
    assert res["status"] == 0, res["out"]
    loaded = set(res["modules"])
    assert not loaded & set(HEAVY)
    assert "ssl" not in loaded and "http" not in loaded  # no API client was even built
    assert "dataclasses" not in loaded  # inspect + ast: several ms per pod start


def test_plugin_package_never_imports_heavy_modules_at_import_time():
    code = ("import sys, cni.__main__, cni.plugin, cni.rules, cni.redirect, cni.apply, "
            "cni.podlookup, cni.kubeconfig, cni.backends; "
            "import json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          check=True)
    loaded = set(json.loads(proc.stdout))
    assert not loaded & set(HEAVY)


SKIPPED_AFTER_LOOKUP = r"""
import json, sys
from cni.plugin import Plugin
from cni.protocol import dispatch
class Source:
    def get_pod(self, namespace, name):
        return {"metadata": {"name": name, "namespace": namespace},
                "spec": {"containers": [{"name": "app"}]}}
env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/none",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
       "CNI_ARGS": "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=app-1"}
conf = {"cniVersion": "1.0.0", "name": "net", "type": "istio-cni",
        "cni_agent_run_dir": "/nonexistent-run-dir"}
out, err, status = dispatch(env, json.dumps(conf).encode(), Plugin(lambda c: Source()))
print(json.dumps({"status": status, "out": out.decode(), "modules": sorted(sys.modules)}))
"""


def test_pod_skipped_after_lookup_imports_no_rule_stage() -> None:
    """Most pods are fetched and then skipped (no sidecar): they never pay for the stages
    after the decision (redirect spec, rule builder, netns, backends)."""
    proc = subprocess.run([sys.executable, "-I", "-c", SKIPPED_AFTER_LOOKUP],
                          capture_output=True, text=True, check=True, cwd=".")
    res = json.loads(proc.stdout.splitlines()[-1])
    assert res["status"] == 0, res["out"]
    loaded = set(res["modules"])
    assert "cni.pipeline" in loaded and "cni.decision" in loaded
    later = {"cni.redirect", "cni.rules", "cni.apply", "cni.netns", "cni.backends",
             "cni.live_state", "ctypes"}
    assert not loaded & later


REDIRECTED = r"""
import json, sys
from cni.plugin import Plugin
from cni.protocol import dispatch
from testbed.pods import workload
class Source:
    def get_pod(self, namespace, name):
        return workload("meshed-pod")
env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": sys.argv[1],
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
       "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=meshed-pod"}
conf = {"cniVersion": "1.0.0", "name": "net", "type": "istio-cni",
        "cni_agent_run_dir": "/nonexistent-run-dir", **json.loads(sys.argv[2])}
out, err, status = dispatch(env, json.dumps(conf).encode(), Plugin(lambda c: Source()))
print(json.dumps({"status": status, "out": out.decode(), "modules": sorted(sys.modules)}))
"""


@pytest.mark.root
@pytest.mark.parametrize("native_nftables", [False, True], ids=["iptables", "nftables"])
def test_a_redirected_pod_loads_only_its_own_modes_modules(netns, native_nftables: bool) -> None:  # noqa: ANN001
    """iptables mode never loads anything of nftables mode (and the reverse): each mode's ADD
    pays only for its own backend."""
    conf = {"native_nftables": native_nftables}
    proc = subprocess.run([sys.executable, "-I", "-c", REDIRECTED, netns.path, json.dumps(conf)],
                          capture_output=True, text=True, check=True, cwd=".")
    res = json.loads(proc.stdout.splitlines()[-1])
    assert res["status"] == 0, res["out"]
    loaded = set(res["modules"])
    nftables = {m for m in loaded if m.startswith(("cni.nft", "cni.backends.nftables"))}
    iptables = {m for m in loaded if m in ("cni.rules", "cni.backends.restore",
                                           "cni.backends.iptables", "cni.backends.libiptc")}
    if native_nftables:
        assert "cni.backends.nftables" in nftables and not iptables - {"cni.rules"}
    else:
        assert "cni.backends.restore" in iptables and not nftables


# --- the thin client: what a served call and a DEL load, exactly -------------------------------

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY_PROBE = r"""
import posix, sys
sys.path.insert(0, sys.argv[1])
out, before, real_exit = int(sys.argv[2]), set(sys.modules), posix._exit
def _exit(status):
    posix.write(out, repr(sorted(set(sys.modules) - before)).encode())
    real_exit(status)
posix._exit = _exit
from cni.__main__ import main
main()
"""
THIN_CLIENT = {
    "cni", "cni.__main__", "cni.wire", "cni.agent_client", "cni.netns_check", "cni.jsonread",
    "_json", "_socket", "fcntl", "_stat",
}
"""Everything a served ADD or CHECK imports beyond what the interpreter starts with: the
package's thin client and three small extensions. Not os, socket, json, re, logging, struct,
collections, typing, dataclasses, enum: the agent does all of that work."""
TEARDOWN = {
    "cni", "cni.__main__", "cni.wire", "cni.protocol", "cni.errors", "cni.versions",
    "cni.jsonread", "_json", "cni.teardown",
}
"""Everything a DEL imports beyond the interpreter's start: the protocol's validation."""


def run_entry(env: dict[str, str], conf: dict) -> tuple[int, str, set[str]]:
    """The plugin's entry point in a fresh `python -I -S` (the way the frozen binary starts:
    no site): its exit status, stdout, and the modules it loaded."""
    read, write = os.pipe()
    try:
        proc = subprocess.run([sys.executable, "-I", "-S", "-c", ENTRY_PROBE, REPO, str(write)],
                              input=json.dumps(conf), env=env, capture_output=True, text=True,
                              timeout=60, pass_fds=(write,), check=False)
    finally:
        os.close(write)
    with os.fdopen(read) as f:
        loaded = set(ast.literal_eval(f.read()))
    return proc.returncode, proc.stdout, loaded


@pytest.fixture
def serving_agent(tmp_path: Path):  # noqa: ANN201
    """The node agent's cni.sock server, in this process, with one cached plain pod."""
    from node_daemon.cni_server import CniServer, CniService
    from node_daemon.metrics import Metrics

    pods = {"shop/app-1": {"metadata": {"name": "app-1", "namespace": "shop", "uid": "u-1"},
                           "spec": {"containers": [{"name": "app"}]}}}
    service = CniService(Metrics(), lambda: (True, ""), pods.get, None)
    server = CniServer(tmp_path / "run" / "cni.sock", service)
    try:
        yield tmp_path / "run", service.metrics
    finally:
        server.stop()


@pytest.mark.root
@pytest.mark.parametrize("command, pod", [("ADD", "kube-system/coredns-1"), ("ADD", "shop/app-1"),
                                          ("CHECK", "shop/app-1")])
def test_a_served_call_loads_only_the_thin_client(serving_agent, netns, command: str,  # noqa: ANN001
                                                  pod: str) -> None:
    run_dir, metrics = serving_agent
    ns, name = pod.split("/")
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": netns.path,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
           "CNI_ARGS": f"K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID=u-1"}
    conf = {"cniVersion": "1.0.0", "name": "net", "type": "istio-cni",
            "exclude_namespaces": ["kube-system"], "cni_agent_run_dir": str(run_dir)}
    status, out, loaded = run_entry(env, conf)
    assert status == 0, out
    assert metrics.value("istio_cni_agent_served_total", command=command, result="ok") == 1
    assert loaded == THIN_CLIENT


def test_del_loads_only_the_protocol() -> None:
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/opt/cni/bin"}
    status, out, loaded = run_entry(env, {"cniVersion": "1.0.0", "name": "net"})
    assert (status, out) == (0, "")
    assert loaded == TEARDOWN
