"""Installer fixtures: a fake node's directories under tmp_path (`testbed.nodedirs`), and a
read-only tmpfs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.nodedirs import NodeDirs, make_node_dirs


@pytest.fixture
def node_dirs(tmp_path: Path) -> NodeDirs:
    return make_node_dirs(tmp_path)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs (as a bin dir on an immutable host), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a read-only tmpfs")
    path = tmp_path / "ro-bin"
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)
