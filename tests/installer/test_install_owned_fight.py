"""Owned mode's fight detector counts only another writer's changes (docs/reliability.md, 18.4).

Our conflist is removed by us when the primary goes away (or sorts first), and written again when
it is back: a primary that deletes and rewrites its file on every restart must not look like a
fight (no FIGHTING error, no repair counted, no hold-off), while a change someone else makes to
our file still does. Real files, the watch loop running; waits are bounded polls.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from installer import Installer
from installer.conflist import chained_entry, insert_plugin
from installer.watcher import FightDetector, watch
from testbed.nodedirs import GOLDEN, NodeDirs, watching
from testbed.wait import wait_for

OURS = "02-istio-cni.conflist"


def installed(node_dirs: NodeDirs) -> Installer:
    installer = Installer(node_dirs.config(owned_config=True))
    installer.install()
    installer.set_ready(False)  # ready again: the watch loop's first pass is done
    return installer


def follows(node_dirs: NodeDirs, installer: Installer, primary: Path) -> bool:
    ours = node_dirs.net_dir / OURS
    try:
        return ours.read_bytes().decode() == insert_plugin(
            primary.read_bytes().decode(), chained_entry(installer.entry()))
    except FileNotFoundError:
        return False


def restart_primary(node_dirs: NodeDirs, primary: Path, installer: Installer) -> None:
    """A primary CNI restarting: its file goes (we take ours away), then comes back by rename
    (we write ours again)."""
    text = (GOLDEN / "calico.conflist").read_bytes()
    primary.unlink()
    wait_for(lambda: OURS not in node_dirs.names() and not installer.ready,
             what="ours removed with the primary")
    staged = node_dirs.root / "calico.tmp"
    staged.write_bytes(text)
    os.rename(staged, primary)
    wait_for(lambda: follows(node_dirs, installer, primary) and installer.ready,
             what="ours back with the primary")


def test_a_restarting_primary_is_no_fight(node_dirs: NodeDirs, caplog):
    caplog.set_level(logging.INFO)
    primary = node_dirs.put("10-calico.conflist", "calico.conflist")
    installer = installed(node_dirs)
    detector = FightDetector(threshold=2)
    with watching(installer, lambda stop: watch(installer, stop, detector)):
        wait_for(lambda: installer.ready, what="the first pass")
        for _ in range(5):
            restart_primary(node_dirs, primary, installer)
        snap = installer.metrics.snapshot()
        assert snap["repairs"] == 0, snap
        assert snap["installs"]["SUCCESS"] == 6  # the install, then one per restart
        messages = [r.getMessage() for r in caplog.records]
        assert not [m for m in messages if "FIGHTING" in m or "re-inserted" in m]
        # someone else deleting our file is still a repair
        (node_dirs.net_dir / OURS).unlink()
        wait_for(lambda: installer.metrics.snapshot()["repairs"] == 1, what="the repair")
        wait_for(lambda: follows(node_dirs, installer, primary), what="ours back")


def test_a_primary_sorting_first_and_back_is_no_fight(node_dirs: NodeDirs):
    primary = node_dirs.put("10-calico.conflist", "calico.conflist")
    installer = installed(node_dirs)
    with watching(installer):
        wait_for(lambda: installer.ready, what="the first pass")
        early = node_dirs.net_dir / "01-calico.conflist"
        for _ in range(3):
            os.rename(primary, early)  # sorts before ours: we remove ours, not ready
            wait_for(lambda: OURS not in node_dirs.names() and not installer.ready,
                     what="ours removed")
            os.rename(early, primary)
            wait_for(lambda: follows(node_dirs, installer, primary) and installer.ready,
                     what="ours back")
    assert installer.metrics.snapshot()["repairs"] == 0


def test_another_writer_filling_the_gap_is_a_repair(node_dirs: NodeDirs):
    """While the primary is away we left no file; one that appears under our name meanwhile
    is someone else's doing, and replacing it when the primary is back is a repair."""
    primary = node_dirs.put("10-calico.conflist", "calico.conflist")
    installer = installed(node_dirs)
    with watching(installer):
        wait_for(lambda: installer.ready, what="the first pass")
        text = primary.read_bytes()
        primary.unlink()
        wait_for(lambda: OURS not in node_dirs.names(), what="ours removed")
        other = insert_plugin((GOLDEN / "list.conflist").read_text(),
                              chained_entry(installer.entry()))
        staged = node_dirs.root / "other.tmp"
        staged.write_text(other)
        os.rename(staged, node_dirs.net_dir / OURS)  # a second installer's file, our name
        staged.write_bytes(text)
        os.rename(staged, primary)
        wait_for(lambda: follows(node_dirs, installer, primary), what="ours replaces it")
        wait_for(lambda: installer.metrics.snapshot()["repairs"] == 1, what="one repair")
