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


def build_plugin(out: Path, timeout: float = 600) -> Path:
    """A plugin-only build of build.spec under `out` (about 25 s); the executable's path."""
    proc = subprocess.run(
        [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
         "--distpath", str(out / "dist"), "--workpath", str(out / "build"),
         str(REPO / "build.spec")],
        cwd=REPO, env={**os.environ, "ISTIO_CNI_PLUGIN_ONLY": "1"},
        capture_output=True, text=True, timeout=timeout, check=False)
    binary = out / "dist" / NAME / NAME
    if proc.returncode != 0 or not binary.exists():
        raise HarnessError(f"PyInstaller build.spec: exit {proc.returncode}: "
                           f"{proc.stderr[-4000:]}")
    return binary
