"""The frozen plugin (build.spec, PyInstaller onedir) through the same end-to-end scenarios.

What we ship is the frozen binary, not the source tree, so the key e2e assertions run against
it for every backend: what PyInstaller left out (a lazily imported module, a data file, a
shared library) only shows up on the path that needs it. The python-iptables case runs with
the host's iptables hidden — no binaries on PATH, and the host's libip4tc/libip6tc/libxtables
and xtables extensions masked in a private mount namespace — to prove the bundled copies work
on a host with no iptables package. Native nftables mode runs the same way with nftables hidden
too (no `nft`, the host's libnftables and the libraries it links masked): the bundled
libnftables programs the pod, where upstream's plugin fails every ADD.

The binary is built once per session into a temp dir (plugin only: ~25 s on 2 cores), or taken
from ISTIO_CNI_FROZEN if set (e.g. dist/istio-cni/istio-cni from scripts/build-frozen.sh).
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from cni.iptables_config import IptablesConfig
from cni.live_state import parse_rule
from cni.results import encode_result
from cni.rules import build_ruleset
from testbed import netns as nsutil
from testbed.frozen import build_plugin
from testbed.node import Node, assert_app_traffic_redirected, istio_lines
from testbed.pods import workload

pytest.importorskip("PyInstaller", reason="PyInstaller is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.root

BACKENDS = ["nft", "legacy", "python-iptables"]
BUILD_TIMEOUT = 600


@pytest.fixture(scope="session")
def frozen_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The frozen istio-cni: ISTIO_CNI_FROZEN, or a fresh plugin-only build of build.spec."""
    given = os.environ.get("ISTIO_CNI_FROZEN")
    if given:
        return Path(given)
    return build_plugin(tmp_path_factory.mktemp("frozen"), BUILD_TIMEOUT)


IPTABLES_LIBS = ("libip4tc.so*", "libip6tc.so*", "libxtables.so*")
NFTABLES_LIBS = ("libnftables.so*", "libnftnl.so*", "libmnl.so*", "libjansson.so*",
                 "libgmp.so*")
NFT_BINARIES = ("/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft")


def hidden_iptables_argv(binary: Path, tmp_path: Path, nftables: bool = False) -> list[str]:
    """argv running `binary` as on a host without the iptables package (and, with
    `nftables`, without the nftables package and libnftables either).

    A private mount namespace (so nothing leaks to the host) with the host's iptables libraries
    bound over by /dev/null and its extension dir by an empty dir, and PATH holding nothing.
    Only the plugin runs like this; the bridge plugin before it keeps the normal environment.
    """
    empty = tmp_path / "empty"
    empty.mkdir()
    libdirs = ["/usr/lib", "/usr/lib64", "/lib", "/lib64", *glob.glob("/usr/lib/*-linux-*")]
    patterns = IPTABLES_LIBS + (NFTABLES_LIBS if nftables else ())
    libs = sorted({os.path.realpath(p) for d in libdirs for pattern in patterns
                   for p in glob.glob(f"{d}/{pattern}")})
    if nftables:
        libs += sorted({os.path.realpath(p) for p in NFT_BINARIES if os.path.exists(p)})
    xtdirs = sorted({os.path.realpath(p) for d in libdirs for p in glob.glob(f"{d}/xtables")})
    masks = [f"mount --bind /dev/null {lib}" for lib in libs]
    masks += [f"mount --bind {empty} {d}" for d in xtdirs]
    script = tmp_path / "no-iptables.sh"
    script.write_text("set -e\nmount --make-rprivate /\n" + "\n".join(masks)
                      + f"\nexec /usr/bin/env PATH={empty} {binary}\n")
    return ["/usr/bin/unshare", "--mount", "/bin/sh", str(script)]


@pytest.fixture
def frozen_node(node: Node, frozen_plugin: Path, tmp_path: Path) -> Node:
    """The e2e node (tests/e2e/conftest.py), with istio-cni replaced by the frozen binary."""
    entry = node.istio_entry()
    if entry.get("native_nftables"):
        node.runtime.binaries["istio-cni"] = hidden_iptables_argv(frozen_plugin, tmp_path,
                                                                  nftables=True)
    elif entry.get("iptables_backend") == "python-iptables":
        node.runtime.binaries["istio-cni"] = hidden_iptables_argv(frozen_plugin, tmp_path)
    else:
        node.runtime.binaries["istio-cni"] = [str(frozen_plugin)]
    return node


# --- the scenarios -------------------------------------------------------------------------------

@pytest.mark.parametrize("node", BACKENDS, indirect=True)
def test_meshed_pod_traffic_is_redirected(frozen_node: Node):
    node = frozen_node
    pod = node.api.add_pod(workload("meshed-pod"))
    pod_ns = node.new_pod_netns()
    calls = node.add(pod_ns, pod)
    assert [c.status for c in calls] == [0, 0], calls[-1].stdout + calls[-1].stderr
    assert calls[1].result == encode_result(calls[0].result, "1.0.0")
    assert any("-A OUTPUT -j ISTIO_OUTPUT" in ln for ln in istio_lines(pod_ns))
    assert_app_traffic_redirected(node, pod_ns, calls)


@pytest.mark.parametrize("node", BACKENDS, indirect=True)
def test_plain_pod_gets_no_rules(frozen_node: Node):
    pod = frozen_node.api.add_pod(workload("plain-pod"))
    pod_ns = frozen_node.new_pod_netns()
    calls = frozen_node.add(pod_ns, pod)
    assert [c.status for c in calls] == [0, 0], calls[-1].stdout + calls[-1].stderr
    assert istio_lines(pod_ns) == []


@pytest.mark.parametrize("node", BACKENDS, indirect=True)
def test_invalid_annotation_gives_the_exact_cni_error(frozen_node: Node):
    key = "traffic.sidecar.istio.io/excludeOutboundPorts"
    pod = frozen_node.api.add_pod(
        workload("meshed-pod", annotations={key: "80\n-A OUTPUT -j ACCEPT"}))
    pod_ns = frozen_node.new_pod_netns()
    calls = frozen_node.add(pod_ns, pod)
    assert [c.status for c in calls] == [0, 1], calls[-1].stdout
    assert json.loads(calls[-1].stdout) == {
        "cniVersion": "1.0.0",
        "code": 101,
        "msg": (f"invalid annotation {key}='80\\n-A OUTPUT -j ACCEPT': "
                "'80\\n-A OUTPUT -j ACCEPT' is not a port number (0-65535)"),
        "details": f"annotation {key}",
    }
    assert istio_lines(pod_ns) == []


@pytest.mark.parametrize("node", ["python-iptables"], indirect=True)
def test_tproxy_dual_stack_pod_uses_pyroute2_and_every_bundled_extension(frozen_node: Node):
    """TPROXY + dual stack: pyroute2 (policy routes, ::6) and the mark/TPROXY extensions."""
    pod = frozen_node.api.add_pod(workload(
        "meshed-pod", annotations={"sidecar.istio.io/interceptionMode": "TPROXY"},
        proxy_env={"ISTIO_DUAL_STACK": "true"}))
    pod_ns = frozen_node.new_pod_netns()
    calls = frozen_node.add(pod_ns, pod)
    assert [c.status for c in calls] == [0, 0], calls[-1].stdout + calls[-1].stderr
    lines = istio_lines(pod_ns)
    assert any("-j TPROXY" in ln for ln in lines)
    assert any(ln.startswith("-A ISTIO_OUTPUT") and "::6" in ln for ln in lines)
    assert "::6/128" in nsutil.ns_exec(pod_ns, "ip", "-6", "addr", "show", "dev", "lo")
    assert "lookup 133" in nsutil.ns_exec(pod_ns, "ip", "-4", "rule")
    assert "lookup 133" in nsutil.ns_exec(pod_ns, "ip", "-6", "rule")


@pytest.mark.parametrize("node", [{"native_nftables": True}], indirect=True)
def test_native_nftables_on_a_host_without_nft_uses_the_bundled_libnftables(frozen_node: Node):
    """No `nft`, no libnftables, no iptables on the plugin's host: the bundle programs
    upstream's tables (auto way), traffic is redirected, re-ADD is a no-op, CHECK passes."""
    node = frozen_node
    pod = node.api.add_pod(workload("meshed-pod"))
    pod_ns = node.new_pod_netns()
    calls = node.add(pod_ns, pod)
    assert [c.status for c in calls] == [0, 0], calls[-1].stdout + calls[-1].stderr
    assert "table inet istio-proxy-nat" in nsutil.ns_exec(pod_ns, "nft", "list", "tables")
    assert istio_lines(pod_ns) == []
    assert_app_traffic_redirected(node, pod_ns, calls)
    listed = nsutil.ns_exec(pod_ns, "nft", "-a", "list", "table", "inet", "istio-proxy-nat")
    again = node.call_istio(pod_ns, pod, "ADD", prev=calls[0].result)
    assert again.status == 0, again.stdout + again.stderr
    handles = re.compile(r"# handle \d+")
    assert handles.findall(listed) == handles.findall(nsutil.ns_exec(
        pod_ns, "nft", "-a", "list", "table", "inet", "istio-proxy-nat"))
    check = node.call_istio(pod_ns, pod, "CHECK", prev=calls[-1].result)
    assert (check.status, check.stdout) == (0, ""), check.stderr


def test_bundled_libnftables_needs_nothing_from_the_host_but_glibc(frozen_plugin: Path):
    """Every library the bundled libnftables links resolves inside the bundle."""
    bundle = frozen_plugin.parent / "_internal" / "nftables"
    order = (bundle / "load-order").read_text().split()
    assert order[-1] == "libnftables.so.1" and all((bundle / n).is_file() for n in order)
    out = subprocess.run(["ldd", str(bundle / "libnftables.so.1")], capture_output=True,
                         text=True, check=True, env={"LD_LIBRARY_PATH": str(bundle)}).stdout
    for line in out.splitlines():
        name, _, target = line.strip().partition(" => ")
        if target and not name.startswith(("libc.so", "libm.so", "ld-linux")):
            assert target.startswith(str(bundle)), line
            assert name in order, line


def test_version_from_the_frozen_binary(frozen_plugin: Path):
    proc = subprocess.run([str(frozen_plugin)], env={"CNI_COMMAND": "VERSION"},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "1.1.0" in json.loads(proc.stdout)["supportedVersions"]


def test_bundled_extensions_cover_every_match_and_target(frozen_plugin: Path):
    """Every extension any rule set can name is in the bundle (the spec lists them by hand)."""
    bundle = frozen_plugin.parent / "_internal" / "xtables"
    base = IptablesConfig(inbound_ports_include=("*",), outbound_ip_ranges_include=("*",),
                          enable_ipv6=True)
    configs = [base,
               replace(base, inbound_interception_mode="TPROXY", redirect_dns=True,
                       capture_all_dns=True, drop_invalid=True),
               replace(base, outbound_ports_include=("8080",), owner_groups_include=("10",),
                       exclude_interfaces=("eth9",), reroute_virtual_interfaces=("tun0",),
                       outbound_ip_ranges_exclude=("10.1.0.5/32", "fd00::5/128"))]
    missing = set()
    for cfg in configs:
        for fam in build_ruleset(cfg).families():
            prefix = "libip6t_" if fam.ipv6 else "libipt_"
            for rule in fam.rules:
                parsed = parse_rule(rule.spec)
                names = [m for m, _ in parsed.matches]
                if not parsed.target.startswith("ISTIO_"):
                    names.append(parsed.target)
                for name in names:
                    name = "standard" if name in ("ACCEPT", "DROP", "RETURN") else name
                    if not any((bundle / f"{p}{name}.so").exists() for p in ("libxt_", prefix)):
                        missing.add(name)
    assert missing == set()
