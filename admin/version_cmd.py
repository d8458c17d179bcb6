"""`istio-cni-node version`: this program's version, and the installed plugin's own answer.

The plugin on a node is whatever binary the installer last put in the CNI bin dir, which after
a failed or partial upgrade need not be the one this image ships. So its version is asked of the
installed binary itself, the way a CNI runtime can: run with `CNI_COMMAND` unset, a CNI plugin
prints its about text (name, version, protocol versions) on stderr; a plugin without one is asked
`CNI_COMMAND=VERSION` for its protocol versions. The binary runs with a clean environment, no
stdin, a time bound and a bound on what it may print.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

from admin.context import printable
from cni import __version__ as VERSION
from cni.settings import SettingError
from installer.binaries import PLUGIN_NAME
from installer.config import CNI_BIN_TARGET_DIRS

ANSWER_TIMEOUT = 10.0
"""Seconds the plugin gets to answer: a frozen onedir build starts in about 0.1 s."""
MAX_ANSWER_BYTES = 64 * 1024
"""What it may print (an about text is two lines)."""


@dataclass(frozen=True)
class PluginAnswer:
    path: Path
    text: str = ""
    """The about text (or VERSION answer), on one line; "" when `error` is set."""
    error: str = ""


class _NoAnswer(Exception):
    """The binary did not answer as a CNI plugin does; the message says how."""


def ask_plugin(path: Path, timeout: float = ANSWER_TIMEOUT) -> PluginAnswer:
    """What the plugin binary at `path` says about itself, within `timeout` seconds a call."""
    try:
        about = _run(path, {"CNI_COMMAND": ""}, timeout)
        if not about.strip():
            about = _run(path, {"CNI_COMMAND": "VERSION"}, timeout)
    except _NoAnswer as exc:
        return PluginAnswer(path, error=str(exc))
    return PluginAnswer(path, text="; ".join(line.strip() for line in about.splitlines()
                                             if line.strip()))


def _run(path: Path, env: dict[str, str], timeout: float) -> str:
    """Run `path` with `env` only; its stderr (about text) or stdout (VERSION), bounded. The
    binary runs in its own session, so whatever it started is killed with it."""
    try:
        proc = subprocess.Popen([str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
    except OSError as exc:
        raise _NoAnswer(f"cannot run it: {exc.strerror}") from exc
    deadline = time.monotonic() + timeout
    try:
        out, err = _read_both(proc, deadline, timeout)
        status = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise _NoAnswer(f"no answer within {timeout:g} s") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its session: it and anything it started
        proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    if status != 0:
        said = err.decode(errors="replace").strip()[:200]
        raise _NoAnswer(f"exited with status {status}" + (f": {said}" if said else ""))
    return (err if env["CNI_COMMAND"] == "" else out).decode(errors="replace")


def _read_both(proc: subprocess.Popen[bytes], deadline: float,
               timeout: float) -> tuple[bytes, bytes]:
    """Both pipes to their end, by `deadline` and within MAX_ANSWER_BYTES in all."""
    assert proc.stdout is not None and proc.stderr is not None
    data = {proc.stdout.fileno(): b"", proc.stderr.fileno(): b""}
    with selectors.DefaultSelector() as sel:
        for pipe in (proc.stdout, proc.stderr):
            sel.register(pipe, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise _NoAnswer(f"no answer within {timeout:g} s")
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                data[key.fd] += chunk
                if sum(map(len, data.values())) > MAX_ANSWER_BYTES:
                    raise _NoAnswer(f"printed more than {MAX_ANSWER_BYTES} bytes")
    return data[proc.stdout.fileno()], data[proc.stderr.fileno()]


def installed_plugins(bin_dirs: tuple[Path, ...]) -> list[PluginAnswer]:
    """The answer of the plugin in each bin dir that has one (a dangling link counts: it is
    a broken install, which the answer then reports)."""
    return [ask_plugin(d / PLUGIN_NAME) for d in bin_dirs if os.path.lexists(d / PLUGIN_NAME)]


@click.command("version")
@click.option("--cni-bin-target-dirs", "bin_dirs", envvar=CNI_BIN_TARGET_DIRS.name,
              default=None, metavar="DIRS",
              help=f"Comma-separated CNI bin dirs to look for the installed plugin in. "
                   f"[default: {CNI_BIN_TARGET_DIRS.shown()}] (env {CNI_BIN_TARGET_DIRS.name})")
def version_command(bin_dirs: str | None) -> None:
    """Print the version of istio-cni-node, then the version of the istio-cni plugin
    installed on this node, as the binary in the CNI bin dir answers it.

    Says so when no plugin is installed there (exit 0). Exits 1, with one line on stderr
    per binary, if a plugin binary is there but does not answer as a CNI plugin (not
    executable, fails, prints more than 64 KiB, or takes more than 10 s).
    """
    try:  # the setting's one reading, as if the flag were the variable
        dirs = CNI_BIN_TARGET_DIRS.read({} if bin_dirs is None else
                                        {CNI_BIN_TARGET_DIRS.name: bin_dirs})
    except SettingError as exc:
        raise click.ClickException(printable(exc)) from None
    click.echo(f"istio-cni-node {VERSION} (Python {sys.version.split()[0]})")
    answers = installed_plugins(dirs)
    if not answers:
        where = printable(", ".join(str(d) for d in dirs)) or "(no directory given)"
        click.echo(f"{PLUGIN_NAME} plugin: not installed in {where} "
                   f"({CNI_BIN_TARGET_DIRS.name})")
    for answer in answers:
        if answer.error:
            click.echo(printable(f"Error: {PLUGIN_NAME} plugin {answer.path}: no answer: "
                                 f"{answer.error}"), err=True)
        else:
            click.echo(printable(f"{PLUGIN_NAME} plugin {answer.path}: {answer.text}"))
    if any(a.error for a in answers):
        sys.exit(1)
