"""Faults the agent does not survive: a thread stuck in a pod's network namespace.

`setns` is per thread, and the repair controller's one worker enters pod netns all day (repair
in place, drift checks). If switching it back out fails (`cni.errors.NetnsReturnFailed`), the
worker's netns is not the agent's any more, and everything it would do next (the next pod's
rules, its API calls, its events) would happen in the wrong place. That error is a
`BaseException`, so no handler of ordinary failures swallows it and the worker's loop ends with
it; `exit_when_stuck` makes that the end of the process:

- retrying `setns` would most likely fail as it just did (the saved descriptor of our own netns
  was refused), and no other call moves a thread back into a namespace;
- a worker that silently stopped would leave repair and drift off with nothing saying so,
  which is the failure this agent exists to prevent;
- a restart is cheap and complete: the kubelet restarts the DaemonSet's container, the new
  agent relists every pod, and meanwhile the plugin does ADDs itself (it falls back when the
  agent's socket does not answer) and stays installed, as after any crash (an orderly shutdown
  could uninstall it).

So the process logs one critical line naming the netns and exits with `EXIT_STUCK_NETNS`, not
0, so the restart is counted as the failure it is.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from cni.errors import NetnsReturnFailed

log = logging.getLogger(__name__)

EXIT_STUCK_NETNS = 70
"""`EX_SOFTWARE`: an internal fault the process cannot recover from."""


def exit_when_stuck() -> None:
    """From now on, a thread that ends with `NetnsReturnFailed` ends the process
    (`EXIT_STUCK_NETNS`, after a critical log line); other uncaught errors in threads are
    handled as before. Idempotent."""
    previous = threading.excepthook
    if getattr(previous, "exits_when_stuck", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not isinstance(args.exc_value, NetnsReturnFailed):
            previous(args)
            return
        name = args.thread.name if args.thread is not None else "a thread"
        log.critical("%s: %s; exiting (code %d) so that the agent restarts clean", name,
                     args.exc_value, EXIT_STUCK_NETNS)
        stop(EXIT_STUCK_NETNS)

    hook.exits_when_stuck = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def stop(code: int) -> None:
    """Flush what was logged and end the process now, without running anyone's cleanup
    (the other threads' `finally` blocks, `atexit`): as a crash would."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
