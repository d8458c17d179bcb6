"""A minimal container runtime's CNI side: run a conflist like libcni, plugin by plugin.

What containerd/CRI-O do for each pod sandbox, reduced to ADD: for every plugin of the list,
find the executable named by `type` in CNI_PATH, give it the CNI_* environment and the plugin's
config on stdin (with `name`, `cniVersion` and the previous plugin's result as `prevResult`),
read its result from stdout, stop at the first failure. The plugins are the real executables,
spoken to only through that protocol: `bridge`/`host-local` from /usr/lib/cni, `istio-cni` as
the installer put it into the node's bin dir.

The node is a netns, so the primary plugins (bridge, host-local, loopback) run inside it
(`ip netns exec`): their bridge and host-side veths then land in the node netns, not on the
machine. `istio-cni` runs in the host netns, because it must reach the API stand-in on
127.0.0.1; it enters the pod netns itself, by the CNI_NETNS path, as on a real node.

Without /usr/lib/cni/bridge, `VethNetwork` stands in for bridge + host-local: the same
topology (a bridge in the node netns, a veth per pod, one address each, a default route)
made with pyroute2 by `companions.demo.veth`, and a CNI result of the same shape.
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

from companions.demo.sandbox import run

NODE_PLUGINS = frozenset({"bridge", "ptp", "host-local", "loopback"})


@dataclass
class CniCall:
    plugin: str
    status: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def result(self) -> dict[str, Any]:
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


def pod_ip(calls: list[CniCall]) -> str:
    """The first address of the last result (the one the runtime reports to the kubelet)."""
    for call in reversed(calls):
        for ip in call.result.get("ips") or []:
            return str(ip["address"]).split("/")[0]
    return ""


@dataclass
class VethNetwork:
    """bridge + host-local, emulated with pyroute2 when the real plugins are not installed."""

    subnet: ipaddress.IPv4Network
    bridge: str
    next_host: int = 2

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def add(self, node_netns: str, pod_netns_path: str, ifname: str) -> CniCall:
        """One pod's veth and address, made by `companions.demo.veth` in its own process."""
        address = f"{self.subnet.network_address + self.next_host}/{self.subnet.prefixlen}"
        host_if = f"icni-dv{self.next_host}"
        self.next_host += 1
        argv = [sys.executable, "-m", "companions.demo.veth", node_netns,
                os.path.basename(pod_netns_path), self.bridge, host_if, ifname, address,
                self.gateway]
        t0 = time.monotonic()
        proc = run(argv, timeout=60, check=False)
        return CniCall("bridge (veth via pyroute2)", proc.returncode, proc.stdout, proc.stderr,
                       time.monotonic() - t0)


@dataclass
class Runtime:
    cni_path: list[Path]
    node_netns: str
    veth: VethNetwork | None = None
    """Set when bridge/host-local are not installed: `bridge` is then emulated in-process."""
    calls: list[CniCall] = field(default_factory=list)

    def find(self, ptype: str) -> Path | None:
        return next((d / ptype for d in self.cni_path if (d / ptype).exists()), None)

    def call(self, conf: dict[str, Any], command: str, netns_path: str, container_id: str,
             cni_args: str, ifname: str = "eth0") -> CniCall:
        ptype = str(conf["type"])
        if ptype == "bridge" and self.veth is not None:
            return self.veth.add(self.node_netns, netns_path, ifname)
        t0 = time.monotonic()
        binary = self.find(ptype)
        if binary is None:
            search = ":".join(map(str, self.cni_path))
            return CniCall(ptype, 1, "", f"failed to find plugin {ptype!r} in path [{search}]",
                           0.0)
        argv = [str(binary)]
        if ptype in NODE_PLUGINS:
            argv = ["ip", "netns", "exec", self.node_netns, *argv]
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
               "CNI_NETNS": netns_path, "CNI_IFNAME": ifname, "CNI_ARGS": cni_args,
               "CNI_PATH": ":".join(map(str, self.cni_path))}
        proc = run(argv, input=json.dumps(conf), env=env, timeout=120, check=False)
        return CniCall(ptype, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)

    def add(self, conflist: dict[str, Any], netns_path: str, container_id: str,
            cni_args: str) -> list[CniCall]:
        """ADD every plugin in order, chaining prevResult; stops at the first failure."""
        calls: list[CniCall] = []
        for plugin in conflist["plugins"]:
            conf = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
            if calls:
                conf["prevResult"] = calls[-1].result
            call = self.call(conf, "ADD", netns_path, container_id, cni_args)
            calls.append(call)
            self.calls.append(call)
            if call.status != 0:
                break
        return calls


def k8s_args(namespace: str, name: str) -> str:
    """CNI_ARGS as the kubelet's runtimes pass them."""
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
            "K8S_POD_INFRA_CONTAINER_ID=infra")
