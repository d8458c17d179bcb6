"""The istio-cni binary's entry point: the process around one CNI call.

Four ways through, each importing only what it needs (every import is paid on every pod start):

- VERSION and the about text: answered from `cni.versions`, nothing else imported;
- DEL and GC: validated by `cni.protocol` and answered by `cni.teardown`, no logging;
- ADD and CHECK, when the node agent serves: the thin client (`cni.agent_client`) hands the
  call to the agent and writes its answer; no logging, no `json`, no `os`;
- otherwise (no agent, or it cannot serve this call): the whole call in-process, the plugin's
  stages, logging to stderr and the run dir's log file, and a report to the agent's `log.sock`
  that never waits.

Only the protocol's JSON ever reaches stdout, even on an unexpected crash. The process ends with
`posix._exit` once everything is flushed (interpreter teardown costs ~12 ms per call and does
nothing for us). `posix`, not `os`: the calls that never reach the in-process path do not pay
for importing `os`.
"""

import posix
import sys

from cni import __version__

ABOUT = f"CNI plugin istio-cni (Python) v{__version__}"


def _finish(out: bytes, err: bytes, status: int) -> None:
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.stderr.buffer.write(err)
    sys.stderr.flush()
    posix._exit(status)


def main() -> None:
    command = posix.environ.get(b"CNI_COMMAND", b"")
    if command in (b"", b"VERSION"):
        from cni.versions import about_text, version_json

        if command:
            _finish(version_json(), b"", 0)
        _finish(b"", about_text(ABOUT).encode(), 0)
    from cni import wire

    stdin = wire.read_stdin(sys.stdin.buffer)
    if command in (b"DEL", b"GC"):
        _teardown(stdin)
    fallback = None
    if command in (b"ADD", b"CHECK"):
        from cni import agent_client

        served = agent_client.serve(dict(posix.environ), stdin)
        if isinstance(served, agent_client.Answer):
            _finish(served.stdout, served.stderr, served.status)
        fallback = (served.level, served.reason)
    _in_process(stdin, fallback)


def _environment() -> dict[str, str]:
    """The environment as `os.environ` has it (decoded as `os.fsdecode` does), without `os`."""
    from cni.wire import text

    return {text(name): text(value) for name, value in posix.environ.items()}


def _teardown(stdin: bytes) -> None:
    """DEL and GC: validated and answered without the plugin's stages; logging is set up only
    to report a failure (to stderr, as for every command)."""
    from cni.protocol import dispatch
    from cni.teardown import Teardown

    env = _environment()
    out, err, status = dispatch(env, stdin, Teardown())
    if status != 0:
        import logging

        from cni import plugin_log

        plugin_log.setup_stderr()
        logging.getLogger("istio-cni").error("%s failed: %s", env.get("CNI_COMMAND"),
                                             out.decode().strip())
        logging.shutdown()
    _finish(out, err, status)


def _in_process(stdin: bytes, fallback: tuple[str, str] | None) -> None:
    """The whole call in this process (`fallback`: why the agent did not serve it)."""
    import logging

    from cni import plugin_log

    plugin_log.setup_stderr()
    from cni.plugin import Plugin, run_call

    plugin = Plugin(fallback=fallback)
    out, err, status = run_call(_environment(), stdin, plugin, about=ABOUT)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    if plugin.agent_socket:
        plugin_log.send_report(plugin.agent_socket, plugin.event)
    logging.shutdown()  # flushes the rotating log file
    _finish(b"", err, status)


if __name__ == "__main__":
    main()
