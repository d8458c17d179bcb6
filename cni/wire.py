"""The bytes of a CNI call, and of its hand-off to the node agent over `<run dir>/cni.sock`.

Stdin is read here, bounded (`read_stdin`), for every command. An agent-served ADD or CHECK is
then framed as it arrived, so the agent runs the very protocol code the in-process path runs on
the very same input (same validation, same errors): the request carries the `CNI_*` environment
and stdin **verbatim**, as bytes, and the pod's netns travels beside it as a descriptor
(`SCM_RIGHTS`). The answer is what the plugin writes and how it exits: stdout bytes, stderr
bytes and the exit status, or "fallback" with a reason (the plugin then does the call itself).

Binary, not JSON: the thin client must not import `json` (and `re` with it) to forward a call.
A frame is 4 bytes of magic, a 4-byte big-endian body length, and the body: a sequence of fields,
each a 4-byte big-endian length and its bytes.

- request: `REQUEST_MAGIC`, then the fields stdin, name1, value1, name2, value2, ...
- answer: `ANSWER_MAGIC`, then either `b"A"`, the exit status (ASCII digits), stdout, stderr;
  or `b"F"` and the reason.

An agent of the earlier protocol (a 4-byte length and a JSON object, no magic) reads a request
it cannot decode and closes the connection: the plugin falls back, so a plugin and an agent of
different versions (a rolling upgrade) still start every pod.

Imports nothing but `sys` and `time` (both loaded with the interpreter): part of the thin
client's start, and of every DEL's.
"""

import sys
import time

DEFAULT_RUN_DIR = "/var/run/istio-cni"
"""Upstream's CNI_AGENT_RUN_DIR: the plugin's kubeconfig, the agent's sockets, the plugin log."""
SOCKET_NAME = "cni.sock"
AGENT_SERVE_TIMEOUT = 5.0
"""The default budget, in seconds, for the node agent to answer an agent-served ADD or CHECK
(connect, send, its work, the answer) before the plugin does the call itself. An agent serves a
cached pod in milliseconds and a pod it must GET in well under a second; 5 s only matters when
the agent is stuck, and then bounds what a pod start pays for it before the in-process path."""

MAX_CONFIG_BYTES = 16 * 1024 * 1024
"""The largest network config the protocol reads from stdin; one byte more and it is refused."""
_READ_CHUNK = 64 * 1024

REQUEST_MAGIC = b"ICN1"
ANSWER_MAGIC = b"ICA1"
MAX_REQUEST = 1 << 20
"""The largest request the agent reads (a network config with its prevResult is a few KiB); a
larger call is served in-process."""
MAX_ANSWER = 4 << 20
"""The largest answer the plugin reads: stdout is the prevResult re-encoded (at most about the
request's size) and stderr is bounded by the agent (`MAX_STDERR`)."""
MAX_STDERR = 64 * 1024
HEADER_SIZE = 8


def read_stdin(stream) -> bytes:  # type: ignore[no-untyped-def]  # any binary file
    """Stdin to EOF, but never more than `MAX_CONFIG_BYTES + 1` bytes: one byte over the limit is
    enough to refuse the config; reading on would only grow the plugin (and wait for a writer
    that never closes)."""
    chunks: list[bytes] = []
    total = 0
    while total <= MAX_CONFIG_BYTES:
        chunk = stream.read(min(_READ_CHUNK, MAX_CONFIG_BYTES + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def text(raw: bytes) -> str:
    """An environment value as `os.environ` shows it (the filesystem encoding, with
    surrogateescape), without importing `os`."""
    return raw.decode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())


def environ() -> dict[bytes, bytes]:
    """This process's environment as bytes (`os.environb`, without importing `os`)."""
    import posix

    return dict(posix.environ)


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def _frame(magic: bytes, fields: list[bytes]) -> bytes:
    body = b"".join(_u32(len(f)) + f for f in fields)
    return magic + _u32(len(body)) + body


def body_length(header: bytes, magic: bytes, limit: int) -> int:
    """The body length a frame's 8-byte header announces; ValueError for another protocol or a
    body over `limit` bytes."""
    if len(header) != HEADER_SIZE or header[:4] != magic:
        raise ValueError("not a frame of this protocol")
    length = int.from_bytes(header[4:], "big")
    if length > limit:
        raise ValueError(f"frame of {length} bytes is over the {limit}-byte limit")
    return length


def fields(body: bytes) -> list[bytes]:
    """The fields of a frame's body; ValueError if they do not exactly fill it."""
    out, pos = [], 0
    while pos < len(body):
        if pos + 4 > len(body):
            raise ValueError("truncated field length")
        size = int.from_bytes(body[pos:pos + 4], "big")
        pos += 4
        if pos + size > len(body):
            raise ValueError("truncated field")
        out.append(body[pos:pos + size])
        pos += size
    return out


def request(environ: dict[bytes, bytes], stdin: bytes) -> bytes:
    """The request frame: stdin and every `CNI_*` variable of `environ`, as they are."""
    parts = [stdin]
    for name, value in environ.items():
        if name.startswith(b"CNI_"):
            parts += (name, value)
    return _frame(REQUEST_MAGIC, parts)


def parse_request(body: bytes) -> tuple[dict[bytes, bytes], bytes]:
    """(environment, stdin) from a request body; ValueError if it is not one."""
    parts = fields(body)
    if not parts or len(parts) % 2 != 1:
        raise ValueError("a request is stdin and name/value pairs")
    stdin, pairs = parts[0], parts[1:]
    env = {pairs[i]: pairs[i + 1] for i in range(0, len(pairs), 2)}
    if any(not name.startswith(b"CNI_") for name in env):
        raise ValueError("a request carries only CNI_* variables")
    return env, stdin


def answered(status: int, stdout: bytes, stderr: bytes) -> bytes:
    return _frame(ANSWER_MAGIC, [b"A", str(status).encode(), stdout, stderr[-MAX_STDERR:]])


def fallback(reason: str) -> bytes:
    return _frame(ANSWER_MAGIC, [b"F", reason.encode("utf-8", "replace")])


def read_exactly(sock, count: int, deadline: float,  # type: ignore[no-untyped-def]
                 clock=time.monotonic) -> bytes:
    """`count` bytes of a frame from `sock` (either side's) by `deadline` on `clock` (the
    monotonic clock unless a test moves its own; TimeoutError), or ConnectionError if the peer
    closes first."""
    chunks, got = [], 0
    while got < count:
        remaining = deadline - clock()
        if remaining <= 0:
            raise TimeoutError("no complete answer within the budget")
        sock.settimeout(remaining)
        chunk = sock.recv(min(count - got, 65536))
        if not chunk:
            raise ConnectionError("closed before a complete frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def parse_answer(body: bytes) -> tuple[int, bytes, bytes] | str:
    """(exit status, stdout, stderr) of an answer, or the agent's reason to fall back;
    ValueError if the body is neither."""
    parts = fields(body)
    if len(parts) == 4 and parts[0] == b"A" and parts[1].isdigit() and len(parts[1]) <= 3:
        return int(parts[1]), parts[2], parts[3]
    if len(parts) == 2 and parts[0] == b"F":
        return parts[1].decode("utf-8", "replace")
    raise ValueError("not an answer")
