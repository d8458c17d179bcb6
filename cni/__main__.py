"""The istio-cni binary's entry point: hand env and stdin to the protocol, write what it says.

Everything else happens in `cni.protocol.dispatch` and `cni.plugin.Plugin`; this file only
touches the process (environment, stdin, stdout, exit status) and makes sure nothing but the
protocol's JSON ever reaches stdout, even on an unexpected crash.
"""

from __future__ import annotations

import logging
import os
import sys


def main() -> None:
    from cni import plugin_log

    plugin_log.setup_stderr()
    from cni.plugin import Plugin
    from cni.protocol import dispatch

    command = os.environ.get("CNI_COMMAND", "")
    stdin = b"" if command in ("", "VERSION") else sys.stdin.buffer.read()
    plugin = Plugin()
    out, err, status = dispatch(
        os.environ, stdin, plugin,
        about="CNI plugin istio-cni (Python) v0.1.0",
        on_internal_error=lambda exc: logging.getLogger("istio-cni").error(
            "internal error", exc_info=exc),
    )
    if status != 0 and out:
        logging.getLogger("istio-cni").error("%s failed: %s", command, out.decode().strip())
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.stderr.buffer.write(err)
    socket_path = getattr(plugin, "_socket", "")
    if socket_path:
        plugin_log.flush_to_agent(socket_path)
        if plugin.event is not None:
            plugin_log.post_event(socket_path, plugin.event)
    sys.exit(status)


if __name__ == "__main__":
    main()
