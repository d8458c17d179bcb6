"""The node agent as the kubelet runs it: a pod object in the API stand-in, its bound token, and
`istio-cni-node run` as a process on a node laid out by `testbed.nodedirs`; and what a rollout,
a restart or an uninstall does to them.

`start_agent_pod` creates the agent's Pod (its `terminationGracePeriodSeconds`, its node), the
token the kubelet projects for it (bound to that pod: void once the pod object is deleted),
writes that token where the kubelet puts it (the service account dir) and a kubeconfig holding
it (the process runs outside a pod, so the client reads KUBECONFIG), and starts the agent from
this source tree with the environment given. `terminate` is the kubelet's stop: SIGTERM, then
SIGKILL at the grace period, measured; `delete_pod` is the API side of it (the pod object
gone, its token void). `uninstall_release` deletes what `helm uninstall` or `kubectl delete -f`
deletes, in their order. `plugin_works` says whether the config the runtime loads can still
start a pod: no istio-cni in it, or istio-cni with a credential the API accepts.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import admin
from testbed.cleanup import Cleanup
from testbed.kubeapi import KubeApiServer, write_kubeconfig
from testbed.kubeapi.store import ApiError
from testbed.nodedirs import NodeDirs, loaded_plugins, rotate_token
from testbed.procs import Proc

NAMESPACE = "istio-system"
SOURCE_TREE = Path(admin.__file__).resolve().parents[1]
"""The tree the agent runs from: the one the tests import (a worktree of an older commit too)."""
_PORTS = re.compile(r"health on :(\d+), metrics on :(\d+)")


@dataclass
class AgentPod:
    name: str
    pod: dict[str, Any]
    token: str
    proc: Proc
    grace: float

    health_port: int = 0

    def wait_started(self, timeout: float = 60) -> None:
        line = self.proc.wait_line(lambda ln: _PORTS.search(ln) is not None, timeout,
                                   "the health server")
        match = _PORTS.search(line)
        assert match is not None
        self.health_port = int(match[1])

    def wait_line(self, text: str, timeout: float = 60) -> str:
        return self.proc.wait_line(lambda ln: text in ln, timeout, repr(text))


def start_agent_pod(cleanup: Cleanup, api: KubeApiServer, dirs: NodeDirs, *, node: str,
                    name: str, env: dict[str, str], grace: int = 30,
                    service_account: str = "istio-cni") -> AgentPod:
    """Create the agent's pod and token on `node`, then start `istio-cni-node run` with `env`
    over the node dirs' settings (the caller's win)."""
    pod = api.add_pod({"metadata": {"name": name, "namespace": NAMESPACE,
                                    "labels": {"k8s-app": "istio-cni-node"}},
                       "spec": {"nodeName": node, "serviceAccountName": service_account,
                                "terminationGracePeriodSeconds": grace}})
    token = api.auth.pod_token(NAMESPACE, service_account, pod)
    generation = len([p for p in dirs.sa_dir.iterdir() if p.name.startswith("..")]) + 1
    rotate_token(dirs.sa_dir, token, generation)
    assert api.ca_pem is not None, "the agent talks TLS: use kube_api_tls"
    (dirs.sa_dir / f"..{generation}" / "ca.crt").write_bytes(api.ca_pem)
    kubeconfig = write_kubeconfig(dirs.root, api, token=token, name=f"kubeconfig-{name}")
    host, port = api.url.removeprefix("https://").rsplit(":", 1)
    full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "PYTHONPATH": str(SOURCE_TREE), **dirs.env(),
            "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PROTOCOL": "https", "KUBECONFIG": str(kubeconfig),
            "POD_NAME": name, "POD_NAMESPACE": NAMESPACE, "REPAIR_NODE_NAME": node,
            "READINESS_PORT": "0", "MONITORING_PORT": "0", "HEALTH_BIND_ADDRESS": "127.0.0.1",
            "HOST_PROC": "/proc", "UNINSTALL_ON_SHUTDOWN": "auto", **env}
    argv = ["env", "-i", *(f"{k}={v}" for k, v in full.items()), sys.executable, "-c",
            "import sys; from admin.cli import main; sys.argv = ['istio-cni-node', 'run']; "
            "main()"]
    proc = Proc(name, argv)
    cleanup.add(f"stop agent {name}", proc.stop)
    return AgentPod(name, pod, token, proc, float(grace))


@dataclass(frozen=True)
class Stopped:
    exit_code: int | None
    """None: it was SIGKILLed at the grace period."""
    seconds: float


def terminate(agent: AgentPod) -> Stopped:
    """The kubelet's stop: SIGTERM, SIGKILL `grace` seconds later if it is still running."""
    start = time.monotonic()
    os.killpg(agent.proc.popen.pid, signal.SIGTERM)
    try:
        code: int | None = agent.proc.popen.wait(timeout=agent.grace)
    except subprocess.TimeoutExpired:
        os.killpg(agent.proc.popen.pid, signal.SIGKILL)
        agent.proc.popen.wait(timeout=10)
        code = None
    seconds = time.monotonic() - start
    agent.proc.rest(timeout=10)
    return Stopped(code, seconds)


def delete_pod(api: KubeApiServer, agent: AgentPod) -> None:
    """The pod object goes (after its containers stopped): its bound token is void."""
    api.delete_pod(NAMESPACE, agent.name)


def uninstall_release(api: KubeApiServer, docs: list[dict[str, Any]],
                      daemonset: str = "istio-cni-node") -> None:
    """What `helm uninstall` (and `kubectl delete -f` of our file order) deletes after the
    DaemonSet: the bindings, the roles, the ServiceAccounts."""
    order = ("RoleBinding", "Role", "ClusterRoleBinding", "ClusterRole", "ServiceAccount")
    for kind in order:
        for doc in docs:
            if doc.get("kind") == kind:
                meta = doc["metadata"]
                api.auth.delete(kind, meta["name"], meta.get("namespace", ""))


def kubeconfig_token(dirs: NodeDirs) -> str:
    config = json.loads((dirs.run_dir / "istio-cni-kubeconfig").read_text())
    return str(config["users"][0]["user"]["token"])


def plugin_works(api: KubeApiServer, dirs: NodeDirs) -> bool:
    """Whether a pod can start on this node: the config the runtime loads does not name
    istio-cni, or it does and the plugin is there with a credential the API accepts."""
    if "istio-cni" not in (loaded_plugins(dirs.net_dir) or []):
        return True
    if not (dirs.bin_dst / "istio-cni").exists():
        return False
    try:
        api.auth.authenticate(f"Bearer {kubeconfig_token(dirs)}")
    except (OSError, ValueError, KeyError, ApiError):
        return False
    return True
