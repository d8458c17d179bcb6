"""Uninstall removes exactly what this install created in the run dir (docs/reliability.md, 20.5).

The plugin's log files are written by the plugin's own rotating handler (`RotatingLogFile`, the
real rotation), around installs, agent restarts (a later `Installer` continuing the same install)
and uninstalls; what was there before the install began stays, byte for byte where nothing of
ours wrote to it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cni.plugin_log import LOG_FILE_NAME, RotatingLogFile
from installer import Installer
from testbed.nodedirs import NodeDirs

RECORD = ".istio-cni-install-record"
"""installer.rundir.RECORD (spelled out: the test also runs against code without it)."""


def plugin_writes(run_dir: Path, lines: int, max_bytes: int = 10 * 1024 * 1024) -> None:
    """The plugin logging `lines` lines into the run dir (rotating at `max_bytes`)."""
    handler = RotatingLogFile(str(run_dir / LOG_FILE_NAME), max_bytes=max_bytes)
    try:
        for n in range(lines):
            handler.emit(logging.LogRecord("cni", logging.INFO, __file__, 0,
                                           f"line {n} " + "x" * 40, None, None))
    finally:
        handler.close()


def installer(node_dirs: NodeDirs) -> Installer:
    return Installer(node_dirs.config(owned_config=True))


def test_a_log_left_by_an_earlier_install_is_kept(node_dirs: NodeDirs):
    node_dirs.put("10-calico.conflist", "calico.conflist")
    node_dirs.run_dir.mkdir()  # the kubelet's hostPath, with an earlier install's log in it
    earlier = node_dirs.run_dir / LOG_FILE_NAME
    earlier.write_text('{"msg": "from an earlier install"}\n')
    rotated = node_dirs.run_dir / (LOG_FILE_NAME + ".1")
    rotated.write_text('{"msg": "older still"}\n')
    first = installer(node_dirs)
    first.install()
    first.uninstall()
    assert earlier.read_text() == '{"msg": "from an earlier install"}\n'
    assert rotated.read_text() == '{"msg": "older still"}\n'
    assert sorted(p.name for p in node_dirs.run_dir.iterdir()) == [LOG_FILE_NAME,
                                                                   LOG_FILE_NAME + ".1"]


def test_what_this_install_wrote_goes_across_a_restart_and_a_rotation(node_dirs: NodeDirs):
    node_dirs.put("10-calico.conflist", "calico.conflist")
    node_dirs.run_dir.mkdir()
    earlier = node_dirs.run_dir / LOG_FILE_NAME
    earlier.write_text('{"msg": "from an earlier install"}\n')
    first = installer(node_dirs)
    first.install()
    # the plugin rotates the earlier file to .1 (it is full) and starts a new one
    plugin_writes(node_dirs.run_dir, 1, max_bytes=64)
    assert (node_dirs.run_dir / (LOG_FILE_NAME + ".1")).read_text().startswith(
        '{"msg": "from an earlier install"}')
    first.uninstall(keep_plugin=True)  # an agent restart: the next one continues this install
    second = installer(node_dirs)
    second.install()
    plugin_writes(node_dirs.run_dir, 3)
    second.uninstall()
    # the new file was this install's; the earlier one (now .1, same inode) was not
    assert sorted(p.name for p in node_dirs.run_dir.iterdir()) == [LOG_FILE_NAME + ".1"]


def test_the_run_dir_it_created_goes_with_this_installs_log(node_dirs: NodeDirs):
    node_dirs.put("10-calico.conflist", "calico.conflist")
    first = installer(node_dirs)
    first.install()
    plugin_writes(node_dirs.run_dir, 3)
    first.uninstall()
    assert not node_dirs.run_dir.exists()


def test_without_a_record_no_log_is_removed(node_dirs: NodeDirs):
    """An install by an older version left no record: uninstall cannot tell, so it keeps the
    logs (the rest of the uninstall is unchanged)."""
    node_dirs.put("10-calico.conflist", "calico.conflist")
    node_dirs.run_dir.mkdir()
    first = installer(node_dirs)
    first.install()
    plugin_writes(node_dirs.run_dir, 3)
    (node_dirs.run_dir / RECORD).unlink()
    first.uninstall()
    assert sorted(p.name for p in node_dirs.run_dir.iterdir()) == [LOG_FILE_NAME]
    assert node_dirs.names() == ["10-calico.conflist"]


def test_a_link_under_the_log_name_is_not_ours(node_dirs: NodeDirs, tmp_path: Path):
    node_dirs.put("10-calico.conflist", "calico.conflist")
    node_dirs.run_dir.mkdir()
    first = installer(node_dirs)
    first.install()
    target = tmp_path / "elsewhere.log"
    target.write_text("someone else's\n")
    (node_dirs.run_dir / LOG_FILE_NAME).symlink_to(target)
    first.uninstall()
    assert (node_dirs.run_dir / LOG_FILE_NAME).is_symlink() and target.exists()
