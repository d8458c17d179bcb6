"""The plugin's log and event sink: HTTP over `<run dir>/log.sock`.

`POST /log` (upstream's protocol): a JSON array of JSON-encoded log lines; each is re-emitted
through the `cni-plugin` logger at its level. `POST /event` (ours): one ADD outcome with per-phase
seconds, turned into `istio_cni_plugin_add_total{outcome}` and
`istio_cni_plugin_add_duration_seconds{phase}`. A plugin sends both on one connection, `/log`
first, and never waits for our answers; requests on a connection are handled in order. The
server bounds what is read (the bytes that arrive, never the announced length: a negative or
non-numeric `Content-Length` is a 400), the time a connection may take and the number served at
once; a bad body is logged at debug and answered 400, never raised.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cni.plugin_log import AddOutcome
from node_daemon.httpserve import BoundedHandler, KeptUnixServer
from node_daemon.metrics import ADD_PHASES, Metrics

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
    try:
        outcome = AddOutcome(event.get("outcome"))
    except ValueError:
        raise ValueError(f"unknown outcome {event.get('outcome')!r}") from None
    raw_phases = event.get("phases") or {}
    phases = {p: float(s) for p, s in raw_phases.items()
              if p in ADD_PHASES and isinstance(s, int | float) and s >= 0}
    metrics.plugin_add(outcome, phases)
    log.debug("plugin ADD %s: %s (%s)", event.get("pod", "?"), outcome, event.get("reason", ""))


class LogSink(KeptUnixServer):
    """The plugin's log socket at `path` (see `KeptUnixServer` for its lifecycle)."""

    def __init__(self, path: Path, metrics: Metrics, check_interval: float = 1.0,
                 on_report: Callable[[str, Any], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`on_report(path, body)` is called with each accepted request's parsed body, in the
        order the requests were handled (benchmarks and tests observe the plugin with it).
        `clock` is what a connection's `READ_TIMEOUT` is measured on."""
        self.metrics = metrics
        handler = type("_Handler", (_Handler,), {"metrics": metrics, "on_report": on_report,
                                                 "clock": staticmethod(clock)})
        super().__init__(path, handler, "plugin log socket", check_interval=check_interval)


class _Handler(BoundedHandler):
    """HTTP/1.1, so one connection may carry a call's `/log` and then its `/event`, handled in
    the order they were written (what `cni.plugin_log.send_report` relies on)."""

    protocol_version = "HTTP/1.1"
    deadline_seconds = READ_TIMEOUT
    timeout = READ_TIMEOUT
    metrics: Metrics
    on_report: Callable[[str, Any], None] | None = None

    def address_string(self) -> str:
        return "plugin"

    def do_POST(self) -> None:
        raw = self.headers.get("Content-Length", "")
        if not raw.isascii() or not raw.isdigit():
            self.close_connection = True
            self._answer(400, f"Content-Length must be a decimal byte count, not {raw!r}")
            return
        length = int(raw)
        if length > MAX_BODY:
            self.close_connection = True
            self._answer(413, f"body of {length} bytes is over the {MAX_BODY}-byte limit")
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            return
        try:
            if self.path == "/log":
                handle_log(body, self.metrics)
            elif self.path == "/event":
                handle_event(body, self.metrics)
            else:
                self._answer(404, "not found")
                return
        except (ValueError, TypeError, RecursionError) as exc:
            log.debug("bad plugin report on %s: %s", self.path, exc)
            self._answer(400, str(exc))
            return
        if self.on_report is not None:
            self.on_report(self.path, json.loads(body))
        self._answer(200, "ok")

    def _answer(self, code: int, text: str) -> None:
        self.reply(code, "text/plain", (text + "\n").encode())
