"""The frozen plugin (the PyInstaller onedir bundle of build.spec) for the tiers that need it.

`dist/istio-cni/istio-cni` is what `scripts/build-frozen.sh` makes; a test that must not touch
dist/ (another run may be rebuilding it) builds its own plugin-only copy with `build_plugin`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testbed.procs import HarnessError

REPO = Path(__file__).resolve().parents[1]
NAME = "istio-cni"


AGENT = "istio-cni-node"


def build_plugin(out: Path, timeout: float = 600) -> Path:
    """A plugin-only build of build.spec under `out` (about 25 s); the executable's path."""
    return _build(out, timeout, plugin_only=True) / NAME / NAME


def build_bundles(out: Path, timeout: float = 900) -> Path:
    """The whole build.spec under `out`, plugin and agent (1-2 min); the dist dir, holding
    `istio-cni/` and `istio-cni-node/`."""
    return _build(out, timeout, plugin_only=False)


def _build(out: Path, timeout: float, plugin_only: bool) -> Path:
    env = {**os.environ, "ISTIO_CNI_PLUGIN_ONLY": "1" if plugin_only else ""}
    proc = subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
         "--distpath", str(out / "dist"), "--workpath", str(out / "build"),
         str(REPO / "build.spec")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    dist = out / "dist"
    wanted = [dist / NAME / NAME] + ([] if plugin_only else [dist / AGENT / AGENT])
    if proc.returncode != 0 or not all(p.exists() for p in wanted):
        raise HarnessError(f"PyInstaller build.spec: exit {proc.returncode}: "
                           f"{proc.stderr[-4000:]}")
    return dist
