"""Plugin logging: never stdout. stderr, a rotating file in the run dir, and the agent's socket.

stdout carries the CNI protocol, so the root logger only ever writes to stderr (which runtimes
capture into their own logs), to `<run dir>/istio-cni.log` (rotated at 10 MB, upstream's size)
when the run dir exists, and, best effort, to the node agent over `<run dir>/log.sock` (upstream's
HTTP POST /log of a JSON array of JSON-encoded lines), sent once at exit with a short timeout so
a missing or stuck agent never delays a pod. Lines are JSON, one per record, like upstream's.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

LOG_FILE_NAME = "istio-cni.log"
LOG_FILE_MAX_BYTES = 10 * 1024 * 1024
UDS_TIMEOUT = 0.1
_LEVELS = {
    "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
    "warning": logging.WARNING, "error": logging.ERROR, "none": logging.CRITICAL + 10,
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, scope, msg, and the bound pod context."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "scope": "cni",
            "msg": record.getMessage(),
        }
        for key in ("pod", "container_id", "netns"):
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        if record.exc_info and record.levelno >= logging.ERROR:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(entry, ensure_ascii=False)


class BufferHandler(logging.Handler):
    """Keeps formatted lines for one POST to the agent at exit."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class PodContext(logging.LoggerAdapter):
    """Binds pod ns/name, container id and netns to every line of one CNI call."""

    def process(self, msg, kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("extra", {}).update(self.extra or {})
        return msg, kwargs


_buffer = BufferHandler()
_stderr_handler: logging.Handler | None = None


def setup_stderr(level: str = "info") -> None:
    """First thing the entry point does: route all logging to stderr only."""
    global _stderr_handler
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    _stderr_handler = logging.StreamHandler()  # stderr
    _stderr_handler.setFormatter(JsonFormatter())
    root.addHandler(_stderr_handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))


def configure(level: str, run_dir: str) -> None:
    """After the config is parsed: level, the rotating file and the socket buffer."""
    root = logging.getLogger()
    root.setLevel(_LEVELS.get(level, logging.INFO))
    if not os.path.isdir(run_dir):
        return
    try:
        from logging.handlers import RotatingFileHandler

        fh = RotatingFileHandler(
            os.path.join(run_dir, LOG_FILE_NAME), maxBytes=LOG_FILE_MAX_BYTES, backupCount=1
        )
    except OSError as exc:
        logging.getLogger(__name__).debug("no plugin log file in %s: %s", run_dir, exc)
    else:
        try:
            os.chmod(fh.baseFilename, 0o600)  # only the agent (root) reads it; not the umask's
        except OSError:
            pass
        fh.setFormatter(JsonFormatter())
        root.addHandler(fh)
    _buffer.setFormatter(JsonFormatter())
    root.addHandler(_buffer)


def post_to_agent(socket_path: str, path: str, body: bytes, timeout: float = UDS_TIMEOUT) -> bool:
    """One HTTP POST over a Unix socket, fire and forget: the request is written and the
    connection closed without waiting for the answer (the agent reads what is in the socket
    buffer either way), so a busy agent never adds its latency to a pod start. False when the
    request could not be written (no agent, or its backlog full past `timeout`)."""
    if not os.path.exists(socket_path):
        return False
    head = (
        f"POST {path} HTTP/1.1\r\nHost: istio-cni\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(head + body)
    except OSError:
        return False
    return True


def flush_to_agent(socket_path: str) -> bool:
    """Send this call's log lines to the agent (upstream's /log format)."""
    if not _buffer.lines:
        return False
    body = json.dumps(_buffer.lines).encode()
    _buffer.lines = []
    return post_to_agent(socket_path, "/log", body)


def post_event(socket_path: str, event: dict) -> bool:
    """The ADD event (outcome, reason, phase timings) for the agent's metrics; best effort."""
    return post_to_agent(socket_path, "/event", json.dumps(event).encode())
