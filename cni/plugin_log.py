"""Plugin logging: never stdout. stderr, a rotating file in the run dir, and the agent's socket.

stdout carries the CNI protocol, so the root logger only ever writes to stderr (which runtimes
capture into their own logs), to `<run dir>/istio-cni.log` (rotated at 10 MB, upstream's size)
when the run dir exists, and, best effort, to the node agent over `<run dir>/log.sock`. Lines are
JSON, one per record, like upstream's.

What the agent is promised (`send_report`): each in-process CNI call sends at most one report, at
exit, over one connection: `POST /log` (upstream's body: a JSON array of JSON-encoded lines) and
then, for an ADD, `POST /event`, pipelined in that order on that connection, so the agent sees a
call's lines before its event. Delivery is best effort and never on the pod's critical path: the
socket is non-blocking, the report at most `MAX_REPORT` bytes (the oldest lines give way), written
once; a connect or a write that would wait (no agent, a full backlog, an agent that accepts and
never reads) drops it at once, and no answer is ever read. The lines are in stderr and the log
file either way.

A call the node agent serves (`cni.agent_client`) is logged by the agent, with the same lines
reaching the same places (`ServedCallLog`): the plugin's stderr (the agent sends them back with
its answer), this rotating file in the run dir, and the agent's own log through `cni-plugin`, as
a report on `log.sock` would.

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
import threading
import time
from enum import StrEnum

LOG_FILE_NAME = "istio-cni.log"
LOG_FILE_MAX_BYTES = 10 * 1024 * 1024
MAX_REPORT = 64 * 1024
"""The most a report writes to `log.sock`: well inside a Unix socket's send buffer, so one
non-blocking write takes all of it."""
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


def level_number(name: str) -> int:
    """The logging level of a plugin_log_level name (info for anything else)."""
    return _LEVELS.get(name, logging.INFO)


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


def post_to_agent(socket_path: str, requests: list[tuple[str, bytes]]) -> bool:
    """HTTP POSTs over one Unix-socket connection, pipelined in order, fire and forget.

    Never waits: the socket is non-blocking, so a connect the agent's backlog cannot take, or a
    write its buffer cannot take whole, drops the report there and then; the answers are never
    read (the agent handles what it received either way). True when the whole report was
    written. The caller bounds its size (`send_report`: `MAX_REPORT`).
    """
    if not requests:
        return False
    payload = b"".join(
        _request(path, body, last=i == len(requests) - 1) for i, (path, body) in enumerate(requests)
    )
    import _socket  # not `socket` (enum, selectors): only a call that reports pays, and little

    try:
        sock = _socket.socket(_socket.AF_UNIX,
                              _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC)
    except OSError:
        return False
    try:
        sock.connect(socket_path)
        return sock.send(payload) == len(payload)
    except OSError:  # no agent, a full backlog (EAGAIN), a full buffer
        return False
    finally:
        sock.close()


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
    room = MAX_REPORT - 1024  # the headers, and the event (a few hundred bytes)
    if event is not None:
        requests.append(("/event", json.dumps(event).encode()))
        room -= len(requests[0][1])
    lines, _buffer.lines = _buffer.lines, []
    sizes = [len(json.dumps(line)) + 2 for line in lines]
    total, first = sum(sizes) + 2, 0
    while first < len(lines) and total > room:  # the oldest lines give way to the last ones
        total -= sizes[first]
        first += 1
    lines = lines[first:]
    if lines:
        requests.insert(0, ("/log", json.dumps(lines).encode()))
    return post_to_agent(socket_path, requests)


class _Router(logging.Handler):
    """On the plugin's loggers (`istio-cni`, `cni`) in the agent, which then do not propagate: a
    record of a thread serving a call goes to that call's `ServedCallLog`; any other record goes
    on to the root logger's handlers, as propagation would have taken it (but to none that sits
    on those loggers too and so had it already: pytest puts its capture there)."""

    def __init__(self, loggers: list[logging.Logger]) -> None:
        super().__init__()
        self.loggers = loggers
        self.calls: dict[int, list[logging.LogRecord]] = {}

    def handle(self, record: logging.LogRecord) -> bool:  # no handler lock: nothing shared
        captured = self.calls.get(record.thread or 0)
        if captured is not None:
            captured.append(record)
            return True
        had_it = {handler for logger in self.loggers for handler in logger.handlers}
        for handler in logging.getLogger().handlers:
            if handler not in had_it and record.levelno >= handler.level:
                handler.handle(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() does it
        self.handle(record)


_router: _Router | None = None
_router_lock = threading.Lock()  # `logging` imports threading: no cost here
_RAW = logging.Formatter("%(message)s")


def _installed_router() -> _Router:
    """The one router of this process, installed by the first served call (under a lock: two
    first calls at once must not install two, or every line would come twice)."""
    global _router
    if _router is None:
        with _router_lock:
            if _router is None:
                loggers = [logging.getLogger("istio-cni"), logging.getLogger("cni")]
                router = _Router(loggers)
                for logger in loggers:
                    logger.addHandler(router)
                    logger.propagate = False
                _router = router
    return _router


class ServedCallLog:
    """The log of one call the agent serves for a thin client, on the thread serving it.

    Inside the `with` block, what the plugin's code logs on this thread (`istio-cni`, `cni.*`)
    is kept here instead of reaching the agent's log directly; `lines()` then gives the JSON
    lines the in-process plugin would have written, the same records with the same fields (pod,
    container id, netns), for the same three places: the plugin's stderr, the run dir's log file
    (`append_lines`) and the agent's log via `cni-plugin`. The agent writes them after it has
    answered, so no line is on the pod's critical path. Lines below the agent's level for these
    loggers (its `cni-plugin` scope) are not made at all: `cni-plugin:debug` makes them.
    """

    def __init__(self, fd_path: str = "", shown: str = "") -> None:
        """`fd_path` (`/proc/self/fd/N`, how the agent enters the netns it was handed) is shown
        as `shown` (the runtime's CNI_NETNS) in every line, as the in-process plugin names it."""
        self.records: list[logging.LogRecord] = []
        self.fd_path, self.shown = fd_path, shown
        self._thread = 0

    def __enter__(self) -> ServedCallLog:
        self._thread = threading.get_ident()
        _installed_router().calls[self._thread] = self.records
        return self

    def __exit__(self, *exc: object) -> None:
        _installed_router().calls.pop(self._thread, None)

    def lines(self, level: str) -> list[str]:
        """The JSON lines at or above the call's `level` (its plugin_log_level)."""
        threshold = level_number(level)
        formatter = JsonFormatter()
        shown = json.dumps(self.shown, ensure_ascii=False)[1:-1]
        out = []
        for record in self.records:
            if record.levelno >= threshold:
                line = formatter.format(record)
                out.append(line.replace(self.fd_path, shown) if self.fd_path else line)
        return out


def append_lines(run_dir: str, lines: list[str]) -> None:
    """Add a served call's lines to `<run dir>/istio-cni.log`, as the in-process call would
    have (the same checks: no link followed, nothing but a regular file, rotated at 10 MB);
    nothing when the run dir does not exist. Best effort, like any log write."""
    if not lines or not os.path.isdir(run_dir):
        return
    try:
        handler = RotatingLogFile(os.path.join(run_dir, LOG_FILE_NAME))
    except OSError:
        return
    try:
        handler.setFormatter(_RAW)
        for line in lines:
            handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))
    finally:
        handler.close()
