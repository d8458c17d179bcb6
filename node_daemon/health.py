"""Health and metrics endpoints: GET-only HTTP servers, each one thread with an event loop.

`/healthz` is always 200 while the process serves (upstream: liveness is "the process is up");
`/readyz` is 200 only while the plugin is installed and the repair controller has synced (and
its watch is current), so a node taint / untaint controller keyed on readiness never admits
pods before we can catch them.
Metrics (`/metrics`) get their own port, as upstream's 15014 does. Both hold any number of idle
clients cheaply and bound each one in bytes, time and connections per source address, so the
kubelet's probes are answered whatever other pods do (`node_daemon.httploop`).
"""

from __future__ import annotations

from collections.abc import Callable

from node_daemon.httploop import LoopServer, Route

EndpointServer = LoopServer
"""What the agent holds for each endpoint: `.port`, `.stop()`."""

__all__ = ["EndpointServer", "Route", "health_server", "metrics_server"]


def health_server(host: str, port: int, ready: Callable[[], tuple[bool, str]]) -> EndpointServer:
    """`ready()` returns (ready, why not) and is asked on every /readyz."""

    def readyz() -> tuple[int, str, bytes]:
        ok, why = ready()
        return (200, "text/plain", b"ok\n") if ok else (503, "text/plain", f"{why}\n".encode())

    return LoopServer(host, port, {
        "/healthz": lambda: (200, "text/plain", b"ok\n"),
        "/readyz": readyz,
    }, "health")


def metrics_server(host: str, port: int, render: Callable[[], bytes]) -> EndpointServer:
    from prometheus_client import CONTENT_TYPE_LATEST

    return LoopServer(host, port, {
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, render()),
    }, "metrics")
