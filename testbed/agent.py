"""The node agent's plugin-serving side, as `istio-cni-node run` wires it, for the tests, the
demo and the benchmarks: a pod informer (the agent's watch cache) and the `cni.sock` server in a
run dir, stopped by the caller's `Cleanup`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from node_daemon.cni_server import CniServer, CniService
from node_daemon.controller import PodInformer
from node_daemon.kubeapi import PodApi
from node_daemon.metrics import Metrics
from testbed.cleanup import Cleanup
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
