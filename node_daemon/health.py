"""Health and metrics endpoints: tiny GET-only HTTP servers in daemon threads.

`/healthz` is always 200 while the process serves (upstream: liveness is "the process is up");
`/readyz` is 200 only while the plugin is installed and the repair controller has synced (and
its watch is current), so a node taint / untaint controller keyed on readiness never admits
pods before we can catch them.
Metrics (`/metrics`) get their own port, as upstream's 15014 does. Both are bounded in
connections, threads and time per connection (`node_daemon.httpserve`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import HTTPServer

from node_daemon.httpserve import BoundedHandler, BoundedServerMixin

Route = Callable[[], tuple[int, str, bytes]]
"""Returns (status, content type, body)."""


class _Server(BoundedServerMixin, HTTPServer):
    pass


class EndpointServer:
    """A bounded threading HTTP server answering GET for a fixed set of paths."""

    def __init__(self, host: str, port: int, routes: dict[str, Route], name: str) -> None:
        handler = type("_Handler", (_Handler,), {"routes": routes})
        self._httpd = _Server((host, port), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,),
                                        name=name, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _Handler(BoundedHandler):
    routes: dict[str, Route] = {}

    def do_GET(self) -> None:
        route = self.routes.get(self.path.split("?", 1)[0])
        status, ctype, body = route() if route else (404, "text/plain", b"not found\n")
        self.reply(status, ctype, body)


def health_server(host: str, port: int, ready: Callable[[], tuple[bool, str]]) -> EndpointServer:
    """`ready()` returns (ready, why not) and is asked on every /readyz."""

    def readyz() -> tuple[int, str, bytes]:
        ok, why = ready()
        return (200, "text/plain", b"ok\n") if ok else (503, "text/plain", f"{why}\n".encode())

    return EndpointServer(host, port, {
        "/healthz": lambda: (200, "text/plain", b"ok\n"),
        "/readyz": readyz,
    }, "health")


def metrics_server(host: str, port: int, render: Callable[[], bytes]) -> EndpointServer:
    from prometheus_client import CONTENT_TYPE_LATEST

    return EndpointServer(host, port, {
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, render()),
    }, "metrics")
