"""The plugin's side of an agent-served ADD or CHECK: one request over `<run dir>/cni.sock`.

The node agent is a warm process that already holds the API client, a watch of this node's pods
and the code that programs a pod netns; a plugin that hands it the call skips the pod GET (and
its TLS handshake) and the rule modules' imports. The plugin still parses and validates the call
itself and decides the skips that need no API (excluded namespaces, the agent's own pods), so the
agent only ever sees pods that need a lookup.

The request carries the CNI command, the `CNI_*` values, the network config, and the pod's
network namespace as an open file descriptor (`SCM_RIGHTS`): there is no path to translate
between the host's mounts and the agent's container, and no race with a netns path the runtime
recycles. Frames are a 4-byte big-endian length and a JSON object, both ways.

Every way the agent can fail to answer ends in `None`, and the plugin then does the whole call
in-process exactly as without an agent: no socket, a socket not owned by root or open to others,
a refused or dropped connection, no answer within the budget, or the agent's own "fallback" (it
is not ready, or does not know the pod). An answer, once received, is final: the agent has
programmed (or refused to program) the netns, with the same outcome and CNI error the in-process
path would have had.
"""

from __future__ import annotations

import array
import json
import logging
import os
import socket
import stat
import struct
import time
from typing import Any

SOCKET_NAME = "cni.sock"
MAX_REQUEST = 1 << 20
"""The largest request the agent reads (a network config with its prevResult is a few KiB); a
larger config is served in-process."""
MAX_ANSWER = 1 << 20
_HEADER = struct.Struct(">I")

log = logging.getLogger("istio-cni")


def socket_path(run_dir: str) -> str:
    return os.path.join(run_dir, SOCKET_NAME)


def _usable_socket(path: str) -> str:
    """Why the socket at `path` must not be used ("" when it may): only root's own, closed to
    others, may receive a pod's netns."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "no agent socket"
    except OSError as exc:
        return f"agent socket {path}: {exc.strerror}"
    if not stat.S_ISSOCK(info.st_mode):
        return f"agent socket {path} is not a socket"
    if info.st_uid != 0:
        return f"agent socket {path} is owned by uid {info.st_uid}, not root"
    if info.st_mode & 0o077:
        return f"agent socket {path} has mode {stat.S_IMODE(info.st_mode):04o}, not 0600"
    return ""


def frame(obj: Any) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


def read_frame(sock: socket.socket, deadline: float, limit: int) -> Any:
    """One frame from `sock`, within the monotonic `deadline` and `limit` bytes."""
    header = read_exactly(sock, _HEADER.size, deadline)
    (length,) = _HEADER.unpack(header)
    if length > limit:
        raise ValueError(f"frame of {length} bytes is over the {limit}-byte limit")
    return json.loads(read_exactly(sock, length, deadline))


def read_exactly(sock: socket.socket, count: int, deadline: float) -> bytes:
    chunks, got = [], 0
    while got < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete answer within the budget")
        sock.settimeout(remaining)
        chunk = sock.recv(min(count - got, 65536))
        if not chunk:
            raise ConnectionError("closed before a complete frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def usable_socket(path: str) -> bool:
    """May the plugin hand a pod's netns to the socket at `path`? Says why not in the log."""
    why = _usable_socket(path)
    if why:
        level = logging.DEBUG if why == "no agent socket" else logging.WARNING
        log.log(level, "serving in-process: %s", why)
    return not why


def call_agent(path: str, request: dict[str, Any], netns_fd: int,
               budget: float) -> dict[str, Any] | None:
    """Send `request` with `netns_fd` to the agent at `path` (checked by `usable_socket`); its
    answer, or None to fall back. `budget` bounds everything (connect, send, the agent's work,
    the answer) in seconds."""
    payload = frame(request)
    if len(payload) > MAX_REQUEST:
        log.debug("serving in-process: a %d-byte request is over the agent's limit", len(payload))
        return None
    deadline = time.monotonic() + budget
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(budget)
            sock.connect(path)
            fds = array.array("i", [netns_fd]).tobytes()
            sent = sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            if sent < len(payload):
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                sock.sendall(payload[sent:])
            answer = read_frame(sock, deadline, MAX_ANSWER)
    except (OSError, ValueError) as exc:
        log.info("serving in-process: node agent at %s did not answer: %s", path, exc)
        return None
    if not isinstance(answer, dict) or answer.get("result") not in ("ok", "error"):
        reason = answer.get("reason", "") if isinstance(answer, dict) else ""
        log.info("serving in-process: node agent deferred: %s", reason or repr(answer)[:200])
        return None
    return answer
