"""The node agent for the tests, the demo and the benchmarks: its plugin-serving side, as
`istio-cni-node run` wires it (a pod informer, the agent's watch cache, and the `cni.sock` server
in a run dir), and the whole agent as a process (`AgentProcess`); each stopped by the caller's
`Cleanup`."""

from __future__ import annotations

import http.client
import os
import re
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from node_daemon.cni_server import CniServer, CniService
from node_daemon.controller import PodInformer
from node_daemon.kubeapi import PodApi
from node_daemon.metrics import Metrics
from testbed.cleanup import Cleanup
from testbed.procs import Proc
from testbed.wait import wait_for


class ServingAgent(NamedTuple):
    server: CniServer
    service: CniService
    informer: PodInformer | None
    metrics: Metrics

    def served(self, command: str = "ADD", result: str = "ok") -> float:
        return self.metrics.value("istio_cni_agent_served_total", command=command,
                                  result=result)


def serve_plugin_calls(cleanup: Cleanup, run_dir: Path, api_client: Any, *, watch: bool = True,
                       ready: Callable[[], tuple[bool, str]] | None = None) -> ServingAgent:
    """Serve the plugin's ADD/CHECK on `<run_dir>/cni.sock` with the agent's code; with `watch`,
    pods come from a watch of every pod (synced before this returns), else from one GET each."""
    pods = PodApi(api_client)
    metrics = Metrics()
    informer = None
    if watch:
        informer = PodInformer(pods, "", "", lambda key, uid: None)
        thread = threading.Thread(target=informer.run, name="test-informer", daemon=True)
        thread.start()
        cleanup.add("stop the pod informer", lambda: (informer.stop(), thread.join(10)))
        wait_for(informer.synced.is_set, 15, "the informer's first list")
    service = CniService(metrics, ready or (lambda: (True, "")),
                         informer.current if informer is not None else None, pods)
    server = CniServer(run_dir / "cni.sock", service)
    cleanup.add("stop the agent's cni.sock server", server.stop)
    return ServingAgent(server, service, informer, metrics)


# --- the whole agent as a process (`istio-cni-node run`) ----------------------------------------

REPO = Path(__file__).resolve().parents[1]
_PORTS = re.compile(r"health on :(\d+), metrics on :(\d+)")


class AgentProcess:
    """`python -m admin.cli run` on a node's dirs (`testbed.nodedirs`), with the repair
    controller and the node gate off (no API needed), health and metrics on free loopback
    ports (read from its log), stopped by `cleanup`. `wrap` prefixes the command (e.g. an
    `nsenter` into another user namespace)."""

    def __init__(self, cleanup: Cleanup, name: str, env: dict[str, str],
                 wrap: list[str] | None = None) -> None:
        full = {**os.environ, "PYTHONPATH": str(REPO), "REPAIR_ENABLED": "false",
                "NODE_READINESS_TAINT_KEY": "none", "READINESS_PORT": "0",
                "MONITORING_PORT": "0", "HEALTH_BIND_ADDRESS": "127.0.0.1",
                "LOG_LEVEL": "info", **env}
        argv = [*(wrap or []), sys.executable, "-m", "admin.cli", "run"]
        self.name = name
        self.proc = Proc(name, argv, env=full, cwd=REPO)
        cleanup.add(f"stop {name}", self.proc.stop)
        line = self.proc.wait_line(_PORTS.search, 60, "its health and metrics ports")
        match = _PORTS.search(line)
        assert match is not None
        self.health_port, self.metrics_port = int(match[1]), int(match[2])

    def get(self, port: int, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def readyz(self) -> tuple[int, str]:
        return self.get(self.health_port, "/readyz")

    def metric(self, name: str) -> float | None:
        """One unlabelled sample of /metrics, None when absent."""
        _, text = self.get(self.metrics_port, "/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def alive(self) -> bool:
        return self.proc.popen.poll() is None

    def log(self) -> str:
        return "\n".join(self.proc.lines)

    def saw(self, needle: str, timeout: float = 30) -> str:
        return self.proc.wait_line(lambda ln: needle in ln, timeout, repr(needle))

    def stop(self) -> int:
        """SIGTERM; its exit status."""
        self.proc.stop()
        return self.proc.popen.wait()

