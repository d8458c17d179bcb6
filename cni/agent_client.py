"""The plugin as a thin client of the node agent: an ADD or CHECK handed whole to `cni.sock`.

The node agent is a warm process that already holds the API client, a watch of this node's pods,
the rule code and the logging; a plugin process that only forwards the call skips all of that.
So when the agent can serve, the plugin does the least a process can do: read stdin and the
`CNI_*` environment, open `CNI_NETNS` with the checks every path makes
(`cni.netns_check.open_netns`, and never its own netns), send both and the netns descriptor
(`SCM_RIGHTS`) over `<cni_agent_run_dir>/cni.sock`, write what the agent answers (stdout and
stderr bytes) and exit with its status. Parsing and validating the call, the decisions (the
agent's own pods and excluded namespaces too), logging and metrics all happen in the agent
(`node_daemon.cni_server`), with the same `cni.protocol` and `cni.plugin` code the in-process
path runs, so answers and errors are the same whichever path served the call.

Every way the agent cannot serve ends in a `Fallback` with the reason, and the plugin then does
the whole call in-process exactly as without an agent (and logs the reason): agent serving off
in the config (or a config this reader cannot take: the in-process path reports what is wrong);
a netns that fails the checks (the in-process path reports it, if the pod needs its netns);
no socket, or a socket not owned by root or open to others; a refused or dropped connection; no
answer within `agent_serve_timeout_seconds`; or the agent's own "fallback" (it is not ready, or
cannot find the pod). An answer, once received, is final: the agent has programmed (or refused
to program) the netns.

Lean on purpose (the import graph a served call loads is pinned by
`tests/cni/test_lean_imports.py`): the interpreter's built-in modules, `_socket`, `fcntl` and
`_json` (three small extensions), and this package's `wire`, `jsonread` and `netns_check`.
Not `os`, `socket` (`enum`, `selectors`), `json` (`re`), `logging`, `struct`, or even
`cni.errors` (only a refused netns needs it, and that call is done in-process anyway).
"""

import _stat
import posix
import sys
import time

from cni import netns_check, wire

SERVED_COMMANDS = (b"ADD", b"CHECK")


class Answer:
    """What the agent answered: the plugin writes `stdout` and `stderr` and exits `status`."""

    __slots__ = ("status", "stdout", "stderr")

    def __init__(self, status: int, stdout: bytes, stderr: bytes) -> None:
        self.status, self.stdout, self.stderr = status, stdout, stderr


class Fallback:
    """Why the plugin does the call itself; `level` is how loudly to log it ("debug" when
    nothing is wrong: no agent, or serving off; "warning" for a socket that must not be used)."""

    __slots__ = ("level", "reason")

    def __init__(self, level: str, reason: str) -> None:
        self.level, self.reason = level, reason


def socket_path(run_dir: str) -> str:
    return f"{run_dir.rstrip('/')}/{wire.SOCKET_NAME}"


def serve(environ: dict[bytes, bytes], stdin: bytes) -> Answer | Fallback:
    """Hand this ADD or CHECK to the node agent: its `Answer`, or why it is ours to do."""
    if environ.get(b"CNI_COMMAND") not in SERVED_COMMANDS:
        return Fallback("debug", "only ADD and CHECK are served by the agent")
    settings = _agent_settings(stdin)
    if isinstance(settings, Fallback):
        return settings
    path, budget = settings
    why = _unusable_socket(path)
    if why:
        return Fallback("debug" if why == "no agent socket" else "warning", why)
    payload = wire.request(environ, stdin)
    if len(payload) > wire.MAX_REQUEST:
        return Fallback("debug", f"a {len(payload)}-byte request is over the agent's limit")
    try:
        fd = netns_check.open_netns(wire.text(environ.get(b"CNI_NETNS", b"")))
    except Exception as exc:  # noqa: BLE001 - InvalidNetNS (not imported unless refused)
        why = getattr(exc, "msg", None) or f"{type(exc).__name__}: {exc}"
        return Fallback("debug", f"the netns is not handed to the agent: {why}")
    try:
        if netns_check.is_own_netns(fd):
            return Fallback("debug", "CNI_NETNS is the plugin's own netns")
        return call(path, payload, fd, budget)
    finally:
        posix.close(fd)


def call(path: str, payload: bytes, netns_fd: int, budget: float) -> Answer | Fallback:
    """Send the request frame `payload` with `netns_fd` to the agent at `path`: its answer, or
    why not. `budget` bounds everything (connect, send, the agent's work, the answer), in
    seconds."""
    import _socket

    deadline = time.monotonic() + budget
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(budget)
            sock.connect(path)
            fds = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                    netns_fd.to_bytes(4, sys.byteorder, signed=True))]
            try:
                sent = sock.sendmsg([payload], fds)
                while sent < len(payload):
                    sock.settimeout(max(deadline - time.monotonic(), 0.001))
                    sent += sock.send(payload[sent:])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the agent answered before reading (a refusal) and closed: read that
            header = wire.read_exactly(sock, wire.HEADER_SIZE, deadline)
            length = wire.body_length(header, wire.ANSWER_MAGIC, wire.MAX_ANSWER)
            answer = wire.parse_answer(wire.read_exactly(sock, length, deadline))
        finally:
            sock.close()
    except (OSError, ValueError) as exc:
        return Fallback("info", f"node agent at {path} did not answer: {exc}")
    if isinstance(answer, str):
        return Fallback("info", f"node agent deferred: {answer}")
    return Answer(*answer)


def _agent_settings(stdin: bytes) -> tuple[str, float] | Fallback:
    """The agent's socket and the budget, from the network config's three keys the client needs
    (read as `cni.config` reads them); a config it cannot take is the in-process path's to
    report."""
    from cni import jsonread

    try:
        conf = jsonread.loads(stdin)
    except (ValueError, RecursionError):
        conf = None
    if not isinstance(conf, dict):
        return Fallback("debug", "the network config is for the in-process path to decode")
    serving = conf.get("agent_serve")
    if serving is False:
        return Fallback("debug", "agent serving is off (agent_serve: false)")
    run_dir = conf.get("cni_agent_run_dir") or wire.DEFAULT_RUN_DIR
    budget = conf.get("agent_serve_timeout_seconds")
    budget = wire.AGENT_SERVE_TIMEOUT if budget is None else budget
    if (serving not in (None, True) or not isinstance(run_dir, str)
            or isinstance(budget, bool) or not isinstance(budget, int | float)
            or not 0 < budget < 1e9):
        return Fallback("debug", "the network config is for the in-process path to check")
    return socket_path(run_dir), float(budget)


def _unusable_socket(path: str) -> str:
    """Why the socket at `path` must not be used ("" when it may): only root's own, closed to
    others, may receive a pod's netns."""
    try:
        info = posix.lstat(path)
    except FileNotFoundError:
        return "no agent socket"
    except (OSError, ValueError) as exc:
        return f"agent socket {path}: {getattr(exc, 'strerror', None) or exc}"
    if not _stat.S_ISSOCK(info.st_mode):
        return f"agent socket {path} is not a socket"
    if info.st_uid != 0:
        return f"agent socket {path} is owned by uid {info.st_uid}, not root"
    if info.st_mode & 0o077:
        return f"agent socket {path} has mode {_stat.S_IMODE(info.st_mode):04o}, not 0600"
    return ""
