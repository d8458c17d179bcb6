"""Plugin logging: never stdout. stderr, a rotating file in the run dir, and the agent's socket.

stdout carries the CNI protocol, so the root logger only ever writes to stderr (which runtimes
capture into their own logs), to `<run dir>/istio-cni.log` (rotated at 10 MB, upstream's size)
when the run dir exists, and, best effort, to the node agent over `<run dir>/log.sock`. Lines are
JSON, one per record, like upstream's.

What the agent is promised (`send_report`): each CNI call sends at most one report, at exit, over
one connection: `POST /log` (upstream's body: a JSON array of JSON-encoded lines) and then, for an
ADD, `POST /event`, pipelined in that order on that connection, so the agent sees a call's lines
before its event. Delivery is best effort: the report is written with a 100 ms timeout and never
waits for the answer, so a missing or stuck agent never delays a pod; the lines are in stderr and
the log file either way.

The log file is opened without following a symlink and without blocking, and only if it is a
regular file: a FIFO or a link planted at its path must neither hang every pod on the node nor
redirect our writes (and chmod) to another file.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import time
from enum import StrEnum

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


def _open_log_file(path: str, encoding: str | None, errors: str | None):  # type: ignore[no-untyped-def]
    """Open the log file for appending, refusing symlinks, FIFOs and anything not a file.

    `O_NOFOLLOW` fails on a link, `O_NONBLOCK` keeps a FIFO from blocking the open, and the
    fstat check refuses anything that is not a regular file before a byte is written. The mode
    is set on the descriptor (never through the path) to 0600: only the agent (root) reads it.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        why = {errno.ELOOP: "is a symlink (not followed)",
               errno.ENXIO: "is a FIFO or device, not a regular file"}.get(exc.errno)
        if why is None:
            raise
        raise OSError(exc.errno, f"{path} {why}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        if stat.S_IMODE(info.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        return os.fdopen(fd, "a", encoding=encoding, errors=errors)
    except BaseException:
        os.close(fd)
        raise


class RotatingLogFile(logging.FileHandler):
    """upstream's rotating log file: at `LOG_FILE_MAX_BYTES` it becomes `<name>.1` (one backup)
    and a new file starts. Every open goes through `_open_log_file`.

    Not `logging.handlers.RotatingFileHandler`: importing `logging.handlers` pulls in pickle,
    queue and socket, about 6 ms on every pod start that writes a line.
    """

    def __init__(self, path: str, max_bytes: int = LOG_FILE_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        # a byte of the pod's name or netns path that is not UTF-8 is written escaped:
        # never a "Logging error" traceback on stderr
        super().__init__(path, mode="a", encoding="utf-8", errors="backslashreplace")

    def _open(self):  # type: ignore[no-untyped-def]  # logging's signature
        return _open_log_file(self.baseFilename, self.encoding, self.errors)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.stream is not None:
                size = self.stream.seek(0, os.SEEK_END)
                if size + len(self.format(record)) + 1 > self.max_bytes:
                    self._rotate()
        except Exception:  # noqa: BLE001 - logging's contract: never raise from emit
            self.handleError(record)
            return
        super().emit(record)

    def _rotate(self) -> None:
        """`<name>` → `<name>.1` (a rename: a link at `<name>.1` is replaced, not followed)."""
        if self.stream is not None:
            self.stream.close()
            self.stream = None  # type: ignore[assignment]
        try:
            os.replace(self.baseFilename, self.baseFilename + ".1")
        except OSError:
            pass  # another plugin process rotated it first
        self.stream = self._open()


_buffer = BufferHandler()
_stderr_handler: logging.Handler | None = None
_file_handler: logging.Handler | None = None


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
    """After the config is parsed: level, the rotating file and the socket buffer.

    Idempotent: a process that runs several CNI calls (the tests, an agent serving ADDs) keeps
    one file handler, the one of the last call's run dir, and never accumulates open files.
    """
    global _file_handler
    root = logging.getLogger()
    root.setLevel(_LEVELS.get(level, logging.INFO))
    if _file_handler is not None:
        root.removeHandler(_file_handler)
        _file_handler.close()
        _file_handler = None
    if not os.path.isdir(run_dir):
        return
    try:
        fh = RotatingLogFile(os.path.join(run_dir, LOG_FILE_NAME))
    except OSError as exc:
        logging.getLogger(__name__).warning("no plugin log file in %s: %s", run_dir, exc)
    else:
        fh.setFormatter(JsonFormatter())
        root.addHandler(fh)
        _file_handler = fh
    _buffer.setFormatter(JsonFormatter())
    if _buffer not in root.handlers:
        root.addHandler(_buffer)


def _request(path: str, body: bytes, last: bool) -> bytes:
    connection = "close" if last else "keep-alive"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: istio-cni\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: {connection}\r\n\r\n"
    )
    return head.encode() + body


def post_to_agent(socket_path: str, requests: list[tuple[str, bytes]],
                  timeout: float = UDS_TIMEOUT) -> bool:
    """HTTP POSTs over one Unix-socket connection, pipelined in order, fire and forget.

    The requests are written and the connection closed without waiting for the answers (the
    agent reads what is in the socket buffer either way), so a busy agent never adds its latency
    to a pod start. False when they could not be written (no agent, or its backlog full past
    `timeout`).
    """
    if not requests or not os.path.exists(socket_path):
        return False
    payload = b"".join(
        _request(path, body, last=i == len(requests) - 1) for i, (path, body) in enumerate(requests)
    )
    import socket  # only a call that reports to an agent pays for it

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(payload)
    except OSError:
        return False
    return True


class AddOutcome(StrEnum):
    """An ADD's `outcome` in its event; the value is the wire text and the agent's
    `istio_cni_plugin_add_total{outcome}` label."""

    REDIRECTED = "redirected"
    SKIPPED = "skipped"
    FAILED = "failed"


def send_report(socket_path: str, event: dict | None = None) -> bool:
    """This call's report to the agent: its log lines (upstream's /log), then its ADD event.

    Both go over one connection in that order, which is what lets the agent promise that a
    call's lines are handled before its event.
    """
    requests: list[tuple[str, bytes]] = []
    if _buffer.lines:
        requests.append(("/log", json.dumps(_buffer.lines).encode()))
        _buffer.lines = []
    if event is not None:
        requests.append(("/event", json.dumps(event).encode()))
    return post_to_agent(socket_path, requests)
