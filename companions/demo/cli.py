"""`python -m companions.demo`: arguments, signals, and the promise to always clean up.

SIGINT and SIGTERM raise `Interrupted` in the main thread, which unwinds the current step like
an error; then, with both signals ignored so a second Ctrl-C cannot cut it short, the sandbox
is cleaned up and the timings printed. Exit status: 0 when every step passed, 1 when one
failed (one line says which and why), 130/143 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import signal

from cni.choices import NFTABLES_BACKENDS
from companions.demo.console import Console, Interrupted
from companions.demo.scenario import Demo
from testbed.procs import HarnessError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m companions.demo",
        description="istio-cni on a sandboxed node: install, redirect, validate, repair.")
    parser.add_argument("--source", action="store_true",
                        help="use python -m cni instead of the frozen plugin")
    parser.add_argument("--no-build", action="store_true",
                        help="do not build the frozen plugin when it is missing")
    parser.add_argument("--primary", choices=("auto", "bridge", "veth"), default="auto",
                        help="primary network: the bridge/host-local plugins, or veth via "
                             "pyroute2 (auto: bridge when installed)")
    parser.add_argument("--native-nftables", action="store_true",
                        help="native nftables mode (NATIVE_NFTABLES=true): pods get upstream's "
                             "inet istio-proxy-* tables instead of iptables rules")
    parser.add_argument("--nftables-backend", choices=NFTABLES_BACKENDS, default="auto",
                        help="with --native-nftables, how the plugin and repair talk to "
                             "nftables (NFTABLES_BACKEND; auto: libnftables, else nft)")
    args = parser.parse_args(argv)
    if args.nftables_backend != "auto" and not args.native_nftables:
        parser.error("--nftables-backend needs --native-nftables")

    console = Console()
    demo = Demo(console, args)
    captured = demo.logs
    for name in ("installer", "node_daemon"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(captured)
        logger.propagate = False

    def interrupt(signum: int, _frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    console.line("istio-cni demo: a sandboxed node, the installer, the plugin through the CNI "
                 "protocol, repair")
    code = 0
    try:
        demo.run()
        console.line()
        console.line(f"demo OK ({demo.mode}): meshed pod redirected and validated, plain pod "
                     "skipped, race pod repaired in place, primary config restored")
    except HarnessError as exc:  # DemoError included
        console.line(f"FAILED at step {console.current}: {exc}")
        code = 1
    except Interrupted as exc:
        console.line(f"INTERRUPTED ({exc.signame}) during step {console.current}: cleaning up")
        code = 130 if exc.signame == "SIGINT" else 143
    except Exception as exc:  # a bug in the demo: still one line, still the cleanup
        console.line(f"FAILED at step {console.current}: {type(exc).__name__}: {exc}")
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        took = demo.cleanup()
        console.summary(took)
    return code

