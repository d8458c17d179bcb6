"""Installer fixtures: a fake node's directories under tmp_path (helpers in
installer_support.py, a uniquely named module so it never collides with other test dirs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from installer_support import PLUGIN_BYTES, TOKEN, NodeDirs, rotate_token


@pytest.fixture
def node_dirs(tmp_path: Path) -> NodeDirs:
    dirs = NodeDirs(tmp_path, tmp_path / "net.d", tmp_path / "image-bin", tmp_path / "host-bin",
                    tmp_path / "run", tmp_path / "sa")
    for d in (dirs.net_dir, dirs.bin_src, dirs.bin_dst, dirs.sa_dir):
        d.mkdir()
    plugin = dirs.bin_src / "istio-cni"
    plugin.write_bytes(PLUGIN_BYTES)
    plugin.chmod(0o755)
    rotate_token(dirs.sa_dir, TOKEN, 1)
    os.symlink("..data/token", dirs.sa_dir / "token")
    os.symlink("..data/ca.crt", dirs.sa_dir / "ca.crt")
    return dirs
