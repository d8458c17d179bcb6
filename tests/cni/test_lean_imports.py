"""The plugin's hot path imports only what it needs (every import is paid on every pod start).

Each check runs in a fresh interpreter, the way the runtime starts the plugin.
"""

from __future__ import annotations

import json
import subprocess
import sys

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
