"""Which `istio-cni` the demo installs: the frozen build (what ships), else the source.

The node runs the plugin in the host's mount namespace, with no Python, so what ships is the
PyInstaller onedir bundle `dist/istio-cni/` (`scripts/build-frozen.sh`). The demo builds it
when it is missing, checks that it answers `CNI_COMMAND=VERSION`, and snapshots it into the
sandbox's "image" dir (a concurrent rebuild of dist/ must not change the binary mid-run). When
the build is not possible or the binary does not answer, it says so and falls back to a
two-line wrapper running `python -m cni`: the same plugin, through the same CNI protocol.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from companions.demo.console import Console, DemoError
from testbed.procs import HarnessError, run

PLUGIN = "istio-cni"


@dataclass
class PluginBinary:
    kind: str
    """frozen | source"""
    image_dir: Path
    """CNI_BIN_SOURCE_DIR for the installer: the plugin as the agent's image carries it."""
    describe: str
    notes: list[str] = field(default_factory=list)


def _version(binary: Path) -> str:
    env = {"CNI_COMMAND": "VERSION", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = run([str(binary)], input="{}", env=env, timeout=60, check=False)
    try:
        return str(json.loads(proc.stdout)["cniVersion"])
    except (ValueError, KeyError, TypeError):
        last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise DemoError(f"{binary} does not answer VERSION: {last}") from None


def _stale(repo: Path, binary: Path) -> bool:
    built = binary.stat().st_mtime
    return any(p.stat().st_mtime > built for p in (repo / "cni").rglob("*.py"))


def _build(repo: Path, console: Console) -> None:
    console.say("frozen plugin not built yet: building it (scripts/build-frozen.sh, plugin only)")
    t0 = time.monotonic()
    env = {**os.environ, "ISTIO_CNI_PLUGIN_ONLY": "1"}
    run(["bash", str(repo / "scripts" / "build-frozen.sh")], env=env, timeout=900)
    console.say(f"built in {time.monotonic() - t0:.1f} s")


def _source_wrapper(image_dir: Path) -> Path:
    wrapper = image_dir / PLUGIN
    repo = Path(__file__).resolve().parents[2]
    wrapper.write_text("#!/bin/sh\n# istio-cni from source: the frozen build is unavailable\n"
                       f"PYTHONPATH='{repo}' exec '{sys.executable}' -m cni \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def prepare(repo: Path, image_dir: Path, console: Console, *, source: bool,
            build: bool) -> PluginBinary:
    """The plugin staged in `image_dir`; prints what it chose and why."""
    frozen = repo / "dist" / PLUGIN / PLUGIN
    reason = "--source given"
    if not source:
        try:
            if not frozen.exists():
                if not build:
                    raise DemoError(f"{frozen} does not exist (--no-build given)")
                _build(repo, console)
            # as the image carries it: the onedir bundle as a directory named after the plugin
            shutil.copytree(frozen.parent, image_dir / PLUGIN, symlinks=True)
            version = _version(image_dir / PLUGIN / PLUGIN)
            plugin = PluginBinary("frozen", image_dir,
                                  f"frozen onedir build {frozen.relative_to(repo)} "
                                  f"(VERSION: cniVersion {version})")
            if _stale(repo, frozen):
                plugin.notes.append("note: cni/ has changed since this build; "
                                    "scripts/build-frozen.sh refreshes it")
            return plugin
        except HarnessError as exc:
            reason = f"frozen build unavailable: {exc}"
            shutil.rmtree(image_dir, ignore_errors=True)
            image_dir.mkdir(parents=True)
    wrapper = _source_wrapper(image_dir)
    version = _version(wrapper)
    note = ("--source given: using python -m cni" if source
            else f"{reason}: FALLING BACK to python -m cni")
    return PluginBinary("source", image_dir, f"python -m cni (VERSION: cniVersion {version})",
                        [note])
