"""The istio-cni binary's entry point: hand env and stdin to the protocol, write what it says.

Everything else happens in `cni.protocol.dispatch` and `cni.plugin.Plugin`; this file only
touches the process (environment, stdin, stdout, exit status) and makes sure nothing but the
protocol's JSON ever reaches stdout, even on an unexpected crash. Hot path: VERSION and the
about text import neither the plugin nor logging, and the process ends with `os._exit` once
everything is flushed (interpreter teardown costs ~12 ms per call and does nothing for us).
"""

from __future__ import annotations

import os
import sys

from cni import __version__

ABOUT = f"CNI plugin istio-cni (Python) v{__version__}"


def _finish(out: bytes, err: bytes, status: int) -> None:
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.stderr.buffer.write(err)
    sys.stderr.flush()
    os._exit(status)


def main() -> None:
    command = os.environ.get("CNI_COMMAND", "")
    if command in ("", "VERSION"):
        from cni.versions import about_text, version_json

        if command:
            _finish(version_json(), b"", 0)
        _finish(b"", about_text(ABOUT).encode(), 0)
    if command in ("DEL", "GC"):
        _teardown(command)

    import logging

    from cni import plugin_log

    plugin_log.setup_stderr()
    from cni.plugin import Plugin
    from cni.protocol import dispatch, read_config

    stdin = read_config(sys.stdin.buffer)
    plugin = Plugin()
    out, err, status = dispatch(
        os.environ, stdin, plugin, about=ABOUT,
        on_internal_error=lambda exc: logging.getLogger("istio-cni").error(
            "internal error", exc_info=exc),
    )
    if status != 0 and out:
        logging.getLogger("istio-cni").error("%s failed: %s", command, out.decode().strip())
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    if plugin.agent_socket:
        plugin_log.send_report(plugin.agent_socket, plugin.event)
    logging.shutdown()  # flushes the rotating log file
    _finish(b"", err, status)


def _teardown(command: str) -> None:
    """DEL and GC: validated and answered without the plugin's stages; logging is set up only
    to report a failure (to stderr, as for every command)."""
    from cni.protocol import dispatch, read_config
    from cni.teardown import Teardown

    out, err, status = dispatch(os.environ, read_config(sys.stdin.buffer), Teardown())
    if status != 0:
        import logging

        from cni import plugin_log

        plugin_log.setup_stderr()
        logging.getLogger("istio-cni").error("%s failed: %s", command, out.decode().strip())
        logging.shutdown()
    _finish(out, err, status)


if __name__ == "__main__":
    main()
