"""A container runtime's CNI side, as libcni runs a conflist: each plugin in order, prevResult
chained, stop at the first failure.

What containerd/CRI-O do for each pod sandbox: for every plugin of the list, find the
executable named by `type` (in `binaries`, else in CNI_PATH), give it the CNI_* environment and
the plugin's config on stdin (with `name`, `cniVersion` and `prevResult`), read its result
from stdout. The plugins are real executables spoken to only through that protocol.

The node is a netns: the primary plugins (bridge, host-local, loopback) run inside it
(`ip netns exec`), so their bridge and host-side veths land there, not on the machine.
`istio-cni` runs in the host netns, because it must reach the API stand-in on 127.0.0.1; it
enters the pod netns itself, by the CNI_NETNS path, as on a real node.

Without /usr/lib/cni/bridge, `VethNetwork` stands in for bridge + host-local: the same topology
made with pyroute2 by `testbed.veth` in its own process, and a CNI result of the same shape.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.procs import run

CNI_BIN_DIR = Path("/usr/lib/cni")
"""Where Debian's containernetworking-plugins puts bridge, host-local, loopback..."""
NODE_PLUGINS = frozenset({"bridge", "ptp", "host-local", "loopback"})
"""The primary plugins, which run inside the node netns."""


@dataclass
class CniCall:
    """One invocation's outcome."""

    argv: list[str]
    status: int
    stdout: str
    stderr: str
    seconds: float = 0.0
    """Wall time, exec to exit."""
    plugin: str = ""
    """The plugin's type (and how it was run, when emulated), for messages."""

    @property
    def result(self) -> dict[str, Any]:
        """The JSON on stdout ({} when there is none, or it is not JSON)."""
        try:
            return json.loads(self.stdout) if self.stdout.strip() else {}
        except ValueError:
            return {}

    @property
    def error(self) -> str:
        """The CNI error object's code and msg, else the last stderr line."""
        res = self.result
        if "code" in res:
            return f"CNI error {res['code']}: {res.get('msg', '')} {res.get('details', '')}"
        return (self.stderr.strip().splitlines() or [f"exit {self.status}"])[-1]

    def log_messages(self) -> list[str]:
        """The `msg` of each JSON log line the plugin wrote to stderr."""
        out = []
        for line in self.stderr.splitlines():
            try:
                out.append(str(json.loads(line)["msg"]))
            except (ValueError, KeyError, TypeError):
                continue
        return out


@dataclass
class VethNetwork:
    """bridge + host-local, emulated with pyroute2 when the real plugins are not installed."""

    PLUGIN = "bridge (veth via pyroute2)"
    subnet: ipaddress.IPv4Network
    bridge: str
    next_host: int = 2

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def call(self, command: str, node_netns: str, pod_netns_path: str, ifname: str) -> CniCall:
        """ADD: one pod's veth and address, made by `testbed.veth` in its own process. DEL and
        CHECK have nothing to do: the pod's end dies with its netns, and the peer with it."""
        if command != "ADD":
            return CniCall([], 0, "", "", plugin=self.PLUGIN)
        address = f"{self.subnet.network_address + self.next_host}/{self.subnet.prefixlen}"
        host_if = f"icni-dv{self.next_host}"
        self.next_host += 1
        argv = [sys.executable, "-m", "testbed.veth", node_netns,
                os.path.basename(pod_netns_path), self.bridge, host_if, ifname, address,
                self.gateway]
        t0 = time.monotonic()
        proc = run(argv, timeout=60, check=False)
        return CniCall(argv, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0,
                       self.PLUGIN)


@dataclass
class Runtime:
    """Runs plugins by type: `binaries` maps a type to an argv; others are found in
    `cni_path`, as CNI_PATH lists them."""

    binaries: dict[str, list[str]] = field(default_factory=dict)
    node_netns: str | None = None
    """Run the primary plugins (bridge, host-local, ...) inside this named netns."""
    cni_path: list[Path] = field(default_factory=lambda: [CNI_BIN_DIR, Path("/opt/cni/bin")])
    veth: VethNetwork | None = None
    """Set when bridge/host-local are not installed: `bridge` is then emulated."""
    extra_env: dict[str, str] = field(default_factory=dict)

    def argv_for(self, ptype: str) -> list[str] | None:
        """How `ptype` is run, or None when no such plugin is found."""
        argv = self.binaries.get(ptype)
        if argv is None:
            found = next((d / ptype for d in self.cni_path if (d / ptype).exists()), None)
            if found is None:
                return None
            argv = [str(found)]
        if self.node_netns and ptype in NODE_PLUGINS:
            return ["ip", "netns", "exec", self.node_netns, *argv]
        return argv

    def call(self, ptype: str, command: str, netns: str, container_id: str, conf: dict,
             cni_args: str = "", ifname: str = "eth0", env: dict | None = None) -> CniCall:
        """One plugin, one command; `env` adds to (or, with None values, removes from) the
        CNI_* environment."""
        if ptype == "bridge" and self.veth is not None and self.node_netns:
            return self.veth.call(command, self.node_netns, netns, ifname)
        argv = self.argv_for(ptype)
        search = ":".join(map(str, self.cni_path))
        if argv is None:
            return CniCall([], 1, "", f"failed to find plugin {ptype!r} in path [{search}]",
                           plugin=ptype)
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
            "CNI_IFNAME": ifname, "CNI_ARGS": cni_args, "CNI_PATH": search,
            **self.extra_env, **(env or {}),
        }
        full_env = {k: v for k, v in full_env.items() if v is not None}
        t0 = time.perf_counter()
        proc = run(argv, input=json.dumps(conf), env=full_env, timeout=120, check=False)
        return CniCall(argv, proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - t0,
                       ptype)

    def run_list(self, conflist: dict, command: str, netns: str, container_id: str,
                 cni_args: str = "", prev: dict | None = None) -> list[CniCall]:
        """ADD runs the list in order, DEL in reverse; CHECK in order with the cached result
        (`prev`). Stops at the first failure, like libcni."""
        plugins = conflist["plugins"]
        order = list(reversed(plugins)) if command == "DEL" else plugins
        calls: list[CniCall] = []
        for plugin in order:
            conf = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
            if prev is not None and command != "ADD":
                conf["prevResult"] = prev
            elif command == "ADD" and calls:
                conf["prevResult"] = calls[-1].result
            call = self.call(plugin["type"], command, netns, container_id, conf, cni_args)
            calls.append(call)
            if call.status != 0:
                break
        return calls


def k8s_args(namespace: str, name: str, uid: str = "") -> str:
    """CNI_ARGS as the kubelet's runtimes pass them: with `uid`, as containerd and CRI-O (they
    add K8S_POD_UID), without, as cri-dockerd."""
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
            "K8S_POD_INFRA_CONTAINER_ID=infra" + (f";K8S_POD_UID={uid}" if uid else ""))


def pod_ip(calls: list[CniCall], family: str = "4") -> str:
    """The pod's address of `family` from the first result that has one (the primary's,
    which the chained plugins hand on)."""
    for call in calls:
        for ip in call.result.get("ips") or []:
            if (":" in ip["address"]) == (family == "6"):
                return str(ip["address"]).split("/")[0]
    raise ValueError(f"no IPv{family} address in {[c.result for c in calls]}")
