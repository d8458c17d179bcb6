"""The plugin's log and event sink: HTTP over `<run dir>/log.sock`.

`POST /log` (upstream's protocol): a JSON array of JSON-encoded log lines; each is re-emitted
through the `cni-plugin` logger at its level. `POST /event` (ours): one ADD outcome with per-phase
seconds, turned into `istio_cni_plugin_add_total{outcome}` and
`istio_cni_plugin_add_duration_seconds{phase}`. The plugin sends with a 100 ms timeout and never
waits on us, so this server answers at once, bounds bodies and reads with a short timeout; a bad
body is logged at debug and answered 400, never raised.
"""

from __future__ import annotations

import json
import logging
import os
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from node_daemon.metrics import ADD_OUTCOMES, ADD_PHASES, Metrics

log = logging.getLogger(__name__)
plugin_log = logging.getLogger("cni-plugin")
MAX_BODY = 1 << 20
READ_TIMEOUT = 2.0
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR}


def handle_log(body: bytes, metrics: Metrics | None = None) -> int:
    """Re-emit the plugin's lines; returns how many were accepted."""
    lines = json.loads(body)
    if not isinstance(lines, list):
        raise ValueError("expected a JSON array of log lines")
    count = 0
    for raw in lines:
        try:
            entry = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            entry = {"level": "info", "msg": str(raw)}
        if not isinstance(entry, dict):
            continue
        level = _LEVELS.get(str(entry.get("level", "info")).lower(), logging.INFO)
        extra = {k: entry[k] for k in ("pod", "container_id", "netns") if entry.get(k)}
        suffix = "".join(f" {k}={v}" for k, v in extra.items())
        plugin_log.log(level, "%s%s", str(entry.get("msg", "")).strip(), suffix)
        count += 1
    if metrics is not None:
        metrics.plugin_log_lines.inc(count)
    return count


def handle_event(body: bytes, metrics: Metrics) -> None:
    """One ADD event: {"pod", "outcome", "reason", "phases": {phase: seconds}}."""
    event = json.loads(body)
    if not isinstance(event, dict):
        raise ValueError("expected a JSON object")
    outcome = event.get("outcome")
    if outcome not in ADD_OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    raw_phases = event.get("phases") or {}
    phases = {p: float(s) for p, s in raw_phases.items()
              if p in ADD_PHASES and isinstance(s, int | float) and s >= 0}
    metrics.plugin_add(outcome, phases)
    log.debug("plugin ADD %s: %s (%s)", event.get("pod", "?"), outcome, event.get("reason", ""))


class LogSink:
    """The Unix-socket server; `stop()` closes it and removes the socket file."""

    def __init__(self, path: Path, metrics: Metrics) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.unlink(path)  # a stale socket from a previous run (upstream does the same)
        except FileNotFoundError:
            pass
        handler = type("_Handler", (_Handler,), {"metrics": metrics})
        self._server = _Server(str(path), handler)
        os.chmod(path, 0o600)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,),
                                        name="logsink", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A plugin that hung up early is its own business."""


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics
    timeout = READ_TIMEOUT  # a stuck client never holds a thread for long

    def address_string(self) -> str:
        return "plugin"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._reply(413, "body too large")
            return
        body = self.rfile.read(length)
        try:
            if self.path == "/log":
                handle_log(body, self.metrics)
            elif self.path == "/event":
                handle_event(body, self.metrics)
            else:
                self._reply(404, "not found")
                return
        except (ValueError, TypeError) as exc:
            log.debug("bad plugin report on %s: %s", self.path, exc)
            self._reply(400, str(exc))
            return
        self._reply(200, "ok")

    def _reply(self, code: int, text: str) -> None:
        data = (text + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """No access log: every pod start would add a line."""
