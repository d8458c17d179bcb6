"""A minimal CNI runtime, as libcni runs a conflist: each plugin in order, prevResult chained.

Tests drive the plugin the way containerd/CRI-O do: env + stdin JSON → stdout JSON + exit
status. Each plugin of the list can be run inside a given netns (the "node"), which is how the
real bridge/host-local plugins run here without touching the host's own network.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CNI_BIN_DIR = Path("/usr/lib/cni")


@dataclass
class CniCall:
    """One invocation's outcome."""

    argv: list[str]
    status: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        return json.loads(self.stdout) if self.stdout.strip() else {}


@dataclass
class Runtime:
    """Runs plugins by type: `binaries` maps a type to an argv; others come from CNI_BIN_DIR."""

    binaries: dict[str, list[str]] = field(default_factory=dict)
    node_netns: str | None = None
    """Run the primary CNI plugins (bridge, host-local, ...) inside this named netns."""
    in_node: frozenset[str] = frozenset({"bridge", "ptp", "host-local", "loopback"})
    extra_env: dict[str, str] = field(default_factory=dict)

    def argv_for(self, ptype: str) -> list[str]:
        argv = self.binaries.get(ptype) or [str(CNI_BIN_DIR / ptype)]
        if self.node_netns and ptype in self.in_node:
            return ["ip", "netns", "exec", self.node_netns, *argv]
        return argv

    def call(self, ptype: str, command: str, netns: str, container_id: str, conf: dict,
             cni_args: str = "", ifname: str = "eth0", env: dict | None = None) -> CniCall:
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
            "CNI_IFNAME": ifname, "CNI_ARGS": cni_args,
            "CNI_PATH": f"{CNI_BIN_DIR}:/opt/cni/bin",
            **self.extra_env, **(env or {}),
        }
        full_env = {k: v for k, v in full_env.items() if v is not None}
        argv = self.argv_for(ptype)
        proc = subprocess.run(argv, input=json.dumps(conf).encode(), env=full_env,
                              capture_output=True, timeout=120, check=False)
        return CniCall(argv, proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    def run_list(self, conflist: dict, command: str, netns: str, container_id: str,
                 cni_args: str = "", prev: dict | None = None) -> list[CniCall]:
        """ADD runs the list in order, DEL in reverse; CHECK in order with the cached result.
        Stops at the first failure, like libcni."""
        plugins = conflist["plugins"]
        order = list(reversed(plugins)) if command == "DEL" else plugins
        calls: list[CniCall] = []
        prev_result = prev
        for plugin in order:
            conf = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
            if prev_result is not None and command != "ADD":
                conf["prevResult"] = prev_result
            elif command == "ADD" and calls:
                conf["prevResult"] = calls[-1].result
            call = self.call(plugin["type"], command, netns, container_id, conf, cni_args)
            calls.append(call)
            if call.status != 0:
                break
        return calls


def k8s_args(namespace: str, name: str) -> str:
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
            "K8S_POD_INFRA_CONTAINER_ID=infra")
